//! Task dumps from the running demo: `go tool pprof` reads the goroutine profile, the
//! grouped and per-task texts, and what happens when a worker is blocked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use testkit::{Demo, Reply, get, go_pprof_async, try_request};

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
    let deadline = Instant::now() + Duration::from_secs(60);
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
    // One dump first, untimed: the first symbolizes the demo's frames (seconds cold).
    let r = get(&demo.diag_url("/debug/pprof/goroutine?debug=1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Block one of the demo's two async workers for 10 s (the most /block allows), as a
    // bug would. diag's sidecar runs on a runtime of its own, so it keeps answering.
    let blocker = {
        let url = demo.url("/block?ms=10000");
        tokio::spawn(async move { try_request(Method::GET, &url, &[], b"").await })
    };

    // Refused at once, saying why, once the worker is blocked (until then a dump is
    // served: the request takes a moment to arrive).
    let (r, took) = first_refused_dump(&demo).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.text().contains("stayed in one poll"), "{}", r.text());
    assert!(r.text().contains("force=1"), "{}", r.text());
    // Without waiting for the blocked worker (10 s): a loaded machine may take a moment.
    assert!(took < Duration::from_secs(3), "{took:?}");

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
    // Each answered (a wedged worker would hold them for good); the bound is for a
    // debug demo on a loaded machine.
    let t = Instant::now();
    for _ in 0..200 {
        assert_eq!(get(&demo.url("/")).await.status, StatusCode::OK);
    }
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
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
    // At least the 1.1 s waited; more on a busy machine, never the 60 s of a fresh dump.
    let age: u64 = again.header("x-diag-dump-age-seconds").parse().unwrap();
    assert!((1..30).contains(&age), "age {age} s");
    assert!(
        again
            .text()
            .contains(&format!("({age} s ago; dumps at most every 60 s)")),
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

/// Asks for plain task dumps until one is refused, which is how a test knows the worker
/// is blocked (until the blocking request arrives a dump is served); returns the refusal
/// and how long it took to answer. Fails after 60 s.
async fn first_refused_dump(demo: &Demo) -> (Reply, Duration) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = Instant::now();
        let r = get(&demo.diag_url("/debug/pprof/goroutine?debug=1")).await;
        if r.status != StatusCode::OK {
            return (r, started.elapsed());
        }
        assert!(Instant::now() < deadline, "the worker never blocked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU time of each thread of `pid` in ns (from schedstat), by thread id and name.
fn thread_cpu(pid: u32) -> Vec<(u32, String, u64)> {
    testkit::sched::threads(pid)
        .into_iter()
        .map(|t| (t.tid, t.name, t.on_cpu.as_nanos() as u64))
        .collect()
}

/// The hardening issue's item 1: with a request blocking a worker for 3 s, a forced dump
/// 0.3 s later made tokio's barrier keep a worker forever in `trace_core`, and the process
/// never exited after SIGTERM (8 of 8 trials). Traced dumps stop no worker: the dump
/// answers and the process exits within its shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_dump_beside_a_blocked_worker_never_wedges_shutdown() {
    for trial in 0..2 {
        let mut demo = Demo::start(
            bin(),
            &["--dump-interval", "0s", "--shutdown-timeout", "5s"],
            &[],
        );
        // Symbolize the demo's frames once, untimed (seconds cold on a loaded machine).
        let r = get(&demo.diag_url("/debug/pprof/goroutine?debug=1")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let started = Instant::now();
        let blocker = {
            let url = demo.url("/block?ms=3000");
            tokio::spawn(async move { try_request(Method::GET, &url, &[], b"").await })
        };
        // The forced dump comes once the worker is blocked: a plain dump is refused then.
        first_refused_dump(&demo).await;
        let dump = {
            let url = demo.diag_url("/debug/pprof/goroutine?debug=1&force=1");
            tokio::spawn(async move { try_request(Method::GET, &url, &[], b"").await })
        };
        tokio::time::sleep(Duration::from_secs(4).saturating_sub(started.elapsed())).await;
        let dump = dump
            .await
            .unwrap()
            .expect("the dump answers before SIGTERM");
        assert_eq!(
            dump.status,
            StatusCode::OK,
            "trial {trial}: {}",
            dump.text()
        );
        assert!(
            dump.text().contains("goroutine profile: total"),
            "{}",
            dump.text()
        );
        blocker.await.unwrap().expect("the blocking request ends");

        demo.signal("TERM");
        let t = Instant::now();
        // Exit 0 says it stopped cleanly, within its 5 s shutdown timeout (else 1); the
        // bound below only keeps a wedged process from holding the test, with room for a
        // loaded machine.
        let status = tokio::task::block_in_place(|| demo.wait(Duration::from_secs(60)));
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "trial {trial}: exited {:?} after SIGTERM (shutdown timeout 5 s)",
            t.elapsed()
        );
        assert!(status.success(), "trial {trial}: {status}");
    }
}

/// The hardening issue's item 2: with one worker blocked for 10 s, five forced dumps with
/// timeout=1 each left a dump thread spinning (threads 6 -> 13, both cores burnt until the
/// block ended). Traced dumps start no thread of their own and wait on the sidecar's
/// timer: the thread count stays put, no thread burns CPU, and each answer names the
/// blocked request with how long it has been in its poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_dumps_leave_no_thread_behind_and_nothing_spinning() {
    let demo = Demo::start(
        bin(),
        &["--worker-threads", "1", "--dump-interval", "0s"],
        &[],
    );
    let pid = demo.pid();
    // One dump first, so that diag's offload thread (symbolization) exists.
    assert_eq!(
        get(&demo.diag_url("/debug/pprof/goroutine?debug=1"))
            .await
            .status,
        StatusCode::OK
    );
    let blocker = {
        let url = demo.url("/block?ms=10000");
        tokio::spawn(async move { try_request(Method::GET, &url, &[], b"").await })
    };
    // The dumps start once the worker is blocked: a plain dump is refused then.
    first_refused_dump(&demo).await;
    let cpu_before = thread_cpu(pid);
    let threads_before = cpu_before.len();
    let mut replies = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = get(&demo.diag_url("/debug/pprof/goroutine?debug=1&force=1&timeout=1")).await;
        replies.push((r, t.elapsed()));
    }
    // Give a leaked thread the time to show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_after = thread_cpu(pid);
    let spent: Vec<(String, u64)> = cpu_after
        .iter()
        .map(|(tid, name, ns)| {
            let before = cpu_before
                .iter()
                .find(|(t, _, _)| t == tid)
                .map_or(0, |(_, _, ns)| *ns);
            (
                format!("{name} {tid}"),
                ns.saturating_sub(before) / 1_000_000,
            )
        })
        .collect();
    let total_ms: u64 = spent.iter().map(|(_, ms)| ms).sum();
    assert!(
        cpu_after.len() <= threads_before,
        "threads {threads_before} -> {}: {spent:?}",
        cpu_after.len()
    );
    // Five dumps of a few ms each over ~5.5 s; a spinning thread burns a whole core.
    assert!(
        spent.iter().all(|(_, ms)| *ms < 500) && total_ms < 1000,
        "CPU ms per thread while the dumps waited: {spent:?}"
    );
    for (r, took) in replies {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(took < Duration::from_millis(2500), "{took:?}");
        let text = r.text();
        assert!(text.contains("did not report within timeout=1 s"), "{text}");
        let line = text
            .lines()
            .find(|l| l.contains("\"GET /block\""))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("inside one poll for"), "{line}");
    }
    blocker.await.unwrap().expect("the blocking request ends");
    // The worker is free again: every traced task reports.
    let r = get(&demo.diag_url("/debug/pprof/goroutine?debug=1&timeout=5")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("x-diag-tasks-missing"), "0", "{}", r.text());
}

/// The hardening issue's second review: on an idle runtime, 5 back-to-back dumps hit
/// tokio's 250 ms barrier timeout in some runs, stalled the runtime, and then hung a
/// worker for good (a dump that never answers, a process that does not stop). Traced
/// dumps, 5 runs of 5: each answers at once, requests pinged every millisecond meanwhile
/// are never held up long, and every run stops at once on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_dumps_on_an_idle_runtime_never_hang_it() {
    for run in 0..5 {
        let mut demo = Demo::start(
            bin(),
            &["--dump-interval", "0s", "--shutdown-timeout", "5s"],
            &[],
        );
        use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
        // The pinger's phases: warming up (not counted), before the dumps, during them.
        const WARMING: u8 = 0;
        const BEFORE: u8 = 1;
        const DURING: u8 = 2;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let phase = std::sync::Arc::new(AtomicU8::new(WARMING));
        let pinger = {
            let url = demo.url("/healthz");
            let (stop, phase) = (stop.clone(), phase.clone());
            tokio::spawn(async move {
                // The worst wait before the dumps (the machine's own) and during them.
                let (mut before, mut during) = (Duration::ZERO, Duration::ZERO);
                while !stop.load(Relaxed) {
                    let now = phase.load(Relaxed);
                    let t = Instant::now();
                    let r = try_request(Method::GET, &url, &[], b"").await;
                    assert_eq!(r.map(|r| r.status).ok(), Some(StatusCode::OK));
                    match now {
                        BEFORE => before = before.max(t.elapsed()),
                        DURING => during = during.max(t.elapsed()),
                        _ => {}
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                (before, during)
            })
        };
        // One dump first, untimed, with the pinger's requests in flight: the first
        // symbolizes the frames of the demo and its requests (7 s seen cold under load).
        let r = get(&demo.diag_url("/debug/pprof/goroutine?debug=1")).await;
        assert_eq!(r.status, StatusCode::OK, "run {run} warm-up: {}", r.text());
        // A second of pings without dumps: what this machine does anyway.
        phase.store(BEFORE, Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        phase.store(DURING, Relaxed);
        for i in 0..5 {
            // A hung dump never answers; an answer, warm, comes at once (the bound leaves
            // a debug build on a loaded machine room: 3.8 s was seen with new frames).
            let t = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                get(&demo.diag_url("/debug/pprof/goroutine?debug=1")),
            )
            .await
            .unwrap_or_else(|_| panic!("run {run} dump {i}: no answer within 60 s"));
            assert_eq!(r.status, StatusCode::OK, "run {run} dump {i}: {}", r.text());
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "run {run} dump {i}: {:?}",
                t.elapsed()
            );
        }
        stop.store(true, Relaxed);
        let (before, worst) = pinger.await.unwrap();
        // tokio's barrier held the workers 250-550 ms. 200 ms, or twice the worst wait
        // the same pinger saw just before without dumps when a loaded machine made that
        // longer (side by side: the dumps' own share, not the machine's).
        let bound = Duration::from_millis(200).max(before * 2);
        assert!(
            worst < bound,
            "run {run}: a request waited {worst:?} during the dumps ({before:?} before them)"
        );
        demo.signal("TERM");
        let t = Instant::now();
        // Exit 0 is a stop within the 5 s shutdown timeout (past it the demo exits 1); a
        // hung worker would hold it for good. The bound leaves a loaded machine room.
        let status = tokio::task::block_in_place(|| demo.wait(Duration::from_secs(60)));
        assert!(status.success(), "run {run}: {status}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "run {run}: exited {:?} after SIGTERM",
            t.elapsed()
        );
    }
}
