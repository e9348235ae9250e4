//! The end of a CPU profile's window under concurrent readers and scrapes: what a fleet's
//! scraper and a person do together (demo/tests/fleet.rs replays it against the demo).
//! Each profile must answer once its window is over plus the time to symbolize, never
//! waiting on the sampler thread's drains or on another reader's window.
//!
//! The bound is a correctness bound, not a performance figure: a window that waited for
//! a drain that never came, or for another reader's longer window, would answer after
//! that window or never; symbolization of a debug test binary on a loaded 2-core machine
//! takes seconds (measured at load average 11-13: 2-8 s a pass), so the bound leaves it
//! [`SLACK`], two minutes.
#![cfg(feature = "cpu")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use testkit::get;

/// How long past its window a profile may take to answer: a wait for progress (a window
/// that waited for a drain that never came would never answer), generous for a debug
/// build symbolizing on a loaded machine.
const SLACK: Duration = Duration::from_secs(120);

/// Burns CPU under a name the profiles must show.
#[inline(never)]
fn burn_in_window_test(n: u64) -> u64 {
    let mut x = std::hint::black_box(1u64);
    for i in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
    }
    x
}

/// A thread burning in `burn_in_window_test` until the flag is cleared.
fn burner() -> Arc<AtomicBool> {
    let on = Arc::new(AtomicBool::new(true));
    let flag = on.clone();
    std::thread::Builder::new()
        .name("burner".into())
        .spawn(move || {
            while flag.load(Ordering::Relaxed) {
                std::hint::black_box(burn_in_window_test(1_000_000));
            }
        })
        .unwrap();
    on
}

/// Short-lived threads, as a blocking pool makes them: each new thread is one the sampler
/// must list (through its kept directory stream) and learn the stack of.
fn thread_churn(on: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut started = 0;
        while on.load(Ordering::Relaxed) {
            std::thread::spawn(|| std::hint::black_box(burn_in_window_test(200_000)))
                .join()
                .unwrap();
            started += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        started
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_profiles_and_scrapes_each_answer_after_their_own_window() {
    let addr = testkit::serve(diag::router(diag::Config::default())).await;
    let on = burner();
    let churn = thread_churn(on.clone());
    // A scraper's 3 s profile, a person's 2 s proto and 2 s flamegraph, started together,
    // and one more 1 s profile that starts and ends inside the others' windows.
    let mut jobs = Vec::new();
    for (query, window) in [
        ("seconds=3", 3),
        ("seconds=2", 2),
        ("seconds=2&format=svg", 2),
        ("seconds=1&format=folded", 1),
    ] {
        let url = format!("http://{addr}/debug/pprof/profile?{query}");
        let delay = if window == 1 {
            Duration::from_millis(500)
        } else {
            Duration::ZERO
        };
        jobs.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let t = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(window) + SLACK, get(&url))
                .await
                .unwrap_or_else(|_| panic!("{url}: no answer within {window} s + {SLACK:?}"));
            (url, window, r, t.elapsed())
        }));
    }
    // Scrapes meanwhile: the index page (which reads the sampler's status) and symbol
    // lookups, as often as a busy dashboard.
    let scraping = Arc::new(AtomicBool::new(true));
    let scrapes = {
        let scraping = scraping.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while scraping.load(Ordering::Relaxed) {
                let index = get(&format!("http://{addr}/debug/pprof/")).await;
                assert_eq!(index.status, StatusCode::OK);
                let symbol = get(&format!("http://{addr}/debug/pprof/symbol")).await;
                assert_eq!(symbol.status, StatusCode::OK);
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        })
    };
    for job in jobs {
        let (url, window, r, took) = job.await.unwrap();
        eprintln!("{url}: {} in {took:?}", r.status);
        assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text());
        assert!(
            took >= Duration::from_secs(window),
            "{url}: answered after {took:?}, before its {window} s window was over"
        );
        if url.contains("format=") {
            assert!(
                r.text().contains("burn_in_window_test"),
                "{url}: the burning function is missing"
            );
        } else {
            assert!(r.body.starts_with(&[0x1f, 0x8b]), "{url}: not gzipped");
        }
    }
    scraping.store(false, Ordering::Relaxed);
    let scraped = scrapes.await.unwrap();
    on.store(false, Ordering::Relaxed);
    let threads = churn.join().unwrap();
    assert!(
        scraped > 0 && threads > 0,
        "{scraped} scrapes, {threads} threads"
    );
}
