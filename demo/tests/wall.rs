//! Wall-time profiles of the running demo, read by the real `go tool pprof`: requests that
//! await a slow dependency hold their wall time at the await, where the CPU profile of
//! the same window shows nothing; the wait on Redis shows up by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use testkit::{Demo, RedisServer, folded, get, go_pprof_async, try_request};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

/// `n` clients, each sending `path` again and again (keep-alive) for `for_how_long`.
fn clients(demo: &Demo, n: usize, path: &str, for_how_long: Duration) {
    for _ in 0..n {
        let url = demo.url(path);
        tokio::spawn(async move {
            let end = tokio::time::Instant::now() + for_how_long;
            while tokio::time::Instant::now() < end {
                let _ = try_request(Method::GET, &url, &[], b"").await;
            }
        });
    }
}

/// `-top`'s cum% of the line naming `function`, if any.
fn cum_percent(top: &str, function: &str) -> Option<f64> {
    top.lines()
        .find(|l| l.contains(function))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|p| p.trim_end_matches('%').parse().ok())
}

/// `-top`'s cum of the line naming `function`, in seconds (`181.82ms`, `99.86s`, `0`).
fn cum_seconds(top: &str, function: &str) -> Option<f64> {
    let v = top
        .lines()
        .find(|l| l.contains(function))?
        .split_whitespace()
        .nth(3)?;
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = v.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = v.strip_suffix("hrs") {
        (n, 3600.0)
    } else if let Some(n) = v.strip_suffix("mins") {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_requests_hold_their_wall_time_at_the_await_and_not_in_the_cpu_profile() {
    let demo = Demo::start(bin(), &[], &[]);
    // The clients keep on until the test ends (the first symbolization in a fresh
    // debug-built demo takes seconds on a busy machine; the runtime's end stops them).
    clients(&demo, 20, "/slow?ms=300", Duration::from_secs(600));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let wall_url = demo.diag_url("/debug/pprof/wall?seconds=10");
    let cpu_url = demo.diag_url("/debug/pprof/profile?seconds=10");
    let (wall, cpu) = tokio::join!(
        go_pprof_async(vec![
            "-timeout=120".into(),
            "-top".into(),
            "-cum".into(),
            wall_url
        ]),
        go_pprof_async(vec![
            "-timeout=120".into(),
            "-top".into(),
            "-cum".into(),
            cpu_url
        ]),
    );
    assert!(wall.contains("Type: wall"), "{wall}");
    let at_await = cum_percent(&wall, "demo::work::call_slow_dependency")
        .unwrap_or_else(|| panic!("no call_slow_dependency in:\n{wall}"));
    // Every traced task in the window is one of the 20 requests (the diag sidecar's own
    // requests are not traced), so the share of the whole profile is their share.
    assert!(
        (85.0..=100.0).contains(&at_await),
        "call_slow_dependency holds {at_await} % of the requests' wall time:\n{wall}"
    );
    // 20 requests for 10 s: ~200 s of wall time in all.
    let total = wall
        .lines()
        .find_map(|l| l.split("of ").nth(1).and_then(|t| t.strip_suffix(" total")))
        .unwrap_or("?");
    assert!(total.ends_with('s'), "{total}\n{wall}");
    // The CPU profile of the same window sees the wait as nothing: at most the few
    // microseconds of arming the timer, under 1 % of the wall time there.
    let wall_at = cum_seconds(&wall, "demo::work::call_slow_dependency").unwrap_or(0.0);
    let cpu_at = cum_seconds(&cpu, "demo::work::call_slow_dependency").unwrap_or(0.0);
    assert!(wall_at > 100.0, "{wall}");
    assert!(
        cpu_at < wall_at / 100.0,
        "the CPU profile shows {cpu_at} s at the await:\n{cpu}"
    );

    // The same by the folded stacks, where each stack's root is the request's name.
    let r = get(&demo.diag_url("/debug/pprof/wall?seconds=4&format=folded")).await;
    let text = r.text();
    assert_eq!(r.status, StatusCode::OK, "{text}");
    let stacks = folded(&text);
    let requests: i64 = stacks
        .iter()
        .filter(|(s, _)| s.starts_with("GET /slow;"))
        .map(|(_, v)| v)
        .sum();
    let awaiting: i64 = stacks
        .iter()
        .filter(|(s, _)| s.starts_with("GET /slow;") && s.contains("call_slow_dependency"))
        .map(|(_, v)| v)
        .sum();
    assert!(requests > 0, "{text}");
    let share = awaiting as f64 / requests as f64;
    assert!((0.85..=1.0).contains(&share), "{share}\n{text}");
    // ~20 requests × 4 s.
    let secs = requests as f64 / 1e9;
    assert!((60.0..=90.0).contains(&secs), "{secs} s\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_svg_and_a_request_blocked_in_spawn_blocking() {
    let demo = Demo::start(bin(), &["--dump-interval", "0s"], &[]);
    clients(&demo, 1, "/slow?block_ms=2000", Duration::from_secs(600));
    // The window opens once the request waits for its blocking task (the task dump shows
    // it there; no dump runs once this returns, so the wall profile is not refused).
    demo.wait_for_tasks("demo::work::slow", 1).await;
    let url = demo.diag_url("/debug/pprof/wall?seconds=3");
    let traces = go_pprof_async(vec!["-timeout=120".into(), "-traces".into(), url]).await;
    assert!(traces.contains("Type: wall"), "{traces}");
    // The request awaits the blocking task's JoinHandle from inside `slow`.
    assert!(traces.contains("demo::work::slow"), "{traces}");
    assert!(traces.contains("GET /slow"), "the task label:\n{traces}");

    // Blocked the whole window, but for the moments between one request and the next:
    // ~3 s at the await of the blocking task in `slow`.
    let r = get(&demo.diag_url("/debug/pprof/wall?seconds=3&format=folded")).await;
    let text = r.text();
    let at_slow: i64 = folded(&text)
        .iter()
        .filter(|(s, _)| s.starts_with("GET /slow;") && s.contains("demo::work::slow"))
        .map(|(_, v)| v)
        .sum();
    let secs = at_slow as f64 / 1e9;
    assert!((2.5..=3.3).contains(&secs), "{secs} s\n{text}");

    // The labels the request ran under (the demo's route labels, diag::labels) are on
    // its task's samples and on its blocking thread's.
    let r = get(&demo.diag_url("/debug/pprof/wall?seconds=3")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let file = testkit::temp_dir("wall-labels").join("wall.pb.gz");
    std::fs::write(&file, &r.body).unwrap();
    let file = file.to_string_lossy().into_owned();
    for focus in ["task=GET /slow", "thread=tokio"] {
        let tags = go_pprof_async(vec![
            "-tags".into(),
            "-tagfocus".into(),
            focus.into(),
            file.clone(),
        ])
        .await;
        assert!(tags.contains("http.route"), "{focus}:\n{tags}");
        assert!(tags.contains("/slow"), "{focus}:\n{tags}");
    }

    let r = get(&demo.diag_url("/debug/pprof/wall?seconds=1&format=svg")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "image/svg+xml");
    assert!(r.text().contains("Wall-time flamegraph"));

    let bad = get(&demo.diag_url("/debug/pprof/wall?hz=0")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text().contains("\"hz\""), "{}", bad.text());
    let bad = get(&demo.diag_url("/debug/pprof/wall?threads=2")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text().contains("\"threads\""), "{}", bad.text());
}

/// The bar for blocked threads: a request blocked 2 s in `spawn_blocking` shows its
/// blocking frame with ~2 s in `go tool pprof -top`, on the blocking-pool thread's own
/// stack; a request that blocks its worker for 1 s shows the blocking call with ~1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_calls_show_on_their_threads_with_their_wall_time() {
    let demo = Demo::start(bin(), &[], &[]);
    let url = demo.diag_url("/debug/pprof/wall?seconds=8");
    let top = tokio::spawn(go_pprof_async(vec![
        "-timeout=120".into(),
        "-top".into(),
        "-cum".into(),
        url,
    ]));
    // Inside the window: the requests start once its sampler thread runs, with 8 s for
    // their 3 s however slow the machine.
    demo.wait_for_thread("diag-wall");
    let r = get(&demo.url("/slow?block_ms=2000")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = get(&demo.url("/block?ms=1000")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let top = top.await.unwrap();
    assert!(top.contains("Type: wall"), "{top}");
    let blocked = cum_seconds(&top, "demo::work::blocking_lookup")
        .unwrap_or_else(|| panic!("no blocking_lookup in:\n{top}"));
    assert!((1.85..=2.2).contains(&blocked), "{blocked} s\n{top}");
    let worker = cum_seconds(&top, "demo::work::block_worker")
        .unwrap_or_else(|| panic!("no block_worker in:\n{top}"));
    assert!((0.85..=1.2).contains(&worker), "{worker} s\n{top}");
    assert!(top.contains("left out as tokio waiting for work"), "{top}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_during_a_wall_profile_is_refused_with_what_holds_it() {
    let demo = Demo::start(bin(), &["--dump-interval", "0s"], &[]);
    let url = demo.diag_url("/debug/pprof/wall?seconds=5");
    let wall = tokio::spawn(async move { get(&url).await });
    // The window holds the dump guard while its sampler thread runs.
    demo.wait_for_thread("diag-wall");
    let r = get(&demo.diag_url("/debug/pprof/goroutine?debug=1")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(
        r.text().contains("a wall-time profile until"),
        "{}",
        r.text()
    );
    assert_eq!(wall.await.unwrap().status, StatusCode::OK);
    let after = get(&demo.diag_url("/debug/pprof/goroutine?debug=1")).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_on_redis_shows_by_itself() {
    let redis = RedisServer::start();
    let url = redis.url();
    let demo = Demo::start(bin(), &["--redis", &url], &[]);
    clients(&demo, 8, "/", Duration::from_secs(600));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = get(&demo.diag_url("/debug/pprof/wall?seconds=3&format=folded")).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.text();
    let on_redis: i64 = folded(&text)
        .iter()
        .filter(|(s, _)| s.starts_with("GET /;") && s.contains("demo::store::redis"))
        .map(|(_, v)| v)
        .sum();
    assert!(on_redis > 0, "no wait in demo::store::redis:\n{text}");
}
