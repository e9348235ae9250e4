//! Heap profiles from the running demo, which allocates with jemalloc and starts it with
//! profiling on: read by `go tool pprof` as users type it, and every way jemalloc's
//! settings can leave them off, switched through the environment of the same binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use http::{Method, StatusCode};
use testkit::{Demo, get, go_pprof_async, pprof_cum_mib, request};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

async fn hold(demo: &Demo, mb: usize) {
    let r = request(Method::POST, &demo.url(&format!("/hold?mb={mb}")), &[], b"").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tool_pprof_shows_who_holds_the_memory() {
    let demo = Demo::start(bin(), &[], &[]);
    hold(&demo, 64).await;
    let top = go_pprof_async(vec![
        "-top".into(),
        "-cum".into(),
        "-unit=MB".into(),
        demo.diag_url("/debug/pprof/heap"),
    ])
    .await;
    assert!(top.contains("Type: inuse_space"), "{top}");
    // 64 blocks of 1 MiB, each sampled with chance 1 - e^-2 at the demo's 512 KiB
    // period and weighed by the inverse: 64 MiB expected, a standard deviation of
    // ~3.2 MiB; four of them either side.
    let mib = pprof_cum_mib(&top, "hold_memory").unwrap_or_else(|| panic!("{top}"));
    assert!(
        (51.0..=77.0).contains(&mib),
        "hold_memory {mib} MiB:\n{top}"
    );
    let traces = go_pprof_async(vec!["-traces".into(), demo.diag_url("/debug/pprof/heap")]).await;
    for f in [
        "prof_backtrace",
        "_rjem_",
        "je_prof",
        "tikv_jemallocator",
        "__rust_alloc",
    ] {
        assert!(!traces.contains(f), "{f} in a stack:\n{traces}");
    }
    // /allocs is the same profile with alloc_space shown unless told otherwise: churn
    // shows there, though nothing of it is held. 2000 blocks of 64 KiB, each sampled with
    // chance 0.118: a standard deviation of ~6 %; four either side.
    let r = get(&demo.url("/churn?n=2000&bytes=65536")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let raw = go_pprof_async(vec!["-raw".into(), demo.diag_url("/debug/pprof/allocs")]).await;
    assert!(
        raw.contains(
            "alloc_objects/count alloc_space/bytes[dflt] inuse_objects/count inuse_space/bytes"
        ),
        "{raw}"
    );
    let top = go_pprof_async(vec![
        "-top".into(),
        "-cum".into(),
        "-unit=MB".into(),
        demo.diag_url("/debug/pprof/allocs"),
    ])
    .await;
    let churned = pprof_cum_mib(&top, "churn_memory").unwrap_or_else(|| panic!("{top}"));
    assert!(
        (94.0..=156.0).contains(&churned),
        "churn_memory {churned} MiB:\n{top}"
    );
    // jemalloc's own figures, on the demo's /metrics and on diag's stats.
    let metrics = get(&demo.url("/metrics")).await.text();
    let allocated: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("jemalloc_allocated_bytes "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(allocated >= 64 << 20, "{allocated}");
    let stats = get(&demo.diag_url("/debug/pprof/heap/stats?format=prometheus")).await;
    assert!(
        stats.text().contains("jemalloc_resident_bytes "),
        "{}",
        stats.text()
    );
}

#[tokio::test]
async fn profiling_off_says_how_to_turn_it_on() {
    let demo = Demo::start(bin(), &[], &[("_RJEM_MALLOC_CONF", "prof:false")]);
    for path in ["heap", "allocs", "heap?seconds=1"] {
        let r = get(&demo.diag_url(&format!("/debug/pprof/{path}"))).await;
        assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{path}");
        assert_eq!(r.header("x-go-pprof"), "1");
        let text = r.text();
        assert!(text.contains("opt.prof is false"), "{text}");
        assert!(
            text.contains(
                "_RJEM_MALLOC_CONF=prof:true,prof_active:true,lg_prof_sample:19,prof_accum:true"
            ),
            "{text}"
        );
    }
    // Statistics need no profiling.
    let r = get(&demo.diag_url("/debug/pprof/heap/stats")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        get(&demo.url("/metrics"))
            .await
            .text()
            .contains("jemalloc_allocated_bytes")
    );
    assert_eq!(get(&demo.url("/")).await.text(), "1\n");
}

#[tokio::test]
async fn profiling_inactive_is_a_503_that_says_why() {
    let demo = Demo::start(bin(), &[], &[("_RJEM_MALLOC_CONF", "prof_active:false")]);
    let r = get(&demo.diag_url("/debug/pprof/heap")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = r.text();
    assert!(text.contains("prof.active is false"), "{text}");
    assert!(text.contains("prof_active:true"), "{text}");
    let index = get(&demo.diag_url("/debug/pprof/")).await.text();
    assert!(index.contains("prof.active is false"), "{index}");
}

#[tokio::test]
async fn without_prof_accum_allocs_refuses_and_heap_serves_in_use_only() {
    let demo = Demo::start(bin(), &[], &[("_RJEM_MALLOC_CONF", "prof_accum:false")]);
    hold(&demo, 8).await;
    for path in ["allocs", "heap?sample_index=alloc_space"] {
        let r = get(&demo.diag_url(&format!("/debug/pprof/{path}"))).await;
        assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{path}");
        let text = r.text();
        assert!(text.contains("prof_accum:true"), "{text}");
        assert!(text.contains("/heap serves the memory in use"), "{text}");
    }
    let raw = go_pprof_async(vec!["-raw".into(), demo.diag_url("/debug/pprof/heap")]).await;
    let types = raw
        .lines()
        .skip_while(|l| !l.starts_with("Samples:"))
        .nth(1)
        .unwrap_or_default();
    assert_eq!(
        types, "inuse_objects/count inuse_space/bytes[dflt]",
        "{raw}"
    );
    assert!(raw.contains("hold_memory"), "{raw}");
}
