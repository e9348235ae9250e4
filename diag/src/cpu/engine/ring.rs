//! A fixed-size ring of samples: many producers (signal handlers, which never wait), one
//! consumer (the `diag-sampler` thread).
//!
//! Each slot carries a sequence word, stored relative to the slot's index so that the
//! all-zero ring (allocated zeroed: no page touched until used) is the empty ring.
//! For the position `p` of slot `i = p % N`, the word reads `p - i` when the slot is
//! free for that position, `p - i + 1` once a producer has published it, and becomes
//! `p - i + N` (free for the next lap) when the consumer has read it. So `N` must be at
//! least 2: with one slot, "published for `p`" and "free for `p + 1`" are the same word,
//! and a producer would overwrite a sample not yet read (the constructors refuse `N < 2`
//! at compile time).
//!
//! A producer claims position `head` by compare-and-swap, but only if the slot's word,
//! read with `Acquire`, says it is free for it (which orders the consumer's last reads
//! of the slot before the producer's writes); otherwise the ring is full and the sample
//! is dropped and counted. It writes the sample into the slot's plain (non-atomic) cell
//! and publishes it with a `Release` store of the sequence word. The consumer reads the
//! word with `Acquire` and reads the cell only when the word says published, skipping
//! slots claimed but not yet published (a producer interrupted mid-write, e.g. by
//! another signal) and coming back to them on its next pass; it frees a slot with a
//! `Release` store once it has copied it. Nothing here blocks, allocates or calls the
//! system.
//!
//! The atomics and the cell come from [`sync`]: std's, or loom's when built with
//! `--cfg diag_loom` by the model-checking crate in `diag/loom`, which includes this very
//! file. loom checks every access to the cell against the happens-before order its
//! atomics build, so a publication or a free that does not order the writes and reads
//! is reported as a data race (docs/internals.md, "The ring", has the mutants it
//! catches).

use sync::{AtomicU64, AtomicUsize, Ordering, UnsafeCell};

/// The ring's atomics and cell: std's, or loom's under `--cfg diag_loom`. The orderings
/// the protocol rests on are named here, so that the model-checking crate can weaken
/// each one (`--cfg diag_loom_mutant="…"`) and show that its tests catch it.
mod sync {
    #[cfg(diag_loom)]
    pub(crate) use loom::cell::UnsafeCell;
    #[cfg(diag_loom)]
    pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    #[cfg(not(diag_loom))]
    pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// A producer publishes a written slot.
    pub(crate) const PUBLISH: Ordering = if cfg!(diag_loom_mutant = "relaxed_publish") {
        Ordering::Relaxed
    } else {
        Ordering::Release
    };
    /// The consumer reads a slot's word before reading its cell.
    pub(crate) const OBSERVE: Ordering = if cfg!(diag_loom_mutant = "relaxed_observe") {
        Ordering::Relaxed
    } else {
        Ordering::Acquire
    };
    /// The consumer frees a slot it has copied.
    pub(crate) const FREE: Ordering = if cfg!(diag_loom_mutant = "relaxed_free") {
        Ordering::Relaxed
    } else {
        Ordering::Release
    };
    /// A producer checks that a slot is free before claiming it.
    pub(crate) const CHECK_FREE: Ordering = if cfg!(diag_loom_mutant = "relaxed_check_free") {
        Ordering::Relaxed
    } else {
        Ordering::Acquire
    };
    /// The consumer reads slots whose word says published (the mutant also reads those
    /// only claimed).
    pub(crate) const SKIP_UNPUBLISHED: bool = !cfg!(diag_loom_mutant = "read_unpublished");

    /// std's `UnsafeCell` with loom's access methods, so that one code path serves both.
    #[cfg(not(diag_loom))]
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(diag_loom))]
    impl<T> UnsafeCell<T> {
        #[allow(dead_code)]
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// Calls `f` with a pointer to read the value through.
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Calls `f` with a pointer to write the value through.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

/// Frames kept per sample at most (deeper stacks are cut at the root end).
pub(crate) const MAX_DEPTH: usize = 128;
/// Slots in the process's ring: ~1 KiB each, so about 1 MiB.
pub(crate) const SLOTS: usize = 1024;

/// The sample was taken before its thread's stack range was known, or while its stack
/// pointer lay outside it: only the interrupted address was kept.
pub(crate) const FLAG_IP_ONLY: u32 = 1;

/// What a slot holds: written only by the producer that claimed it, read only by the
/// consumer once published.
struct Payload<const D: usize> {
    header: Header,
    depth: usize,
    frames: [usize; D],
}

/// One slot, holding up to `D` frames.
pub(crate) struct Slot<const D: usize> {
    seq: AtomicUsize,
    payload: UnsafeCell<Payload<D>>,
}

// SAFETY: the payload is accessed by one thread at a time, handed over through `seq`: the
// producer that claimed the slot (by a compare-and-swap on the ring's head, only after an
// `Acquire` read of `seq` saying "free for this lap", which the consumer stored with
// `Release` after its last read) writes it, then publishes with `Release`; the consumer
// reads it only after an `Acquire` read saying "published". The loom model in
// `diag/loom` checks this.
unsafe impl<const D: usize> Sync for Slot<D> {}

impl<const D: usize> Slot<D> {
    #[allow(dead_code)]
    fn new() -> Self {
        Self {
            seq: AtomicUsize::new(0),
            payload: UnsafeCell::new(Payload {
                header: Header::default(),
                depth: 0,
                frames: [0; D],
            }),
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
    /// The atomics and cells must be valid when all-zero (std's are: integers of 0).
    #[cfg(not(diag_loom))]
    pub(crate) unsafe fn boxed_zeroed() -> Box<Self> {
        const { assert!(N >= 2, "a ring needs at least two slots") };
        let layout = std::alloc::Layout::new::<Self>();
        // SAFETY: the caller vouches that all-zero is a valid, empty ring (sequence words,
        // cursor, counters and payloads at 0); the pointer comes from the global allocator
        // with this type's layout and is non-null.
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
            if slot.seq.load(sync::CHECK_FREE) != pos.wrapping_sub(i) {
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
            let seq = slot.seq.load(sync::OBSERVE);
            let base = pos.wrapping_sub(i);
            if seq == base.wrapping_add(1) || (!sync::SKIP_UNPUBLISHED && seq == base) {
                // SAFETY: "published" read with `Acquire`: the producer's writes happened
                // before, and no producer writes this slot again until it is freed below.
                let (header, depth) = slot.payload.with(|p| unsafe {
                    let p = &*p;
                    let depth = p.depth.min(D);
                    frames[..depth].copy_from_slice(&p.frames[..depth]);
                    (p.header, depth)
                });
                // Free the slot for the next lap before handing the copy on.
                slot.seq.store(base.wrapping_add(N), sync::FREE);
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
        if i < D {
            // SAFETY: this claim is the slot's only writer and nobody reads it until it
            // is published (see `Slot`'s `Sync`); `i` is in bounds, and the pointer is
            // written through without making a reference to the whole payload.
            self.slot.payload.with_mut(|p| unsafe {
                (&raw mut (*p).frames).cast::<usize>().add(i).write(ip);
            });
        }
    }

    /// Publishes the sample with `depth` frames written.
    pub(crate) fn publish(self, header: Header, depth: usize) {
        let s = self.slot;
        // SAFETY: as in `frame`.
        s.payload.with_mut(|p| unsafe {
            (&raw mut (*p).header).write(header);
            (&raw mut (*p).depth).write(depth.min(D));
        });
        let i = self.pos % N;
        s.seq
            .store(self.pos.wrapping_sub(i).wrapping_add(1), sync::PUBLISH);
    }
}
