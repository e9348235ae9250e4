//! Two producers and the drain (the signal handlers and the `diag-sampler` thread).

use crate::ring::{Header, RingOf};
use loom::sync::Arc;
use loom::thread;

/// A sample whose every field derives from `(tid, n)`, so that a torn or stale read
/// shows.
fn header(tid: u32, n: u32) -> Header {
    Header {
        tid,
        thread_slot: n,
        label: tid * 10 + n,
        flags: 1,
        weight: u64::from(tid) * 1000 + u64::from(n),
        sp: (tid as usize) << 16 | n as usize,
    }
}

fn frames(tid: u32, n: u32) -> [usize; 2] {
    let base = (tid as usize) * 100 + (n as usize) * 10;
    [base + 1, base + 2]
}

/// Pushes sample `n` of producer `tid`; false when the ring was full.
fn push<const N: usize>(ring: &RingOf<N, 2>, tid: u32, n: u32) -> bool {
    let Some(claim) = ring.claim() else {
        return false;
    };
    for (i, f) in frames(tid, n).into_iter().enumerate() {
        claim.frame(i, f);
    }
    claim.publish(header(tid, n), 2);
    true
}

/// Drains what is published, checking each sample whole; returns the `(tid, n)` read.
fn drain<const N: usize>(ring: &RingOf<N, 2>, tail: &mut usize, seen: &mut Vec<(u32, u32)>) {
    ring.drain(tail, |s| {
        let (tid, n) = (s.header.tid, s.header.thread_slot);
        assert_eq!(s.header, header(tid, n), "a torn or stale header");
        assert_eq!(
            s.frames,
            frames(tid, n),
            "torn or stale frames of {tid}/{n}"
        );
        seen.push((tid, n));
    });
}

/// Forced thread switches per execution, at most.
const PREEMPTIONS: usize = 3;

/// `per_producer` pushes from each of two producer threads while the model's main
/// thread drains twice concurrently and once after they finish. Every sample pushed is
/// read exactly once, whole; every one refused is counted as dropped.
fn model<const N: usize>(per_producer: u32) {
    let mut builder = loom::model::Builder::new();
    // Bounded as loom advises (LOOM_MAX_PREEMPTIONS overrides it): a bug needing more
    // than PREEMPTIONS forced switches between threads goes unseen.
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(PREEMPTIONS);
    }
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    builder.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ring = Arc::new(RingOf::<N, 2>::new());
        let producers: Vec<_> = (1..=2)
            .map(|tid| {
                let ring = ring.clone();
                thread::spawn(move || {
                    let mut pushed = Vec::new();
                    for n in 0..per_producer {
                        if push(&ring, tid, n) {
                            pushed.push((tid, n));
                        }
                    }
                    pushed
                })
            })
            .collect();
        let mut tail = 0;
        let mut seen = Vec::new();
        // loom 0.7.3 misses interleavings when a spawned thread's first operation is an
        // atomic load, as a producer's claim is (tokio-rs/loom#392, #166): draining
        // before any producer ran, it never put the drain between a claim and its
        // publication. Yielding first lets the producers run first; from that execution
        // on, the drain's loads race with their stores and loom explores around them.
        thread::yield_now();
        drain(&ring, &mut tail, &mut seen);
        drain(&ring, &mut tail, &mut seen);
        let mut pushed: Vec<_> = producers
            .into_iter()
            .flat_map(|p| p.join().expect("producer"))
            .collect();
        drain(&ring, &mut tail, &mut seen);
        pushed.sort_unstable();
        seen.sort_unstable();
        assert_eq!(seen, pushed, "read exactly what was pushed, once each");
        let attempts = 2 * per_producer as usize;
        assert_eq!(
            pushed.len() as u64 + ring.dropped(),
            attempts as u64,
            "every refused push is counted"
        );
    });
    eprintln!(
        "{N} slots, 2 producers x {per_producer} pushes: {} executions explored",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn two_producers_and_the_drain_hand_over_every_sample_whole() {
    model::<2>(1);
}

#[test]
fn a_full_ring_drops_and_counts_while_the_drain_frees_slots() {
    // Four pushes into two slots: some are refused (counted), some reuse a slot the
    // drain has just freed (the next lap).
    model::<2>(2);
}

#[test]
fn a_ring_of_three_slots_wraps_around() {
    model::<3>(2);
}
