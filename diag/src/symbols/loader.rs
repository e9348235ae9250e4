//! What the dynamic loader knows: where the program is loaded (`dl_iterate_phdr`) and the
//! exported functions of shared libraries (`dladdr1`).

use std::ffi::{CStr, c_void};
use std::sync::OnceLock;

/// The main program as loaded: its load bias and executable segments.
#[derive(Debug)]
pub(crate) struct Program {
    /// Added to an address in the ELF file to give the address in memory.
    pub(crate) bias: usize,
    /// The executable `PT_LOAD` segments, in memory: `[start, end)`.
    text: Vec<(usize, usize)>,
}

impl Program {
    /// Whether `pc` lies in the program's own code.
    pub(crate) fn contains(&self, pc: usize) -> bool {
        self.text
            .iter()
            .any(|&(start, end)| (start..end).contains(&pc))
    }
}

/// The main program, read once from the loader (it cannot move).
pub(crate) fn program() -> Option<&'static Program> {
    static PROGRAM: OnceLock<Option<Program>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let mut found: Option<Program> = None;
            // SAFETY: the callback only reads the loader's entry and writes `found`, which
            // outlives the call.
            unsafe { libc::dl_iterate_phdr(Some(first_object), (&raw mut found).cast()) };
            found
        })
        .as_ref()
}

/// `dl_iterate_phdr`'s callback: records the first object (the main program) and stops.
unsafe extern "C" fn first_object(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid entry, and `data` is the `Option<Program>` that
    // `program()` passed in.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<Option<Program>>()) };
    let bias = info.dlpi_addr as usize;
    let mut text = Vec::new();
    if !info.dlpi_phdr.is_null() {
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                let start = bias.wrapping_add(ph.p_vaddr as usize);
                text.push((start, start.saturating_add(ph.p_memsz as usize)));
            }
        }
    }
    *found = Some(Program { bias, text });
    1
}

/// An ELF symbol table entry (`Elf64_Sym`), as `dladdr1` hands it out.
#[repr(C)]
struct ElfSym {
    st_name: u32,
    st_info: u8,
    st_other: u8,
    st_shndx: u16,
    st_value: u64,
    st_size: u64,
}

unsafe extern "C" {
    /// glibc's `dladdr` that also returns the symbol's table entry.
    fn dladdr1(
        addr: *const c_void,
        info: *mut libc::Dl_info,
        extra: *mut *mut c_void,
        flags: libc::c_int,
    ) -> libc::c_int;
}

/// `dladdr1`'s flag asking for the symbol table entry.
const RTLD_DL_SYMENT: libc::c_int = 1;

/// The demangled name of the exported function of a shared library (libc, libgcc, libm,
/// the loader, the vDSO) that holds `pc`, when the loader's symbol entry says `pc` lies
/// inside it; `None` otherwise (a library's local function, an unknown address).
pub(crate) fn exported_function(pc: usize) -> Option<String> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let mut sym: *mut c_void = std::ptr::null_mut();
    // SAFETY: dladdr1 only reads the loader's tables and writes `info` and `sym`.
    let found = unsafe { dladdr1(pc as *const c_void, &mut info, &mut sym, RTLD_DL_SYMENT) };
    if found == 0 || info.dli_sname.is_null() || sym.is_null() {
        return None;
    }
    // SAFETY: with RTLD_DL_SYMENT, a non-null `sym` points at the symbol's entry in the
    // object's dynamic symbol table, which lives as long as the object is loaded.
    let size = unsafe { (*sym.cast::<ElfSym>()).st_size } as usize;
    let start = info.dli_saddr as usize;
    if pc < start || pc - start >= size {
        return None;
    }
    // SAFETY: dladdr1 set it to a NUL-terminated string in the loader's tables.
    let raw = unsafe { CStr::from_ptr(info.dli_sname) };
    Some(super::demangle(&raw.to_string_lossy()))
}
