//! Task dumps from the running demo: `go tool pprof` reads the goroutine profile, the
//! grouped and per-task texts, and what happens when a worker is blocked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use testkit::{Demo, get, go_pprof_async, try_request};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

fn demo() -> Demo {
    Demo::start(bin(), &["--dump-interval", "0s"], &[])
}

/// Three requests waiting in `/sleep` for a long while.
fn sleepers(demo: &Demo, n: usize) {
    for _ in 0..n {
        let url = demo.url("/sleep?ms=30000");
        tokio::spawn(async move { try_request(Method::GET, &url, &[], b"").await });
    }
}

/// Waits until the dump shows `n` tasks in `nap` (the requests take a moment to arrive).
async fn wait_for_nappers(demo: &Demo, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = get(&demo.diag_url("/debug/pprof/goroutine?debug=2"))
            .await
            .text();
        if text.matches("demo::work::nap").count() >= n {
            return text;
        }
        assert!(Instant::now() < deadline, "never saw {n} naps:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tool_pprof_finds_the_sleeping_requests_with_their_count() {
    let demo = demo();
    sleepers(&demo, 3);
    wait_for_nappers(&demo, 3).await;
    let url = demo.diag_url("/debug/pprof/goroutine");
    let top = go_pprof_async(vec!["-top".into(), "-cum".into(), url]).await;
    assert!(top.contains("Type: goroutine"), "{top}");
    let line = top
        .lines()
        .find(|l| l.trim_end().ends_with("demo::work::nap::{{closure}}"))
        .unwrap_or_else(|| panic!("no nap in:\n{top}"));
    // flat flat% sum% cum cum%: three tasks wait there.
    assert_eq!(line.split_whitespace().nth(3), Some("3"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_and_per_task_text() {
    let demo = demo();
    sleepers(&demo, 3);
    let per_task = wait_for_nappers(&demo, 3).await;
    let tasks: usize = per_task
        .lines()
        .filter(|l| l.starts_with("task ") && l.ends_with(':'))
        .count();
    assert!(
        tasks >= 3 + 3,
        "each request and each nap is a task:\n{per_task}"
    );
    assert_eq!(per_task.matches("demo::work::nap").count(), 3, "{per_task}");

    let r = get(&demo.diag_url("/debug/pprof/tasks")).await;
    assert_eq!(r.status, StatusCode::OK);
    let grouped = r.text();
    let total: usize = grouped
        .lines()
        .find_map(|l| l.strip_prefix("goroutine profile: total "))
        .unwrap_or_else(|| panic!("{grouped}"))
        .parse()
        .unwrap();
    // Counts add up to the tasks.
    let counted: usize = grouped
        .lines()
        .filter_map(|l| {
            l.split_once(" @")
                .and_then(|(n, _)| n.parse::<usize>().ok())
        })
        .sum();
    assert_eq!(counted, total, "{grouped}");
    // The three naps share one stack: one group of 3.
    let group = grouped
        .split("\n\n")
        .find(|g| g.contains("demo::work::nap"))
        .unwrap_or_else(|| panic!("{grouped}"));
    assert!(group.starts_with("3 @ 0x"), "{group}");
    assert_eq!(r.header("x-diag-tasks"), total.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_worker_is_refused_dumps_stay_bounded_and_the_service_recovers() {
    let demo = demo();
    // Block one of the demo's two async workers for 6 s, as a bug would. diag's sidecar
    // runs on a runtime of its own, so it keeps answering.
    let blocker = {
        let url = demo.url("/block?ms=6000");
        tokio::spawn(async move { try_request(Method::GET, &url, &[], b"").await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Refused at once, saying why.
    let started = Instant::now();
    let r = get(&demo.diag_url("/debug/pprof/goroutine?debug=1")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.text().contains("stayed in one poll"), "{}", r.text());
    assert!(r.text().contains("force=1"), "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Forced: tokio dumps what it can reach or the timeout ends the wait; either way the
    // answer comes within the timeout. Meanwhile a second dump is refused: one at a time.
    let mut saw_busy = false;
    for _ in 0..5 {
        let t = Instant::now();
        let forced = {
            let url = demo.diag_url("/debug/pprof/goroutine?debug=1&force=1&timeout=1");
            tokio::spawn(async move { get(&url).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let second = get(&demo.diag_url("/debug/pprof/goroutine?debug=1&force=1")).await;
        if second.status == StatusCode::SERVICE_UNAVAILABLE
            && second.text().contains("already in progress")
        {
            assert_eq!(second.header("retry-after"), "1");
            saw_busy = true;
        }
        let r = forced.await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        match r.status {
            StatusCode::OK => assert!(r.text().contains("goroutine profile: total")),
            StatusCode::SERVICE_UNAVAILABLE => assert!(
                r.text().contains("did not finish within timeout=1 s")
                    && r.text().contains("blocked"),
                "{}",
                r.text()
            ),
            s => panic!("{s}: {}", r.text()),
        }
        if saw_busy {
            break;
        }
    }
    assert!(saw_busy, "a second dump was never refused while one ran");

    // Once the worker is free: the service serves, and dumps work again (the first one
    // after a forced dump may still time out while tokio settles; each is bounded).
    blocker.await.unwrap().unwrap();
    let t = Instant::now();
    for _ in 0..200 {
        assert_eq!(get(&demo.url("/")).await.status, StatusCode::OK);
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let mut last = String::new();
    for _ in 0..3 {
        let r = get(&demo.diag_url("/debug/pprof/tasks?timeout=2")).await;
        if r.status == StatusCode::OK {
            assert!(
                r.text().contains("goroutine profile: total"),
                "{}",
                r.text()
            );
            return;
        }
        last = r.text();
    }
    panic!("no dump worked after the worker was freed: {last}");
}

#[tokio::test]
async fn dumps_within_the_interval_are_served_again_with_their_age() {
    let demo = Demo::start(bin(), &["--dump-interval", "60s"], &[]);
    let first = get(&demo.diag_url("/debug/pprof/tasks")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-diag-dump-reused"), "");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = get(&demo.diag_url("/debug/pprof/goroutine?debug=1")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(
        again
            .header("x-diag-dump-reused")
            .contains("min interval 60 s"),
        "{:?}",
        again.headers
    );
    assert_eq!(again.header("x-diag-dump-age-seconds"), "1");
    assert!(
        again.text().contains("(1 s ago; dumps at most every 60 s)"),
        "{}",
        again.text()
    );
}

#[tokio::test]
async fn bad_parameters_name_what_is_allowed() {
    let demo = demo();
    for (query, expect) in [
        ("debug=3", "one of 0, 1, 2"),
        ("timeout=0", "an integer from 1 to 60"),
        ("timeout=61", "an integer from 1 to 60"),
        ("force=yes", "one of 0, 1"),
    ] {
        let r = get(&demo.diag_url(&format!("/debug/pprof/goroutine?{query}"))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(r.text().contains(expect), "{query}: {}", r.text());
    }
    assert_eq!(
        get(&demo.diag_url("/debug/pprof/tasks")).await.status,
        StatusCode::OK
    );
}
