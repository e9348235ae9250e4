//! The demo's request path in process (`demo::app` through tower's `oneshot`): a counter
//! GET without diag, with diag merged (idle), and with diag merged while a CPU profile
//! runs; then the ratios of each against the first, measured by alternation in one run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

fn call(rt: &tokio::runtime::Runtime, app: &axum::Router) {
    let res = rt.block_on(app.clone().oneshot(support::get("/"))).unwrap();
    assert_eq!(res.status(), 200);
}

/// Starts a long CPU profile through `app` and waits, untimed, until the sampler runs
/// (starting allocates its collector).
fn start_profile(
    rt: &tokio::runtime::Runtime,
    app: &axum::Router,
) -> tokio::task::JoinHandle<Result<axum::response::Response, std::convert::Infallible>> {
    let p = rt.spawn(
        app.clone()
            .oneshot(support::get("/debug/pprof/profile?seconds=3600")),
    );
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    assert!(!p.is_finished(), "the CPU profile did not start");
    p
}

fn counter_get(c: &mut Criterion) {
    let rt = support::runtime();
    let without = demo::app(demo::AppState::new(), None);
    // Long profiles allowed, so one can span a benchmark.
    let config = diag::Config::default().with_max_seconds(3600);
    let with = demo::app(demo::AppState::new(), Some(config));
    let mut group = c.benchmark_group("counter GET");
    group.bench_function("without diag", |b| b.iter(|| call(&rt, &without)));
    group.bench_function("with diag merged", |b| b.iter(|| call(&rt, &with)));
    // A CPU profile over the rest of the group: the sampler interrupts this thread 99
    // times per CPU-second, as it would a service's worker.
    let profile = start_profile(&rt, &with);
    group.bench_function("with diag merged, CPU profile running", |b| {
        b.iter(|| call(&rt, &with))
    });
    profile.abort();
    let _ = rt.block_on(profile);
    if support::measuring("counter GET") {
        support::ratio(
            "counter GET: diag merged and idle / without diag",
            21,
            20_000,
            || call(&rt, &without),
            || call(&rt, &with),
        );
        // Each B stretch runs under a profile started before it and stopped after it; at
        // 99 Hz a stretch needs a good fraction of a second to be sampled at all.
        let running = std::cell::RefCell::new(None);
        support::ratio_around(
            "counter GET: CPU profile running / not (diag merged)",
            21,
            100_000,
            || call(&rt, &with),
            || call(&rt, &with),
            || *running.borrow_mut() = Some(start_profile(&rt, &with)),
            || {
                if let Some(p) = running.borrow_mut().take() {
                    p.abort();
                    let _ = rt.block_on(p);
                    // Stopping frees the collector on the sampler thread: untimed too.
                    std::thread::sleep(Duration::from_millis(300));
                }
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = counter_get
}
criterion_main!(benches);
