//! What labels on CPU samples cost: setting and restoring the thread's label id around
//! one poll, and the `RouteLabels` layer per request (the label-set id of the method and
//! route from the thread's cache, the future's and the body's polls), beside a bare
//! router and the demo's `GET /` with the layer and without it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use diag::labels::{self, LabelSet};
use tower::ServiceExt;

fn per_poll(c: &mut Criterion) {
    let mut group = c.benchmark_group("labels per poll");
    let mut cx = Context::from_waker(Waker::noop());
    let mut bare = pin!(std::future::poll_fn(|_| Poll::<()>::Pending));
    group.bench_function("bare poll", |b| {
        b.iter(|| black_box(bare.as_mut().poll(&mut cx)))
    });
    let set = LabelSet::new([("http.route", "/"), ("http.method", "GET")]);
    let mut labelled = pin!(labels::scope(
        set.clone(),
        std::future::poll_fn(|_| Poll::<()>::Pending)
    ));
    group.bench_function("labelled poll", |b| {
        b.iter(|| black_box(labelled.as_mut().poll(&mut cx)))
    });
    let id = labels::intern_for_bench(set);
    group.bench_function("set and restore the id", |b| {
        b.iter(|| labels::with_id(black_box(id), || black_box(1)))
    });
    group.finish();

    let mut group = c.benchmark_group("labels per request id");
    group.bench_function("RouteLabels id of GET / (thread cache)", |b| {
        b.iter(|| labels::route_id_for_bench(black_box(&http::Method::GET), black_box("/")))
    });
    group.bench_function("intern GET / each time (no cache)", |b| {
        b.iter(|| {
            labels::intern_for_bench(LabelSet::new([
                ("http.method", "GET"),
                (black_box("http.route"), black_box("/")),
            ]))
        })
    });
    group.finish();
}

/// This thread's CPU time: preemption by other processes is not in it, so on a loaded
/// machine it resolves what wall time cannot.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// B's cost over A's in this thread's CPU time (the runtime is current-thread, so a
/// request's whole work is on it): `rounds` alternations of `iters` calls each; prints
/// the median per-round ratio B/A [min, max], and the median per-call difference B − A.
fn cpu_ratio(name: &str, rounds: usize, iters: u32, mut a: impl FnMut(), mut b: impl FnMut()) {
    let time = |f: &mut dyn FnMut()| {
        let t = thread_cpu();
        for _ in 0..iters {
            f();
        }
        (thread_cpu() - t).as_secs_f64() * 1e9 / f64::from(iters)
    };
    time(&mut a);
    time(&mut b);
    let (mut ratios, mut diffs, mut ta, mut tb) = (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        let (x, y) = if r % 2 == 0 {
            let x = time(&mut a);
            (x, time(&mut b))
        } else {
            let y = time(&mut b);
            (time(&mut a), y)
        };
        ratios.push(y / x);
        diffs.push(y - x);
        ta.push(x);
        tb.push(y);
    }
    for v in [&mut ratios, &mut diffs, &mut ta, &mut tb] {
        v.sort_by(f64::total_cmp);
    }
    let m = rounds / 2;
    println!(
        "cpu ratio {name}: {:.3} [{:.3}, {:.3}] over {rounds} alternations of {iters} calls; \
         {:.0} -> {:.0} ns of thread CPU per call, B - A median {:.0} ns [{:.0}, {:.0}]",
        ratios[m],
        ratios[0],
        ratios[rounds - 1],
        ta[m],
        tb[m],
        diffs[m],
        diffs[0],
        diffs[rounds - 1],
    );
}

fn call(rt: &tokio::runtime::Runtime, app: &Router) {
    let res = rt.block_on(app.clone().oneshot(support::get("/"))).unwrap();
    assert_eq!(res.status(), 200);
}

fn per_request(c: &mut Criterion) {
    let rt = support::runtime();
    let bare: Router = Router::new().route("/", get(|| async { "ok" }));
    let labelled = bare.clone().layer(labels::RouteLabels::new());
    let demo = demo::app(demo::AppState::new(), None);
    let options = demo::Options::default().without_route_labels();
    let demo_off = demo::app(rt.block_on(demo::AppState::start(options)), None);
    let mut group = c.benchmark_group("labels per request");
    group.bench_function("router without RouteLabels", |b| {
        b.iter(|| call(&rt, &bare))
    });
    group.bench_function("router with RouteLabels", |b| {
        b.iter(|| call(&rt, &labelled))
    });
    group.bench_function("demo GET / (RouteLabels on)", |b| {
        b.iter(|| call(&rt, &demo))
    });
    group.bench_function("demo GET / (RouteLabels off)", |b| {
        b.iter(|| call(&rt, &demo_off))
    });
    group.finish();
    if support::measuring("labels per request") {
        support::ratio(
            "labels: one-route router with RouteLabels / without",
            21,
            20_000,
            || call(&rt, &bare),
            || call(&rt, &labelled),
        );
        support::ratio(
            "labels: demo GET / with RouteLabels / without",
            21,
            20_000,
            || call(&rt, &demo_off),
            || call(&rt, &demo),
        );
        cpu_ratio(
            "labels: one-route router with RouteLabels / without",
            41,
            20_000,
            || call(&rt, &bare),
            || call(&rt, &labelled),
        );
        cpu_ratio(
            "labels: demo GET / with RouteLabels / without",
            41,
            20_000,
            || call(&rt, &demo_off),
            || call(&rt, &demo),
        );
    }
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = per_poll, per_request
}
criterion_main!(benches);
