//! What the signal handler knows about the process, published lock-free by the
//! `diag-sampler` thread: each sampled thread's stack range, and the executable mappings.
//!
//! Both tables are fixed arrays of atomics in `static`s, written only by the sampler
//! thread under a sequence counter (a seqlock): the handler reads the counter, the
//! fields, and the counter again, and treats a torn or in-progress read as "not known".
//! Learning the facts (reading `/proc/self/maps`, listing `/proc/self/task`) allocates and
//! calls the system, so it happens here, outside the handler, never inside it.

mod procfs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

pub(crate) use procfs::{Maps, Tasks};

/// Threads sampled at once at most; threads beyond it are not sampled (and counted).
pub(crate) const MAX_THREADS: usize = 1024;
/// Executable mappings remembered at most.
const MAX_EXEC: usize = 256;

/// One thread's entry: its id and the stack range `[lo, hi)` its frames may lie in.
struct ThreadEntry {
    seq: AtomicU32,
    tid: AtomicU32,
    lo: AtomicUsize,
    hi: AtomicUsize,
}

/// The per-thread table, indexed by the slot number each thread's timer carries.
pub(crate) struct ThreadTable {
    entries: [ThreadEntry; MAX_THREADS],
}

/// The executable (`r-x`) mappings, sorted, and the main program's text.
pub(crate) struct ExecTable {
    seq: AtomicU32,
    len: AtomicUsize,
    main_lo: AtomicUsize,
    main_hi: AtomicUsize,
    ranges: [(AtomicUsize, AtomicUsize); MAX_EXEC],
}

pub(crate) static THREADS: ThreadTable = ThreadTable::new();
pub(crate) static EXEC: ExecTable = ExecTable::new();

impl ThreadTable {
    const fn new() -> Self {
        Self {
            entries: [const {
                ThreadEntry {
                    seq: AtomicU32::new(0),
                    tid: AtomicU32::new(0),
                    lo: AtomicUsize::new(0),
                    hi: AtomicUsize::new(0),
                }
            }; MAX_THREADS],
        }
    }

    /// The thread id in `slot` and its stack range when known and consistent.
    /// Async-signal-safe.
    #[inline]
    pub(crate) fn read(&self, slot: usize) -> Option<(u32, Option<(usize, usize)>)> {
        let e = self.entries.get(slot)?;
        let s1 = e.seq.load(Ordering::Acquire);
        let tid = e.tid.load(Ordering::Relaxed);
        let lo = e.lo.load(Ordering::Relaxed);
        let hi = e.hi.load(Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Acquire);
        let s2 = e.seq.load(Ordering::Relaxed);
        if s1 != s2 || s1 % 2 == 1 {
            return Some((tid, None));
        }
        Some((tid, (hi > lo).then_some((lo, hi))))
    }

    /// Sets slot `slot` to thread `tid` with `range` (`None`: not known yet). Only the
    /// sampler thread writes.
    pub(crate) fn set(&self, slot: usize, tid: u32, range: Option<(usize, usize)>) {
        let Some(e) = self.entries.get(slot) else {
            return;
        };
        let (lo, hi) = range.unwrap_or((0, 0));
        let s = e.seq.load(Ordering::Relaxed);
        e.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        e.tid.store(tid, Ordering::Relaxed);
        e.lo.store(lo, Ordering::Relaxed);
        e.hi.store(hi, Ordering::Relaxed);
        e.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

impl ExecTable {
    /// An empty table (the wall-time sampler keeps one of its own).
    pub(crate) const fn new() -> Self {
        Self {
            seq: AtomicU32::new(0),
            len: AtomicUsize::new(0),
            main_lo: AtomicUsize::new(0),
            main_hi: AtomicUsize::new(0),
            ranges: [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; MAX_EXEC],
        }
    }

    /// Publishes the executable mappings (sorted by start) and the main program's text.
    pub(crate) fn publish(&self, ranges: &[(usize, usize)], main: (usize, usize)) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        let n = ranges.len().min(MAX_EXEC);
        for (slot, (lo, hi)) in self.ranges.iter().zip(ranges) {
            slot.0.store(*lo, Ordering::Relaxed);
            slot.1.store(*hi, Ordering::Relaxed);
        }
        self.len.store(n, Ordering::Relaxed);
        self.main_lo.store(main.0, Ordering::Relaxed);
        self.main_hi.store(main.1, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// The executable mapping holding `addr`, if it is known. Async-signal-safe.
    #[inline]
    pub(crate) fn containing(&self, addr: usize) -> Option<(usize, usize)> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 % 2 == 1 {
            return None;
        }
        let n = self.len.load(Ordering::Relaxed).min(MAX_EXEC);
        // Binary search over the sorted starts.
        let (mut a, mut b) = (0, n);
        while a < b {
            let m = (a + b) / 2;
            if self.ranges[m].0.load(Ordering::Relaxed) <= addr {
                a = m + 1;
            } else {
                b = m;
            }
        }
        let found = a.checked_sub(1).map(|i| {
            (
                self.ranges[i].0.load(Ordering::Relaxed),
                self.ranges[i].1.load(Ordering::Relaxed),
            )
        });
        std::sync::atomic::fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != s1 {
            return None;
        }
        found.filter(|(lo, hi)| *lo <= addr && addr < *hi)
    }

    /// Whether `addr` lies in the main program's text (`false` when not known).
    /// Async-signal-safe.
    #[inline]
    pub(crate) fn in_main(&self, addr: usize) -> bool {
        let s1 = self.seq.load(Ordering::Acquire);
        let lo = self.main_lo.load(Ordering::Relaxed);
        let hi = self.main_hi.load(Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Acquire);
        s1 % 2 == 0 && self.seq.load(Ordering::Relaxed) == s1 && lo <= addr && addr < hi
    }
}

/// A thread's name (`comm`), or `thread TID` when it cannot be read.
pub(crate) fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("thread {tid}"))
}

/// Slot numbers for the thread table: the lowest free one first.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    used: HashMap<usize, u32>,
    next: usize,
    free: Vec<usize>,
}

impl Slots {
    /// A free slot for `tid`, or `None` when the table is full.
    pub(crate) fn take(&mut self, tid: u32) -> Option<usize> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.next < MAX_THREADS => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.used.insert(slot, tid);
        Some(slot)
    }

    /// Gives `slot` back (and clears its table entry).
    pub(crate) fn give_back(&mut self, slot: usize) {
        if self.used.remove(&slot).is_some() {
            THREADS.set(slot, 0, None);
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
impl ExecTable {
    /// A table that knows no mapping.
    pub(crate) fn empty_for_tests() -> Self {
        Self::new()
    }
}
