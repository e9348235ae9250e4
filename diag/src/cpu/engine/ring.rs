//! A fixed-size ring of samples: many producers (signal handlers, which never wait), one
//! consumer (the `diag-sampler` thread).
//!
//! Each slot carries a sequence word, stored relative to the slot's index so that the
//! all-zero ring (allocated zeroed: no page touched until used) is the empty ring.
//! For the position `p` of slot `i = p % N`, the word reads `p - i` when the slot is
//! free for that position, `p - i + 1` once a producer has published it, and becomes
//! `p - i + N` (free for the next lap) when the consumer has read it. So `N` must be at
//! least 2: with one slot, "published for `p`" and "free for `p + 1`" are the same word,
//! and a producer would overwrite a sample not yet read (a loom model of a one-slot ring
//! showed it; the constructors refuse `N < 2` at compile time).
//!
//! A producer claims position `head` by compare-and-swap, but only if the slot is free
//! for it; otherwise the ring is full and the sample is dropped and counted. It writes
//! the sample with relaxed stores and publishes it with a `Release` store of the sequence
//! word. The consumer reads the word with `Acquire` and skips slots claimed but not yet
//! published (a producer interrupted mid-write, e.g. by another signal), coming back to
//! them on its next pass. Nothing here blocks, allocates or calls the system.
//!
//! The atomics come from the including module's `atomics` (std's here), and the ring's
//! size and depth are parameters, so that a model checker can run this file on a small
//! ring with its own atomics. (loom 0.7 was tried: its exploration misses interleavings
//! where a thread loads an atomic before it compare-and-swaps it, which is how a
//! producer claims a slot, so it could not check the claim; see docs/internals.md.)

use super::atomics::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Frames kept per sample at most (deeper stacks are cut at the root end).
pub(crate) const MAX_DEPTH: usize = 128;
/// Slots in the process's ring: ~1 KiB each, so about 1 MiB.
pub(crate) const SLOTS: usize = 1024;

/// The sample was taken before its thread's stack range was known, or while its stack
/// pointer lay outside it: only the interrupted address was kept.
pub(crate) const FLAG_IP_ONLY: u32 = 1;

/// One slot, holding up to `D` frames.
pub(crate) struct Slot<const D: usize> {
    seq: AtomicUsize,
    tid: AtomicU32,
    thread_slot: AtomicU32,
    label: AtomicU32,
    flags: AtomicU32,
    depth: AtomicU32,
    weight: AtomicU64,
    sp: AtomicUsize,
    frames: [AtomicUsize; D],
}

impl<const D: usize> Slot<D> {
    fn new() -> Self {
        Self {
            seq: AtomicUsize::new(0),
            tid: AtomicU32::new(0),
            thread_slot: AtomicU32::new(0),
            label: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            depth: AtomicU32::new(0),
            weight: AtomicU64::new(0),
            sp: AtomicUsize::new(0),
            frames: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }
}

/// A ring of `N` slots of `D` frames: a write cursor, the slots, and the count of samples
/// dropped when full.
pub(crate) struct RingOf<const N: usize, const D: usize> {
    head: AtomicUsize,
    dropped: AtomicU64,
    slots: [Slot<D>; N],
}

/// The process's ring: [`SLOTS`] slots of [`MAX_DEPTH`] frames.
pub(crate) type Ring = RingOf<SLOTS, MAX_DEPTH>;

/// A slot claimed by a producer, to fill and publish.
pub(crate) struct Claim<'a, const N: usize, const D: usize> {
    slot: &'a Slot<D>,
    pos: usize,
}

/// What the header of a sample says, written at publication.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) tid: u32,
    pub(crate) thread_slot: u32,
    pub(crate) label: u32,
    pub(crate) flags: u32,
    pub(crate) weight: u64,
    pub(crate) sp: usize,
}

/// A sample as the consumer reads it.
#[derive(Debug)]
pub(crate) struct Sample<'a> {
    pub(crate) header: Header,
    pub(crate) frames: &'a [usize],
}

impl<const N: usize, const D: usize> RingOf<N, D> {
    /// The empty ring, built in place (small rings: a big one would not fit on a stack).
    #[allow(dead_code)]
    pub(crate) fn new() -> Self {
        const { assert!(N >= 2, "a ring needs at least two slots") };
        Self {
            head: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            slots: std::array::from_fn(|_| Slot::new()),
        }
    }

    /// The empty ring on the heap, from zeroed memory: no page is touched until used.
    ///
    /// # Safety
    /// The atomics must be valid when all-zero (std's are: an atomic integer of 0).
    pub(crate) unsafe fn boxed_zeroed() -> Box<Self> {
        const { assert!(N >= 2, "a ring needs at least two slots") };
        let layout = std::alloc::Layout::new::<Self>();
        // SAFETY: the caller vouches that all-zero is a valid, empty ring (sequence words,
        // cursor and counters at 0); the pointer comes from the global allocator with
        // this type's layout and is non-null.
        unsafe {
            let p = std::alloc::alloc_zeroed(layout) as *mut Self;
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(p)
        }
    }

    /// Samples dropped because the ring was full, since the process started.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Claims the next slot, or counts a drop and returns `None` when the ring is full.
    /// Async-signal-safe: a bounded number of atomic operations.
    pub(crate) fn claim(&self) -> Option<Claim<'_, N, D>> {
        // Another producer (on another CPU) may win the race for a position; a handful of
        // retries is plenty, and a producer never loops unboundedly in a signal handler.
        for _ in 0..16 {
            let pos = self.head.load(Ordering::Relaxed);
            let i = pos % N;
            let slot = &self.slots[i];
            if slot.seq.load(Ordering::Acquire) != pos.wrapping_sub(i) {
                break; // not yet read by the consumer: full
            }
            if self
                .head
                .compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return Some(Claim { slot, pos });
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Reads every published sample from `*tail` on, in order, handing each to `f`, and
    /// frees its slot. Slots claimed but not yet published are skipped and `*tail` stops
    /// at the first of them, so they are read on a later call. Only one thread may drain.
    pub(crate) fn drain(&self, tail: &mut usize, mut f: impl FnMut(Sample<'_>)) -> usize {
        let head = self.head.load(Ordering::Acquire);
        let mut frames = [0usize; D];
        let mut first_unpublished = None;
        let mut read = 0;
        let mut pos = *tail;
        // At most one lap: positions beyond that cannot have been claimed yet.
        let end = head.min(tail.wrapping_add(N));
        while pos != end {
            let i = pos % N;
            let slot = &self.slots[i];
            let seq = slot.seq.load(Ordering::Acquire);
            let base = pos.wrapping_sub(i);
            if seq == base.wrapping_add(1) {
                let depth = (slot.depth.load(Ordering::Relaxed) as usize).min(D);
                for (d, f) in frames.iter_mut().zip(&slot.frames[..depth]) {
                    *d = f.load(Ordering::Relaxed);
                }
                let header = Header {
                    tid: slot.tid.load(Ordering::Relaxed),
                    thread_slot: slot.thread_slot.load(Ordering::Relaxed),
                    label: slot.label.load(Ordering::Relaxed),
                    flags: slot.flags.load(Ordering::Relaxed),
                    weight: slot.weight.load(Ordering::Relaxed),
                    sp: slot.sp.load(Ordering::Relaxed),
                };
                // Free the slot for the next lap before handing the copy on.
                slot.seq.store(base.wrapping_add(N), Ordering::Release);
                read += 1;
                f(Sample {
                    header,
                    frames: &frames[..depth],
                });
            } else if seq == base && first_unpublished.is_none() {
                first_unpublished = Some(pos);
            }
            // Otherwise `base + N`: read on an earlier pass, skipped.
            pos = pos.wrapping_add(1);
        }
        *tail = first_unpublished.unwrap_or(end);
        read
    }
}

impl<const N: usize, const D: usize> Claim<'_, N, D> {
    /// Writes frame `i` (ignored beyond the ring's depth).
    #[inline]
    pub(crate) fn frame(&self, i: usize, ip: usize) {
        if let Some(f) = self.slot.frames.get(i) {
            f.store(ip, Ordering::Relaxed);
        }
    }

    /// Publishes the sample with `depth` frames written.
    pub(crate) fn publish(self, header: Header, depth: usize) {
        let s = self.slot;
        s.tid.store(header.tid, Ordering::Relaxed);
        s.thread_slot.store(header.thread_slot, Ordering::Relaxed);
        s.label.store(header.label, Ordering::Relaxed);
        s.flags.store(header.flags, Ordering::Relaxed);
        s.weight.store(header.weight, Ordering::Relaxed);
        s.sp.store(header.sp, Ordering::Relaxed);
        s.depth.store(depth.min(D) as u32, Ordering::Relaxed);
        let i = self.pos % N;
        s.seq
            .store(self.pos.wrapping_sub(i).wrapping_add(1), Ordering::Release);
    }
}
