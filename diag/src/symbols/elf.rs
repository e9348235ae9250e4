//! The program's ELF file, mapped from disk, and function names from its symbol table.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;
use object::{Object, ObjectSymbol, SymbolKind};

/// The path of the running program's file. The kernel keeps it pointing at the inode that
/// was executed, so a program replaced on disk (an upgrade in place) is still read right.
const PROGRAM: &str = "/proc/self/exe";

/// Whether the program's mapping is kept between passes rather than unmapped after each
/// (docs/performance.md measures both; see [`keep_mapped`]).
static KEEP_MAPPED: AtomicBool = AtomicBool::new(false);

/// The program's file mapped read-only into memory (file-backed, shared with the page
/// cache: no anonymous memory).
#[derive(Debug)]
pub(crate) struct Image {
    map: Mmap,
}

impl Image {
    /// Maps the running program's file: a new mapping, or the kept one when
    /// [`keep_mapped`] is on.
    pub(crate) fn program() -> std::io::Result<Arc<Image>> {
        static KEPT: std::sync::Mutex<Option<Arc<Image>>> = std::sync::Mutex::new(None);
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        if !KEEP_MAPPED.load(Ordering::Relaxed) {
            *kept = None;
            return Self::open(PROGRAM).map(Arc::new);
        }
        if let Some(image) = kept.as_ref() {
            return Ok(image.clone());
        }
        let image = Arc::new(Self::open(PROGRAM)?);
        *kept = Some(image.clone());
        Ok(image)
    }

    fn open(path: &str) -> std::io::Result<Image> {
        let file = File::open(path)?;
        // SAFETY: the mapping is read-only and private to this process. Another process
        // truncating the file under it would fault the reads; `/proc/self/exe` names the
        // executed inode, which the kernel protects from writes while it runs (ETXTBSY).
        let map = unsafe { Mmap::map(&file)? };
        Ok(Image { map })
    }

    /// The file's bytes.
    pub(crate) fn data(&self) -> &[u8] {
        &self.map
    }
}

/// Keeps the program's file mapped between passes (`true`) or maps it for each pass and
/// unmaps it after (`false`, the default).
#[cfg(feature = "bench")]
pub(crate) fn keep_mapped(keep: bool) {
    KEEP_MAPPED.store(keep, Ordering::Relaxed);
}

/// For each address of `addrs` (sorted, in the file's address space), the demangled name
/// of the function symbol that holds it: `.symtab` first (every function, local ones
/// included), then `.dynsym` for a program stripped of `.symtab`. Nothing is kept: each
/// call walks the tables once, looking each symbol's range up in `addrs`.
pub(crate) fn function_names(file: &object::File<'_>, addrs: &[u64]) -> Vec<Option<String>> {
    let mut names: Vec<Option<String>> = vec![None; addrs.len()];
    let mut missing = addrs.len();
    for symbols in [file.symbols(), file.dynamic_symbols()] {
        for sym in symbols {
            if missing == 0 {
                return names;
            }
            if sym.kind() != SymbolKind::Text || sym.size() == 0 {
                continue;
            }
            let (start, end) = (sym.address(), sym.address().saturating_add(sym.size()));
            let first = addrs.partition_point(|a| *a < start);
            let last = addrs.partition_point(|a| *a < end);
            if first == last {
                continue;
            }
            let Ok(raw) = sym.name() else { continue };
            let name = super::demangle(raw);
            for slot in &mut names[first..last] {
                if slot.is_none() {
                    *slot = Some(name.clone());
                    missing -= 1;
                }
            }
        }
    }
    names
}
