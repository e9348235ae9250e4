//! A heap profile while memory is held: `GET /debug/pprof/heap` in process (jemalloc's
//! dump, parsing it, symbolizing, encoding) with 64 MiB held in 1 MiB blocks, and the
//! same with `format=svg`. This binary's allocator is jemalloc with profiling on, as an
//! application sets it up.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc when it starts: the demo's settings (one sample per 512 KiB).
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 61] =
    b"prof:true,prof_active:true,lg_prof_sample:19,prof_accum:true\0";

#[inline(never)]
fn held_by_bench(mb: usize) -> Vec<Box<[u8]>> {
    (0..mb)
        .map(|i| vec![i as u8 | 1; 1 << 20].into_boxed_slice())
        .collect()
}

fn heap_dump(c: &mut Criterion) {
    let rt = support::runtime();
    let app = diag::router(diag::Config::default());
    let held = held_by_bench(64);
    let fetch = |path: &str| {
        let res = rt
            .block_on(app.clone().oneshot(support::get(path)))
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        rt.block_on(axum::body::to_bytes(res.into_body(), usize::MAX))
            .unwrap()
            .len()
    };
    // The first dump reads debug info for the names; the benchmark measures later ones.
    fetch("/debug/pprof/heap");
    let mut group = c.benchmark_group("heap profile, 64 MiB held");
    group.sample_size(20);
    group.bench_function("proto", |b| b.iter(|| fetch("/debug/pprof/heap")));
    group.bench_function("svg", |b| b.iter(|| fetch("/debug/pprof/heap?format=svg")));
    group.finish();
    drop(held);
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = heap_dump
}
criterion_main!(benches);
