//! Symbolization with a cache that lives across profiles.
//!
//! The first profile pays for reading debug info (backtrace's own cache of parsed DWARF
//! stays resident afterwards); every later one finds most addresses here.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use crate::proto::Line;

/// Source lines per code address, innermost first.
pub(crate) type Resolved = Arc<[Line]>;

static CACHE: Mutex<Option<HashMap<usize, Resolved>>> = Mutex::new(None);

/// Resolves every address in `ips` (through the cache) and returns them in a map.
pub(crate) fn resolve_all(ips: impl IntoIterator<Item = usize>) -> HashMap<usize, Resolved> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    let mut out = HashMap::new();
    for ip in ips {
        if out.contains_key(&ip) {
            continue;
        }
        let lines = cache.entry(ip).or_insert_with(|| resolve(ip)).clone();
        out.insert(ip, lines);
    }
    out
}

/// Resolves one address without the cache; an unknown address gets its hex as its name.
///
/// Addresses in the program itself go through backtrace-rs (DWARF: inlined frames, files,
/// lines). An address inside an exported function of a shared library (libc, libgcc,
/// libm, the loader, the vDSO) is named by the loader (`dladdr1`, whose symbol entry says
/// where the function ends), with no file or line; only addresses in a library's local
/// functions (`start_thread`, say) go to backtrace-rs, which may find them in detached
/// debug info. backtrace-rs keeps parsed debug info for only four objects at a time:
/// sending it every library of a profile evicted and re-parsed the program's own debug
/// info (and libc's, when installed) again and again, a few MB and milliseconds each time.
pub(crate) fn resolve(ip: usize) -> Resolved {
    match exported_library_symbol(ip) {
        Some(lines) => lines,
        None => resolve_with_backtrace(ip),
    }
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

/// The base address of the object this code is linked into (the program).
fn program_base() -> usize {
    static BASE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        lookup(program_base as *const () as usize).map_or(0, |(info, _)| info.dli_fbase as usize)
    })
}

/// The loader's answer for `ip`: the object holding it, the nearest exported symbol at or
/// below it, and that symbol's size (0 when unknown).
fn lookup(ip: usize) -> Option<(libc::Dl_info, u64)> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let mut sym: *mut c_void = std::ptr::null_mut();
    // SAFETY: dladdr1 only reads the loader's tables and writes `info` and `sym`.
    let found = unsafe { dladdr1(ip as *const c_void, &mut info, &mut sym, RTLD_DL_SYMENT) };
    if found == 0 {
        return None;
    }
    let size = if sym.is_null() {
        0
    } else {
        // SAFETY: with RTLD_DL_SYMENT, a non-null `sym` points at the symbol's entry in the
        // object's dynamic symbol table, which lives as long as the object is loaded.
        unsafe { (*(sym as *const ElfSym)).st_size }
    };
    Some((info, size))
}

/// The name of `ip` when it lies inside an exported function of a shared library; `None`
/// otherwise (the program's own code, a library's local function, an unknown address).
fn exported_library_symbol(ip: usize) -> Option<Resolved> {
    let (info, size) = lookup(ip)?;
    if info.dli_fbase as usize == program_base() || info.dli_sname.is_null() {
        return None;
    }
    let start = info.dli_saddr as usize;
    if ip < start || ip - start >= size as usize {
        return None;
    }
    // SAFETY: dladdr1 set it to a NUL-terminated string in the loader's tables.
    let raw = unsafe { std::ffi::CStr::from_ptr(info.dli_sname) };
    Some(
        vec![Line {
            function: format!("{:#}", backtrace::SymbolName::new(raw.to_bytes())),
            file: String::new(),
            line: 0,
        }]
        .into(),
    )
}

/// Resolves an address through backtrace-rs.
fn resolve_with_backtrace(ip: usize) -> Resolved {
    let mut lines = Vec::new();
    // `backtrace::resolve` treats the address as a return address (it looks up ip - 1),
    // which is right for every frame but the interrupted one, where it still lands in the
    // same function.
    backtrace::resolve(ip as *mut c_void, |sym| {
        let function = match sym.name() {
            // `{:#}` demangles without the trailing hash.
            Some(name) => format!("{name:#}"),
            None => format!("{ip:#x}"),
        };
        let file = sym
            .filename()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        lines.push(Line {
            function,
            file,
            line: sym.lineno().unwrap_or(0),
        });
    });
    if lines.is_empty() {
        lines.push(Line {
            function: format!("{ip:#x}"),
            file: String::new(),
            line: 0,
        });
    }
    lines.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_of_the_program() -> usize {
        a_function_of_the_program as *const () as usize
    }

    #[test]
    fn program_addresses_get_lines_and_library_addresses_get_names() {
        let ip = a_function_of_the_program() + 1;
        let lines = resolve(ip);
        assert!(
            lines
                .iter()
                .any(|l| l.function.ends_with("a_function_of_the_program") && l.line > 0),
            "{lines:?}"
        );
        let getpid = libc::getpid as *const () as usize;
        let lines = resolve(getpid + 1);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].function.contains("getpid"), "{lines:?}");
        assert_eq!(lines[0].line, 0);
    }
}
