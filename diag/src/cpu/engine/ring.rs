//! A fixed-size ring of samples: many producers (signal handlers, which never wait), one
//! consumer (the `diag-sampler` thread).
//!
//! Each slot carries a sequence word, stored relative to the slot's index so that the
//! all-zero ring (a `static` in `.bss`, no page touched until used) is the empty ring.
//! For the position `p` of slot `i = p % SLOTS`, the word reads `p - i` when the slot is
//! free for that position, `p - i + 1` once a producer has published it, and becomes
//! `p - i + SLOTS` (free for the next lap) when the consumer has read it.
//!
//! A producer claims position `head` by compare-and-swap, but only if the slot is free
//! for it; otherwise the ring is full and the sample is dropped and counted. It writes
//! the sample with relaxed stores and publishes it with a `Release` store of the sequence
//! word. The consumer reads the word with `Acquire` and skips slots claimed but not yet
//! published (a producer interrupted mid-write, e.g. by another signal), coming back to
//! them on its next pass. Nothing here blocks, allocates or calls the system.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Frames kept per sample at most (deeper stacks are cut at the root end).
pub(crate) const MAX_DEPTH: usize = 128;
/// Slots in the process's ring: ~1 KiB each, so about 1 MiB.
pub(crate) const SLOTS: usize = 1024;

/// The sample was taken before its thread's stack range was known, or while its stack
/// pointer lay outside it: only the interrupted address was kept.
pub(crate) const FLAG_IP_ONLY: u32 = 1;

/// One slot.
pub(crate) struct Slot {
    seq: AtomicUsize,
    tid: AtomicU32,
    thread_slot: AtomicU32,
    label: AtomicU32,
    flags: AtomicU32,
    depth: AtomicU32,
    weight: AtomicU64,
    sp: AtomicUsize,
    frames: [AtomicUsize; MAX_DEPTH],
}

impl Slot {
    const fn new() -> Self {
        Self {
            seq: AtomicUsize::new(0),
            tid: AtomicU32::new(0),
            thread_slot: AtomicU32::new(0),
            label: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            depth: AtomicU32::new(0),
            weight: AtomicU64::new(0),
            sp: AtomicUsize::new(0),
            frames: [const { AtomicUsize::new(0) }; MAX_DEPTH],
        }
    }
}

/// The ring: `SLOTS` slots, a write cursor, and the count of samples dropped when full.
pub(crate) struct Ring {
    head: AtomicUsize,
    dropped: AtomicU64,
    slots: [Slot; SLOTS],
}

/// A slot claimed by a producer, to fill and publish.
pub(crate) struct Claim<'a> {
    slot: &'a Slot,
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

impl Ring {
    /// The empty ring (all zeroes).
    pub(crate) const fn new() -> Self {
        Self {
            head: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            slots: [const { Slot::new() }; SLOTS],
        }
    }

    /// Samples dropped because the ring was full, since the process started.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Claims the next slot, or counts a drop and returns `None` when the ring is full.
    /// Async-signal-safe: a bounded number of atomic operations.
    pub(crate) fn claim(&self) -> Option<Claim<'_>> {
        // Another producer (on another CPU) may win the race for a position; a handful of
        // retries is plenty, and a producer never loops unboundedly in a signal handler.
        for _ in 0..16 {
            let pos = self.head.load(Ordering::Relaxed);
            let i = pos % SLOTS;
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
        let mut frames = [0usize; MAX_DEPTH];
        let mut first_unpublished = None;
        let mut read = 0;
        let mut pos = *tail;
        // At most one lap: positions beyond that cannot have been claimed yet.
        let end = head.min(tail.wrapping_add(SLOTS));
        while pos != end {
            let i = pos % SLOTS;
            let slot = &self.slots[i];
            let seq = slot.seq.load(Ordering::Acquire);
            let base = pos.wrapping_sub(i);
            if seq == base.wrapping_add(1) {
                let depth = (slot.depth.load(Ordering::Relaxed) as usize).min(MAX_DEPTH);
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
                slot.seq.store(base.wrapping_add(SLOTS), Ordering::Release);
                read += 1;
                f(Sample {
                    header,
                    frames: &frames[..depth],
                });
            } else if seq == base && first_unpublished.is_none() {
                first_unpublished = Some(pos);
            }
            // Otherwise `base + SLOTS`: read on an earlier pass, skipped.
            pos = pos.wrapping_add(1);
        }
        *tail = first_unpublished.unwrap_or(end);
        read
    }
}

impl Claim<'_> {
    /// Writes frame `i` (ignored beyond [`MAX_DEPTH`]).
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
        s.depth
            .store(depth.min(MAX_DEPTH) as u32, Ordering::Relaxed);
        let i = self.pos % SLOTS;
        s.seq
            .store(self.pos.wrapping_sub(i).wrapping_add(1), Ordering::Release);
    }
}

#[cfg(test)]
impl Ring {
    /// A ring of its own on the heap (all zeroes is the empty ring; building it on the
    /// stack first would overflow a test thread's stack).
    pub(crate) fn boxed() -> Box<Ring> {
        let layout = std::alloc::Layout::new::<Ring>();
        // SAFETY: the all-zero bit pattern is a valid, empty `Ring` (atomics of zero), and
        // the pointer comes from the global allocator with `Ring`'s layout.
        unsafe {
            let p = std::alloc::alloc_zeroed(layout) as *mut Ring;
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            Box::from_raw(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(ring: &Ring, tid: u32, frames: &[usize]) -> bool {
        match ring.claim() {
            Some(c) => {
                for (i, f) in frames.iter().enumerate() {
                    c.frame(i, *f);
                }
                c.publish(
                    Header {
                        tid,
                        weight: 10,
                        ..Header::default()
                    },
                    frames.len(),
                );
                true
            }
            None => false,
        }
    }

    #[test]
    fn a_full_ring_drops_and_counts_and_never_blocks() {
        let ring = Ring::boxed();
        for i in 0..SLOTS {
            assert!(push(&ring, i as u32, &[1, 2, 3]));
        }
        // Full: every further push returns at once, counted.
        for _ in 0..100 {
            assert!(!push(&ring, 0, &[1]));
        }
        assert_eq!(ring.dropped(), 100);
        let mut tail = 0;
        let mut tids = Vec::new();
        assert_eq!(ring.drain(&mut tail, |s| tids.push(s.header.tid)), SLOTS);
        assert_eq!(tids, (0..SLOTS as u32).collect::<Vec<_>>());
        // Drained: room again, over several laps.
        for lap in 0..3 {
            for i in 0..SLOTS / 2 {
                assert!(push(&ring, i as u32, &[lap]));
            }
            let mut n = 0;
            ring.drain(&mut tail, |s| {
                assert_eq!(s.frames, [lap]);
                n += 1;
            });
            assert_eq!(n, SLOTS / 2);
        }
        assert_eq!(ring.dropped(), 100);
    }

    #[test]
    fn an_unpublished_slot_is_skipped_then_read_later() {
        let ring = Ring::boxed();
        assert!(push(&ring, 1, &[10]));
        let held = ring.claim().expect("room");
        assert!(push(&ring, 3, &[30]));
        let mut tail = 0;
        let mut seen = Vec::new();
        ring.drain(&mut tail, |s| seen.push(s.header.tid));
        assert_eq!(seen, [1, 3]);
        assert_eq!(tail, 1, "the tail waits at the unpublished slot");
        held.frame(0, 20);
        held.publish(
            Header {
                tid: 2,
                ..Header::default()
            },
            1,
        );
        seen.clear();
        ring.drain(&mut tail, |s| seen.push(s.header.tid));
        assert_eq!(seen, [2], "the slot read earlier is not read twice");
        assert_eq!(tail, 3);
    }

    #[test]
    fn producers_on_many_threads_lose_nothing_while_the_consumer_keeps_up() {
        let ring: &'static Ring = Box::leak(Ring::boxed());
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut pushed = 0u32;
                    for i in 0..20_000usize {
                        if push(ring, t, &[i, i + 1]) {
                            pushed += 1;
                        }
                    }
                    pushed
                })
            })
            .collect();
        let mut tail = 0;
        let mut read = 0usize;
        let mut bad = 0;
        let mut finished = 0;
        while finished < threads.len() {
            read += ring.drain(&mut tail, |s| {
                if s.frames.len() != 2 || s.frames[1] != s.frames[0] + 1 {
                    bad += 1;
                }
            });
            finished = threads.iter().filter(|t| t.is_finished()).count();
        }
        let pushed: u32 = threads.into_iter().map(|t| t.join().expect("join")).sum();
        read += ring.drain(&mut tail, |_| {});
        assert_eq!(bad, 0, "torn samples");
        assert_eq!(read, pushed as usize);
        assert_eq!(pushed as u64 + ring.dropped(), 80_000);
    }
}
