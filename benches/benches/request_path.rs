//! The demo's request path in process (`demo::app` through tower's `oneshot`): a counter
//! GET with diag mounted against without, measured side by side in one run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

fn counter_get(c: &mut Criterion) {
    let rt = support::runtime();
    let mut group = c.benchmark_group("counter GET /");
    for (name, diag) in [
        ("without diag", None),
        ("with diag merged", Some(diag::Config::default())),
    ] {
        let app = demo::app(demo::AppState::new(), diag);
        group.bench_function(name, |b| {
            b.iter(|| {
                let res = rt.block_on(app.clone().oneshot(support::get("/"))).unwrap();
                assert_eq!(res.status(), 200);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, counter_get);
criterion_main!(benches);
