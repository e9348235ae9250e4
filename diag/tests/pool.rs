//! diag mounted in an application whose blocking pool is full still answers: its slow
//! work (symbolizing, encoding, reading jemalloc's dump) runs on threads of its own, not
//! through `spawn_blocking` behind the application's stuck calls (docs/internals.md,
//! "diag's own threads for blocking work").
#![cfg(all(
    feature = "cpu",
    feature = "heap",
    feature = "taskdump",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Method, StatusCode};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc when it starts, as an application exports it.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 45] = b"prof:true,prof_active:true,lg_prof_sample:19\0";

/// A function of this test whose address `/symbol` is asked for.
#[inline(never)]
fn looked_up() -> u64 {
    std::hint::black_box(41) + 1
}

#[test]
fn diag_answers_while_the_applications_blocking_pool_is_full() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    rt.block_on(async move {
        let cfg = diag::Config::default().with_min_dump_interval(Duration::ZERO);
        let addr = testkit::serve(diag::router(cfg)).await;
        // The application's one blocking thread, held as a hung driver would hold it.
        let blocker = tokio::task::spawn_blocking(move || {
            started_tx.send(()).unwrap();
            let _ = held.recv();
        });
        started.recv().unwrap();
        // A traced task for the dump to wait for: mounted in the application, the dump
        // waits for its report on a thread, which was a blocking-pool thread before.
        diag::tasks::spawn("traced sleeper", async {
            tokio::time::sleep(Duration::from_secs(600)).await;
        });
        // Queued behind it: the pool is full, as this test needs.
        let queued = tokio::task::spawn_blocking(|| ());
        let symbol = format!("{:#x}", looked_up as fn() -> u64 as usize);
        let asks = [
            (
                Method::GET,
                "/debug/pprof/profile?seconds=1",
                "",
                "application/octet-stream",
            ),
            (
                Method::GET,
                "/debug/pprof/heap",
                "",
                "application/octet-stream",
            ),
            (
                Method::POST,
                "/debug/pprof/symbol",
                symbol.as_str(),
                "looked_up",
            ),
            (
                Method::GET,
                "/debug/pprof/goroutine?debug=1&force=1&timeout=2",
                "",
                "tokio::time::sleep",
            ),
            // Unforced: the stuck-worker watch runs first (the workers are idle, so it
            // lets the dump go on).
            (
                Method::GET,
                "/debug/pprof/goroutine?debug=1&timeout=2",
                "",
                "tokio::time::sleep",
            ),
            (
                Method::GET,
                "/debug/pprof/wall?seconds=1",
                "",
                "application/octet-stream",
            ),
        ];
        for (method, path, body, expect) in asks {
            let url = format!("http://{addr}{path}");
            let ask = testkit::request(method, &url, &[], body.as_bytes());
            // Before diag ran this work on its own threads, each of these waited for the
            // blocker, which is released only below: the deadline only stops a hang.
            let r = tokio::time::timeout(Duration::from_secs(120), ask)
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer while the blocking pool was full"));
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
            let got = format!("{} {}", r.header("content-type"), r.text());
            assert!(got.contains(expect), "{path}: no {expect:?} in {got:.300}");
            assert!(
                !queued.is_finished(),
                "the blocking pool was not full during {path}: its answer proves nothing"
            );
        }
        release.send(()).unwrap();
        blocker.await.unwrap();
        queued.await.unwrap();
    });
    rt.shutdown_background();
}
