//! The allocator's own frames, dropped from the leaf end of heap stacks so that each
//! stack begins at the code that allocated.

use std::collections::HashMap;

use crate::symbols::Resolved;

/// Whether a function is an allocator entry point: Rust's global-allocator shims, the
/// tikv-jemallocator glue, and jemalloc's public functions (prefixed `_rjem_` on Linux;
/// the C names when jemalloc replaces the system allocator).
fn is_allocator_entry(name: &str) -> bool {
    const C_ENTRIES: &[&str] = &[
        "malloc",
        "calloc",
        "realloc",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "mallocx",
        "rallocx",
        "xallocx",
        "sdallocx",
    ];
    let shim = name.strip_prefix("__rustc::").unwrap_or(name);
    name.starts_with("_rjem_")
        || shim.starts_with("__rust_alloc")
        || shim.starts_with("__rust_realloc")
        || name.starts_with("__rdl_")
        || name.contains("tikv_jemallocator::")
        || C_ENTRIES.contains(&name)
}

/// Drops the allocator's frames from the leaf end of a stack: everything up to and
/// including the outermost allocator entry point (jemalloc's sampling and backtrace code,
/// `_rjem_malloc`, the `__rust_alloc` shims), so stacks begin at the code that allocated.
pub(crate) fn strip_allocator_frames(ips: &mut Vec<usize>, symbols: &HashMap<usize, Resolved>) {
    /// Allocator frames sit at the leaf end; no need to look far.
    const SEARCH: usize = 24;
    let last_entry = ips[..ips.len().min(SEARCH)].iter().rposition(|ip| {
        symbols
            .get(ip)
            .is_some_and(|lines| lines.iter().any(|l| is_allocator_entry(&l.function)))
    });
    if let Some(i) = last_entry {
        ips.drain(..=i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Line;

    fn line(f: &str) -> Resolved {
        vec![Line {
            function: f.into(),
            file: String::new(),
            line: 0,
        }]
        .into()
    }

    #[test]
    fn allocator_frames_are_dropped_up_to_the_outermost_entry() {
        let symbols = HashMap::from([
            (1, line("prof_backtrace_impl")),
            (2, line("_rjem_je_prof_backtrace")),
            (3, line("_rjem_malloc")),
            (4, line("__rustc::__rust_alloc")),
            (5, line("alloc::raw_vec::RawVec<T>::allocate_in")),
            (6, line("demo::work::hold_memory")),
        ]);
        let mut ips = vec![1, 2, 3, 4, 5, 6];
        strip_allocator_frames(&mut ips, &symbols);
        assert_eq!(ips, [5, 6]);
        // A stack with no allocator frame is left as it is.
        let mut ips = vec![5, 6];
        strip_allocator_frames(&mut ips, &symbols);
        assert_eq!(ips, [5, 6]);
    }
}
