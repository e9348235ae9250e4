//! tokio-console against the running demo: the real `tokio-console` binary attached in a
//! tmux terminal and read from the screen; a taken address; and the memory the console's
//! task records take under many short connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use testkit::{Demo, Tmux, get, rss_mib, tokio_console, try_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

fn console_demo(extra: &[&str]) -> Demo {
    let mut args = vec!["--console", "--console-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let demo = Demo::start(bin(), &args, &[]);
    assert!(
        demo.console_addr.is_some(),
        "the demo did not log its console"
    );
    demo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_console_lists_the_demos_tasks() {
    let demo = console_demo(&[]);
    let console = demo.console_addr.unwrap();
    // Three requests waiting in /sleep, each in a task named demo::sleep.
    for _ in 0..3 {
        let url = demo.url("/sleep?ms=30000");
        tokio::spawn(async move { try_request(Method::GET, &url, &[], b"").await });
    }
    let cmd = format!("{} http://{console}", tokio_console().display());
    let term = tokio::task::spawn_blocking(move || {
        let term = Tmux::start(&cmd, 250, 50);
        let shown = term.wait_for(Duration::from_secs(90), |s| {
            s.contains("CONNECTED") && s.matches("demo::sleep").count() >= 3
        });
        (term, shown)
    })
    .await
    .unwrap();
    let (term, shown) = term;
    let screen = shown.unwrap_or_else(|s| panic!("tokio-console never showed the tasks:\n{s}"));
    assert!(screen.contains("demo::serve"), "{screen}");
    assert!(screen.contains("diag::sidecar"), "{screen}");
    assert!(
        screen.contains(&format!("http://{console}")),
        "the console's header names its server:\n{screen}"
    );
    // The index tells people how to attach.
    let index = get(&demo.diag_url("/debug/pprof/")).await.text();
    assert!(
        index.contains(&format!("tokio-console http://{console}")),
        "{index}"
    );
    term.send_keys("q");
}

#[tokio::test]
async fn a_taken_console_address_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(["--listen", "127.0.0.1:0", "--diag-listen", "127.0.0.1:0"])
            .args(["--console", "--console-listen", &addr.to_string()])
            .env("DEMO_LOG_FORMAT", "pretty")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("cannot serve tokio-console on {addr}")),
        "{text}"
    );
    assert!(text.contains("choose another address"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    drop(taken);
}

/// Seconds the demo's tokio workers have spent runnable but waiting for a CPU, on
/// average (their schedstat run delay): the console's aggregator is a task on them
/// (`ConsoleServer::spawn`), so it cannot run sooner. 0 when no worker is found.
fn workers_run_delay(pid: u32) -> f64 {
    let workers = testkit::sched::named(pid, "tokio-rt-worker");
    if workers.is_empty() {
        return 0.0;
    }
    let waited: Duration = workers.iter().map(|t| t.waited).sum();
    waited.as_secs_f64() / workers.len() as f64
}

/// jemalloc's `allocated` bytes, from diag's own stats endpoint.
async fn allocated_mib(demo: &Demo) -> u64 {
    let text = get(&demo.diag_url("/debug/pprof/heap/stats")).await.text();
    text.lines()
        .find(|l| l.starts_with("allocated "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{text}"))
        >> 20
}

/// One request on a connection of its own, so that each is a task of its own.
async fn short_request(addr: SocketAddr) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::with_capacity(256);
    s.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

/// Every connection is a task, and console-subscriber keeps ~56 KB of statistics per task
/// until `retention` after it ends. 100 000 short connections: resident memory while they
/// run stays under `rate x (retention + 3 s) x 64 KiB` above where it started, and once
/// the retention has passed the memory is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_memory_is_bounded_by_its_retention() {
    const REQUESTS: u64 = 100_000;
    const CLIENTS: u64 = 16;
    const RETENTION_S: u64 = 3;
    let demo = console_demo(&["--console-retention", &format!("{RETENTION_S}s")]);
    let pid = demo.pid();
    let base_rss = rss_mib(pid);
    let base_alloc = allocated_mib(&demo).await;
    let peak = Arc::new(AtomicU64::new(base_rss));
    let running = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (peak, running) = (peak.clone(), running.clone());
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                peak.fetch_max(rss_mib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let delay_before = workers_run_delay(pid);
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = demo.addr;
            tokio::spawn(async move {
                for _ in 0..REQUESTS / CLIENTS {
                    short_request(addr).await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    running.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    let rate = REQUESTS as f64 / took;
    // Records live for the retention plus up to a publish interval (1 s) before the
    // aggregator drops them, and the rate is an average over a bursty run (a cold CI run
    // peaked at 5.2 s worth of its average rate): 3 s of margin. On a starved machine
    // the aggregator, a task on the demo's workers, gets through its work more slowly by
    // the share of the run its workers could run at all (1 - their mean wait for a CPU,
    // from the kernel's schedstat, over the run's time): a run at load 16.7 peaked at
    // 355 MiB against a bound of 160 without that stretch.
    let wait = workers_run_delay(pid) - delay_before;
    let share = (1.0 - wait / took).clamp(0.1, 1.0);
    let bound = base_rss + (rate * (RETENTION_S as f64 + 3.0) / share * 64.0 / 1024.0) as u64;
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "peak {peak} MiB, bound {bound} MiB, {rate:.0} connections/s, workers' share of the time {share:.2}"
    );
    assert!(
        peak <= bound,
        "peak {peak} MiB over {REQUESTS} connections at {rate:.0}/s; bound {bound} MiB \
         (started at {base_rss} MiB; the workers could run {share:.2} of the time)"
    );
    // Retention over: the records are dropped and jemalloc's background thread returns
    // the pages.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let alloc = allocated_mib(&demo).await;
        let rss = rss_mib(pid);
        if alloc <= base_alloc + 16 && rss <= base_rss + 64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {alloc} MiB allocated (from {base_alloc}) and {rss} MiB resident (from \
             {base_rss}) 90 s after {REQUESTS} connections; peak {peak} MiB"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
