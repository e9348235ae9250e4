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
    }
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = per_poll, per_request
}
criterion_main!(benches);
