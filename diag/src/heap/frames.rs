//! The allocator's own frames, dropped from the leaf end of heap stacks so that each
//! stack begins at the code that allocated.
//!
//! An optimized build may inline the allocator's Rust entry points into the code that
//! allocates: `__rust_alloc` and the `GlobalAlloc` impl it calls are inlined wherever the
//! `#[global_allocator]` and the allocating code share a crate (or with LTO), so the call
//! to `_rjem_malloc` is made from a frame whose inlined lines run from
//! `tikv_jemallocator`'s `alloc` through `__rust_alloc` up to the allocating function.
//! Such a frame is kept, without the lines up to and including the outermost entry
//! point: dropping it whole would drop the allocating function and its inlined callers.

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

/// Drops the allocator's frames from the leaf end of heap stacks, and keeps the lines
/// to show for the frames that had an entry point inlined into them.
#[derive(Debug, Default)]
pub(crate) struct AllocatorFrames {
    /// The allocating frames that had an entry point inlined: their lines above it.
    trimmed: HashMap<usize, Resolved>,
}

impl AllocatorFrames {
    /// Drops the allocator's frames from the leaf end of a stack: everything up to and
    /// including the outermost allocator entry point (jemalloc's sampling and backtrace
    /// code, `_rjem_malloc`, the `__rust_alloc` shims), so the stack begins at the code
    /// that allocated. When that entry point was inlined into its caller, the caller's
    /// frame stays and [`Self::apply`] drops its lines up to the entry point.
    pub(crate) fn strip(&mut self, ips: &mut Vec<usize>, symbols: &HashMap<usize, Resolved>) {
        /// Allocator frames sit at the leaf end; no need to look far.
        const SEARCH: usize = 24;
        let outermost = ips[..ips.len().min(SEARCH)]
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, ip)| {
                let lines = symbols.get(ip)?;
                let entry = lines
                    .iter()
                    .rposition(|l| is_allocator_entry(&l.function))?;
                Some((i, *ip, lines, entry))
            });
        let Some((i, ip, lines, entry)) = outermost else {
            return;
        };
        if entry + 1 < lines.len() {
            // Inlined lines are innermost first: the ones after the entry are its callers.
            self.trimmed
                .entry(ip)
                .or_insert_with(|| lines[entry + 1..].into());
            ips.drain(..i);
        } else {
            ips.drain(..=i);
        }
    }

    /// Gives the frames [`Self::strip`] kept with an inlined entry point their lines
    /// above it, in the profile's `symbols`.
    pub(crate) fn apply(self, symbols: &mut HashMap<usize, Resolved>) {
        symbols.extend(self.trimmed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Line;

    fn lines(fs: &[&str]) -> Resolved {
        fs.iter()
            .map(|f| Line {
                function: (*f).into(),
                file: String::new(),
                line: 0,
            })
            .collect()
    }

    fn line(f: &str) -> Resolved {
        lines(&[f])
    }

    fn strip(ips: &mut Vec<usize>, symbols: &HashMap<usize, Resolved>) {
        AllocatorFrames::default().strip(ips, symbols);
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
        strip(&mut ips, &symbols);
        assert_eq!(ips, [5, 6]);
        // A stack with no allocator frame is left as it is.
        let mut ips = vec![5, 6];
        strip(&mut ips, &symbols);
        assert_eq!(ips, [5, 6]);
    }

    /// An optimized build inlines `__rust_alloc` and the `GlobalAlloc` impl into the
    /// allocating function (both in one crate): its frame calls `_rjem_malloc` itself.
    #[test]
    fn a_frame_with_the_entry_inlined_keeps_its_lines_above_the_entry() {
        let from_iter = lines(&[
            "<tikv_jemallocator::Jemalloc as core::alloc::global::GlobalAlloc>::alloc",
            "__rustc::__rust_alloc",
            "alloc::alloc::alloc",
            "alloc::vec::from_elem",
            "app::held::{{closure}}",
            "<alloc::vec::Vec<T> as SpecFromIterNested<T,I>>::from_iter",
        ]);
        let mut symbols = HashMap::from([
            (1, line("prof_backtrace_impl")),
            (2, line("_rjem_je_prof_backtrace")),
            (3, line("_rjem_malloc")),
            (4, from_iter),
            (5, line("app::held")),
            (6, line("app::main")),
        ]);
        let mut frames = AllocatorFrames::default();
        let (mut a, mut b) = (vec![1, 2, 3, 4, 5, 6], vec![2, 3, 4, 6]);
        frames.strip(&mut a, &symbols);
        frames.strip(&mut b, &symbols);
        assert_eq!((a, b), (vec![4, 5, 6], vec![4, 6]));
        frames.apply(&mut symbols);
        let kept: Vec<&str> = symbols[&4].iter().map(|l| &l.function[..]).collect();
        assert_eq!(
            kept,
            [
                "alloc::alloc::alloc",
                "alloc::vec::from_elem",
                "app::held::{{closure}}",
                "<alloc::vec::Vec<T> as SpecFromIterNested<T,I>>::from_iter",
            ]
        );
        assert_eq!(symbols[&5], line("app::held"));
    }
}
