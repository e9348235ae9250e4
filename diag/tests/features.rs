//! What each optional part of diag answers when this build has it, and the 501 that says
//! how to enable it when not. `scripts/test.sh` runs this file twice: with every feature
//! (as the workspace tests run) and with none (`--no-default-features`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use testkit::get;

/// Task dumps and wall profiles take one process-wide guard (one at a time): the tests
/// that take them run one after the other.
static DUMPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn server() -> std::net::SocketAddr {
    testkit::serve(diag::router(diag::Config::default())).await
}

fn assert_501(r: &testkit::Reply, how: &str) {
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.text());
    assert_eq!(r.header("x-go-pprof"), "1");
    assert!(r.text().contains(how), "{}", r.text());
}

#[tokio::test]
async fn cpu() {
    let addr = server().await;
    let r = get(&format!("http://{addr}/debug/pprof/symbol")).await;
    if cfg!(feature = "cpu") {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "num_symbols: 1\n");
    } else {
        assert_501(&r, "enable diag's `cpu` feature");
        let r = get(&format!("http://{addr}/debug/pprof/profile?seconds=1")).await;
        assert_501(&r, "enable diag's `cpu` feature");
    }
}

#[tokio::test]
async fn heap() {
    let addr = server().await;
    let r = get(&format!("http://{addr}/debug/pprof/heap")).await;
    if cfg!(feature = "heap") {
        // Built in, but this test binary allocates with the system allocator.
        assert_501(&r, "jemalloc is not this process's global allocator");
    } else {
        assert_501(&r, "enable diag's `heap` feature");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_dumps() {
    let _one_at_a_time = DUMPS.lock().await;
    let addr = server().await;
    let r = get(&format!("http://{addr}/debug/pprof/tasks")).await;
    if cfg!(feature = "taskdump") {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(
            r.text().contains("goroutine profile: total"),
            "{}",
            r.text()
        );
    } else {
        assert_501(&r, "enable diag's `taskdump` feature");
        let r = get(&format!("http://{addr}/debug/pprof/goroutine")).await;
        assert_501(&r, "enable diag's `taskdump` feature");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_profiles() {
    let _one_at_a_time = DUMPS.lock().await;
    let addr = server().await;
    let r = get(&format!(
        "http://{addr}/debug/pprof/wall?seconds=1&format=folded"
    ))
    .await;
    if cfg!(feature = "taskdump") {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(!r.header("x-diag-sample-rate").is_empty());
    } else {
        assert_501(&r, "enable diag's `taskdump` feature");
    }
}

#[tokio::test]
async fn trace() {
    let addr = server().await;
    let r = get(&format!("http://{addr}/debug/pprof/trace?seconds=1")).await;
    if cfg!(feature = "trace") {
        // Built in, but this process never installed diag::trace::layer().
        assert_501(
            &r,
            "add diag::trace::layer() to the application's tracing subscriber",
        );
    } else {
        assert_501(&r, "enable diag's `trace` feature");
    }
}
