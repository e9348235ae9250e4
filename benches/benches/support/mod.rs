//! Setup shared by the benchmarks.
#![allow(dead_code)] // each benchmark binary uses part of it

use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::Criterion;

/// A single-threaded runtime, so a benchmark measures the work and not thread hand-offs.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `GET path` with an empty body.
pub(crate) fn get(path: &str) -> http::Request<Body> {
    http::Request::get(path)
        .body(Body::empty())
        .expect("request")
}

/// criterion with diag's profiler hook: `cargo bench -- --profile-time 5` writes a
/// flamegraph and a profile.proto per benchmark under `target/criterion/.../profile/`.
pub(crate) fn criterion() -> Criterion {
    Criterion::default().with_profiler(diag::criterion::Flamegraphs::new())
}

/// Whether this run measures (not `--list`, `--test`, `--profile-time`) and its filter, if
/// any, matches `name`: the side-by-side ratios below only run when their group does.
pub(crate) fn measuring(name: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "--list" || a == "--test" || a.starts_with("--profile-time"))
    {
        return false;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

/// B's cost over A's, measured side by side: `rounds` alternations of `iters` calls of
/// each, timed with the wall clock; prints the median of the per-round ratios B/A with
/// its min and max, and each side's median time per call. criterion's own figures for A
/// and B come from separate stretches of time; on a noisy machine only alternation makes
/// a ratio worth reading.
pub(crate) fn ratio(
    name: &str,
    rounds: usize,
    iters: usize,
    a: impl FnMut(),
    b: impl FnMut(),
) -> f64 {
    ratio_around(name, rounds, iters, a, b, || {}, || {})
}

/// [`ratio`], with `before_b` and `after_b` run untimed around each stretch of B (to
/// start and stop a profile, say).
pub(crate) fn ratio_around(
    name: &str,
    rounds: usize,
    iters: usize,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
    mut before_b: impl FnMut(),
    mut after_b: impl FnMut(),
) -> f64 {
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        t.elapsed() / iters as u32
    };
    // Warm both up once.
    time(&mut a);
    before_b();
    time(&mut b);
    after_b();
    let mut ratios = Vec::with_capacity(rounds);
    let (mut ta, mut tb): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let x = time(&mut a);
        before_b();
        let y = time(&mut b);
        after_b();
        ratios.push(y.as_secs_f64() / x.as_secs_f64().max(1e-12));
        ta.push(x);
        tb.push(y);
    }
    ratios.sort_by(f64::total_cmp);
    ta.sort();
    tb.sort();
    let median = ratios[rounds / 2];
    println!(
        "ratio {name}: {median:.3} [{:.3}, {:.3}] over {rounds} alternations of {iters} calls; \
         {:?} -> {:?} per call",
        ratios[0],
        ratios[rounds - 1],
        ta[rounds / 2],
        tb[rounds / 2],
    );
    median
}
