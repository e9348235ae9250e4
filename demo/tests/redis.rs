//! The count in a real Redis (a `redis-server` of each test's own, persistence off):
//! exactness across two demo processes, survival of a demo restart, Redis frozen mid-load
//! (every answer a true count or a 503, nothing lost, nothing counted twice), readiness
//! following Redis down and back, and a Redis restart's reset noticed in the logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use testkit::{Demo, RedisServer, Reply, get};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

/// The demo on `redis` with a short command timeout and probe interval.
fn demo_on(redis: &RedisServer, extra: &[&str]) -> Demo {
    let url = redis.url();
    let mut args = vec![
        "--redis",
        &url,
        "--redis-timeout",
        "300ms",
        "--redis-probe-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    Demo::start(bin(), &args, &[])
}

/// The value of the metric line that starts with `series` (name and labels), 0 if absent.
async fn metric(demo: &Demo, series: &str) -> f64 {
    get(&demo.url("/metrics"))
        .await
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `/readyz` until it answers `want`, up to `within`; returns its last answer.
async fn wait_ready(demo: &Demo, want: StatusCode, within: Duration) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        let r = get(&demo.url("/readyz")).await;
        if r.status == want {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {want} within {within:?}: {} {}\n{}",
            r.status,
            r.text(),
            demo.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_unavailable(r: &Reply) -> bool {
    r.status == StatusCode::SERVICE_UNAVAILABLE
        && r.header("content-type") == "text/plain; charset=utf-8"
        && r.text().contains("redis")
        && r.text().contains("unavailable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_demos_on_one_redis_answer_one_sequence() {
    let redis = RedisServer::start();
    // One configured by flags, the other by the environment, on a key of the test's own.
    let a = demo_on(&redis, &["--redis-key", "test:shared"]);
    let b = Demo::start(
        bin(),
        &[],
        &[
            ("DEMO_REDIS", &redis.url()),
            ("DEMO_REDIS_KEY", "test:shared"),
        ],
    );
    for demo in [&a, &b] {
        let line = demo
            .logs()
            .into_iter()
            .find(|l| l.contains("\"count store\""))
            .unwrap();
        assert!(line.contains("\"store\":\"redis\""), "{line}");
        assert!(
            line.contains(&format!("redis at 127.0.0.1:{}", redis.port())),
            "{line}"
        );
        assert!(line.contains("test:shared"), "{line}");
    }

    const N: u64 = 600;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let url = if i % 2 == 0 { a.url("/") } else { b.url("/") };
            tokio::spawn(async move {
                let r = get(&url).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text());
                assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
                r.text().trim_end().parse::<u64>().unwrap()
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        assert!(seen.insert(t.await.unwrap()), "a value was answered twice");
    }
    assert_eq!(seen, (1..=N).collect::<HashSet<u64>>());
    assert_eq!(redis.get_u64("test:shared"), Some(N));
    // The default key is untouched.
    assert_eq!(redis.get_u64("demo:count"), None);
    let text = get(&a.url("/metrics")).await.text();
    assert!(
        text.contains("store_command_duration_seconds_count{store=\"redis\",command=\"incr\"} 300"),
        "{text}"
    );
}

#[tokio::test]
async fn the_count_survives_a_demo_restart() {
    let redis = RedisServer::start();
    let mut first = demo_on(&redis, &[]);
    for want in 1..=3 {
        assert_eq!(get(&first.url("/")).await.text(), format!("{want}\n"));
    }
    first.signal("TERM");
    assert_eq!(first.wait(Duration::from_secs(60)).code(), Some(0));
    let second = demo_on(&redis, &[]);
    assert_eq!(get(&second.url("/")).await.text(), "4\n");
    assert_eq!(redis.get_u64("demo:count"), Some(4));
}

#[tokio::test]
async fn without_redis_the_count_is_in_memory_and_says_so() {
    let demo = Demo::start(bin(), &[], &[]);
    let line = demo
        .logs()
        .into_iter()
        .find(|l| l.contains("\"count store\""))
        .unwrap();
    assert!(line.contains("\"store\":\"memory\""), "{line}");
    assert!(line.contains("embedded default"), "{line}");
    assert_eq!(get(&demo.url("/")).await.text(), "1\n");
    assert_eq!(get(&demo.url("/readyz")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_bad_redis_url_is_refused_at_start() {
    let out = std::process::Command::new(bin())
        .args([
            "--redis",
            "http://:hunter2@nowhere",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--diag-listen", "off"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("invalid Redis URL"), "{all}");
    assert!(!all.contains("hunter2"), "the password was printed: {all}");
}

/// What one request saw.
struct Answer {
    status: StatusCode,
    count: Option<u64>,
    took: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_frozen_mid_load_loses_nothing_and_counts_nothing_twice() {
    let redis = RedisServer::start();
    let demo = demo_on(&redis, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let url = demo.url("/");
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    let r = get(&url).await;
                    let took = start.elapsed();
                    let count = if r.status == StatusCode::OK {
                        Some(r.text().trim_end().parse::<u64>().unwrap())
                    } else {
                        assert!(is_unavailable(&r), "{} {:?}", r.status, r.text());
                        assert_eq!(r.header("retry-after"), "1");
                        None
                    };
                    answers.push(Answer {
                        status: r.status,
                        count,
                        took,
                    });
                }
                answers
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.pause();
    let r = wait_ready(
        &demo,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        r.text().contains("redis") && r.text().contains("unavailable"),
        "{}",
        r.text()
    );
    assert_eq!(get(&demo.url("/healthz")).await.status, StatusCode::OK);
    // Frozen for 5 s more: an answer that waited on Redis would take that long.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    redis.resume();
    wait_ready(&demo, StatusCode::OK, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);

    let mut answers = Vec::new();
    for t in load {
        answers.extend(t.await.unwrap());
    }
    let counts: Vec<u64> = answers.iter().filter_map(|a| a.count).collect();
    let unavailable = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    let distinct: HashSet<u64> = counts.iter().copied().collect();
    assert_eq!(distinct.len(), counts.len(), "a count was answered twice");
    let slowest = answers.iter().map(|a| a.took).max().unwrap();
    // The command timeout is 300 ms: nothing waits for Redis much longer than that, nor
    // anywhere near the 5 s it stayed frozen (the bound leaves a loaded machine room).
    assert!(
        slowest < Duration::from_secs(4),
        "an answer took {slowest:?}"
    );

    let total = redis.get_u64("demo:count").unwrap();
    let uncertain = metric(&demo, "store_uncertain_increments_total{store=\"redis\"}").await as u64;
    assert!(
        unavailable > 0 && uncertain > 0,
        "{unavailable} 503s, {uncertain} uncertain"
    );
    assert_eq!(
        total,
        counts.len() as u64 + uncertain,
        "Redis counted {total}; the demo answered {} counts and reported {uncertain} uncertain \
         increments ({unavailable} 503s)",
        counts.len()
    );
    assert!(counts.iter().all(|c| (1..=total).contains(c)));
    let timeouts = metric(
        &demo,
        "store_errors_total{store=\"redis\",command=\"incr\",kind=\"timeout\"}",
    )
    .await;
    assert!(timeouts >= 1.0, "{timeouts}");
    // Frozen is slow, not broken: no failure may pass for a broken connection.
    let broken = metric(
        &demo,
        "store_errors_total{store=\"redis\",command=\"incr\",kind=\"connection\"}",
    )
    .await;
    assert_eq!(broken, 0.0);
    eprintln!(
        "{} answers: {} counts, {unavailable} 503s, {uncertain} uncertain, slowest {slowest:?}",
        answers.len(),
        counts.len()
    );
}

#[tokio::test]
async fn readiness_follows_redis_and_a_restart_reset_is_logged() {
    let mut redis = RedisServer::start();
    let demo = demo_on(&redis, &[]);
    for want in 1..=5 {
        assert_eq!(get(&demo.url("/")).await.text(), format!("{want}\n"));
    }
    wait_ready(&demo, StatusCode::OK, Duration::from_secs(60)).await;
    let first_run = redis.run_id();

    redis.stop();
    let r = wait_ready(
        &demo,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        r.text().contains("redis") && r.text().contains("unavailable"),
        "{}",
        r.text()
    );
    assert_eq!(get(&demo.url("/healthz")).await.status, StatusCode::OK);
    let start = Instant::now();
    let r = get(&demo.url("/")).await;
    assert!(is_unavailable(&r), "{} {}", r.status, r.text());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(metric(&demo, "store_up{store=\"redis\"}").await, 0.0);
    assert!(
        metric(
            &demo,
            "store_errors_total{store=\"redis\",command=\"incr\",kind=\"unavailable\"}"
        )
        .await
            >= 1.0
    );

    redis.restart();
    assert_ne!(redis.run_id(), first_run);
    wait_ready(&demo, StatusCode::OK, Duration::from_secs(60)).await;
    // Persistence is off: the new Redis starts from nothing, and the demo says so.
    assert_eq!(get(&demo.url("/")).await.text(), "1\n");
    assert_eq!(metric(&demo, "store_up{store=\"redis\"}").await, 1.0);
    assert!(metric(&demo, "store_resets_total{store=\"redis\"}").await >= 1.0);
    let logs = demo.logs();
    assert!(
        logs.iter().any(|l| l.contains("Redis restarted")),
        "{}",
        logs.join("\n")
    );
    assert!(
        logs.iter().any(|l| l.contains("count reset")
            && l.contains("\"was\":5")
            && l.contains("\"now\":0")),
        "{}",
        logs.join("\n")
    );
    // The request span names the store.
    assert!(
        logs.iter()
            .any(|l| l.contains("\"answered\"") && l.contains("\"store\":\"redis\"")),
        "{}",
        logs.join("\n")
    );
}

#[tokio::test]
async fn a_client_gone_mid_increment_is_counted_uncertain() {
    use std::io::Write;
    let redis = RedisServer::start();
    // No probes (their PINGs would wait in Redis' socket too), and a command timeout
    // far longer than the test needs, so that the INCR ends by its client leaving.
    let demo = Demo::start(
        bin(),
        &[
            "--redis",
            &redis.url(),
            "--redis-timeout",
            "120s",
            "--redis-probe-interval",
            "60m",
        ],
        &[],
    );
    assert_eq!(get(&demo.url("/")).await.text(), "1\n");
    redis.pause();
    let unread = redis.unread_bytes();
    // A client that sends GET / and hangs up while its INCR waits on the frozen Redis:
    // it waits there once Redis' socket holds bytes it has not read.
    let mut client = std::net::TcpStream::connect(demo.addr).unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: demo\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while redis.unread_bytes() <= unread {
        assert!(Instant::now() < deadline, "the INCR never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    // Counted when the demo drops the request, with Redis still frozen.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cancelled = metric(
            &demo,
            "store_errors_total{store=\"redis\",command=\"incr\",kind=\"cancelled\"}",
        )
        .await;
        if cancelled == 1.0 {
            redis.resume();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cancelled INCR counted:\n{}",
            get(&demo.url("/metrics")).await.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The INCR reached Redis: the count holds it, and the demo's figures account for it.
    assert_eq!(redis.get_u64("demo:count"), Some(2));
    let uncertain = metric(&demo, "store_uncertain_increments_total{store=\"redis\"}").await;
    assert_eq!(uncertain, 1.0);
    assert_eq!(get(&demo.url("/")).await.text(), "3\n");
}

#[tokio::test]
async fn a_demo_started_before_redis_waits_unready_then_counts() {
    let mut redis = RedisServer::start();
    redis.stop();
    let demo = demo_on(&redis, &[]);
    assert!(
        demo.logs()
            .iter()
            .any(|l| l.contains("Redis is unavailable at start")),
        "{}",
        demo.logs().join("\n")
    );
    let r = get(&demo.url("/readyz")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let r = get(&demo.url("/")).await;
    assert!(is_unavailable(&r), "{} {}", r.status, r.text());
    assert!(r.text().contains("nothing was counted"), "{}", r.text());
    assert_eq!(get(&demo.url("/healthz")).await.status, StatusCode::OK);
    redis.restart();
    wait_ready(&demo, StatusCode::OK, Duration::from_secs(60)).await;
    assert_eq!(get(&demo.url("/")).await.text(), "1\n");
    // Not sent, so not uncertain.
    assert_eq!(
        metric(&demo, "store_uncertain_increments_total{store=\"redis\"}").await,
        0.0
    );
}
