//! The cost of one CPU sample in diag's engine: the signal, the handler's frame-pointer
//! walk into the ring, at several stack depths, beside the cost of the signal alone (a
//! foreign `SIGPROF`, checked and passed on by the same handler). Each iteration is one
//! sample, taken synchronously on the benchmark's thread; between batches the sampler
//! thread drains the ring (outside the timing), so no sample is dropped for a full ring.
//!
//!     cargo bench -p benches --bench cpu_sample
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use diag::bench::SampleHere;

const DEPTHS: [usize; 3] = [8, 32, 96];
/// Samples per batch: well under the ring's 1024 slots.
const BATCH: u64 = 500;

/// Recurses `depth` times (frames of its own, frame pointers forced by the workspace),
/// then runs `leaf`.
#[inline(never)]
fn descend(depth: usize, leaf: &dyn Fn()) -> usize {
    if depth == 0 {
        leaf();
        return 0;
    }
    black_box(descend(black_box(depth - 1), leaf)) + 1
}

/// Times `n` calls of `one` in batches of [`BATCH`], with `between` run untimed after
/// each batch. Both variants go through this, so that they meet the same scheduler:
/// on a loaded machine a thread that runs without pause is preempted more often than
/// one that sleeps between batches.
fn batched(n: u64, one: &dyn Fn(), between: &dyn Fn()) -> Duration {
    let mut spent = Duration::ZERO;
    let mut left = n;
    while left > 0 {
        let k = left.min(BATCH);
        let t = Instant::now();
        for _ in 0..k {
            one();
        }
        spent += t.elapsed();
        left -= k;
        between();
    }
    spent
}

fn cost(c: &mut Criterion) {
    let here = SampleHere::start().expect("start the sampler");
    let mut group = c.benchmark_group("one CPU sample");
    for depth in DEPTHS {
        group.bench_with_input(BenchmarkId::new("signal only", depth), &depth, |b, &d| {
            b.iter_custom(|iters| {
                batched(
                    iters,
                    &|| {
                        descend(d, &|| here.foreign_signal());
                    },
                    &|| here.drain(),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("diag engine", depth), &depth, |b, &d| {
            b.iter_custom(|iters| {
                batched(
                    iters,
                    &|| {
                        descend(d, &|| here.sample());
                    },
                    &|| here.drain(),
                )
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = cost
}
criterion_main!(benches);
