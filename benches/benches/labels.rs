//! What labels on CPU samples cost: setting and restoring the thread's label id around
//! one poll, and the `RouteLabels` layer per request (the label-set id of the method and
//! route from the thread's cache, the future's and the body's polls), beside a bare
//! router and the demo's `GET /` with the layer and without it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "labels_parts/measure.rs"]
mod measure;
mod support;
#[path = "labels_parts/variants.rs"]
mod variants;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use diag::labels::{self, LabelSet};
use measure::cpu_ratio;
use tower::ServiceExt;
use tower::layer::util::Identity;

/// The demo's allocator and settings, so that what boxing costs here is what it costs
/// the demo.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc when it starts: the demo's settings (one sample per 512 KiB).
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 61] =
    b"prof:true,prof_active:true,lg_prof_sample:19,prof_accum:true\0";

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
    if support::measuring("labels breakdown") {
        breakdown(&rt);
    }
}

/// Where the layer's cost per request goes: the demo without labels against the same
/// with a layer that labels nothing (axum's cost of one more `Router::layer`), with one
/// that also wraps the body (plus boxing it), with `RouteLabels` in a `layer` call of its
/// own, and the demo with its labels on (`RouteLabels` in the trace layer's call).
///
/// With `LABELS_ONLY=off|identity|body|labels|demo` (and `LABELS_CALLS`, default 10000) it
/// runs only that many `GET /` of that variant, for a profiler or an instruction count:
/// `LABELS_ONLY=labels valgrind --tool=callgrind target/release/deps/labels-* --bench
/// breakdown`, then the same with `LABELS_ONLY=off` and another count.
fn breakdown(rt: &tokio::runtime::Runtime) {
    let options = demo::Options::default().without_route_labels();
    let state = rt.block_on(demo::AppState::start(options));
    let off = demo::app(state.clone(), None);
    let on = rt.block_on(demo::AppState::start(demo::Options::default()));
    let variants = [
        ("identity layer", off.clone().layer(Identity::new())),
        (
            "layer wrapping the body",
            off.clone().layer(variants::PlainBody),
        ),
        (
            "RouteLabels in a layer call of its own",
            off.clone().layer(labels::RouteLabels::new()),
        ),
        ("RouteLabels as the demo adds it", demo::app(on, None)),
    ];
    if let Ok(only) = std::env::var("LABELS_ONLY") {
        let calls = std::env::var("LABELS_CALLS").map_or(10_000, |n| n.parse().unwrap());
        let app = match only.as_str() {
            "off" => &off,
            "identity" => &variants[0].1,
            "body" => &variants[1].1,
            "labels" => &variants[2].1,
            "demo" => &variants[3].1,
            other => panic!("LABELS_ONLY={other}: one of off, identity, body, labels, demo"),
        };
        for _ in 0..calls {
            call(rt, app);
        }
        return;
    }
    for (name, app) in &variants {
        cpu_ratio(
            &format!("labels breakdown: demo GET / with {name} / without"),
            41,
            20_000,
            || call(rt, &off),
            || call(rt, app),
        );
    }
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = per_poll, per_request
}
criterion_main!(benches);
