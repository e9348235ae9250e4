//! Tests of the sample ring (`ring.rs`).

use super::ring::{Header, Ring, SLOTS};

fn boxed() -> Box<Ring> {
    // SAFETY: std's atomics and the plain integers of the payload are valid when zeroed.
    unsafe { Ring::boxed_zeroed() }
}

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
    let ring = boxed();
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
    let ring = boxed();
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
    let ring: &'static Ring = Box::leak(boxed());
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
