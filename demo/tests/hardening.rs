//! Regression tests for what an attack on the demo found (issue 12), each over real
//! sockets against the real binary: a `/trace` window flooded with 60 KB paths stays within
//! its byte budget and gives its memory back when the client hangs up; idle connections
//! to the sidecar cannot starve the app of file descriptors; a trickling client cannot
//! hold the shutdown; repeated query parameters take the first value, as in Go.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use testkit::{Demo, get, mem};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

/// diag's byte budget for one `/trace` window (`diag::trace::MAX_TRACE_BYTES`).
const BUDGET_MIB: f64 = (diag::trace::MAX_TRACE_BYTES >> 20) as f64;

/// jemalloc's `allocated` bytes in MiB, from diag's `/heap/stats`.
async fn allocated_mib(demo: &Demo) -> f64 {
    let r = get(&demo.diag_url("/debug/pprof/heap/stats")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    let bytes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("allocated"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no allocated line in {text}"));
    bytes / (1 << 20) as f64
}

/// `n` GETs of a `len`-byte path on `threads` blocking client threads (each request its
/// own connection, as a flood would send them).
async fn flood(demo: &Demo, n: usize, len: usize, threads: usize) {
    let addr = demo.addr;
    let path = format!("/{}", "a".repeat(len));
    let mut joins = Vec::new();
    for t in 0..threads {
        let path = path.clone();
        joins.push(tokio::task::spawn_blocking(move || {
            for _ in (t..n).step_by(threads) {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    continue;
                };
                let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(req.as_bytes());
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_window_flooded_with_60_kb_paths_stays_within_its_byte_budget() {
    let demo = Demo::start(bin(), &[], &[]);
    let base = mem::anon_mib(demo.pid());
    let url = demo.diag_url("/debug/pprof/trace?seconds=6");
    let window = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sampler = mem::Sampler::start(demo.pid(), Duration::from_millis(100));
    flood(&demo, 3000, 60_000, 8).await;
    let readings = sampler.finish();
    let r = window.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let doc: Value = serde_json::from_slice(&r.body).expect("valid JSON");
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains("bytes cut]"), "no field was cut");
    assert!(
        (r.body.len() as f64) < BUDGET_MIB * 2.0 * (1 << 20) as f64,
        "a {} byte answer",
        r.body.len()
    );
    assert_eq!(
        doc["otherData"]["byte_budget"],
        diag::trace::MAX_TRACE_BYTES
    );
    let peak = mem::peak(&readings);
    eprintln!(
        "trace flood: anonymous {base:.1} MiB before, peak {peak:.1} MiB during the window \
         ({} readings), answer {} bytes, {} events kept",
        readings.len(),
        r.body.len(),
        doc["otherData"]["events_kept"]
    );
    // The window's records within the budget, plus room for the flood's own buffers.
    assert!(
        peak - base <= BUDGET_MIB + 16.0,
        "anonymous memory rose {:.1} MiB during the window (budget {BUDGET_MIB} MiB): {readings:?}",
        peak - base
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_trace_window_gives_its_memory_back() {
    let demo = Demo::start(bin(), &[], &[]);
    let base = allocated_mib(&demo).await;
    // A client opens a long window, the flood fills it, and the client hangs up.
    let mut client = TcpStream::connect(demo.diag_addr).unwrap();
    client
        .write_all(b"GET /debug/pprof/trace?seconds=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    flood(&demo, 6000, 8_000, 8).await;
    let during = allocated_mib(&demo).await;
    drop(client);
    // A wait for progress (the window closes when the server sees the hang-up): generous
    // for a loaded machine; a window that stayed would hold it for its whole 60 s.
    let t = Instant::now();
    let mut after = allocated_mib(&demo).await;
    while after - base > 2.0 && t.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = allocated_mib(&demo).await;
    }
    eprintln!("abandoned window: allocated {base:.1} → {during:.1} → {after:.1} MiB");
    assert!(
        during - base >= 4.0,
        "the window held only {:.1} MiB: the flood did not reach it",
        during - base
    );
    assert!(
        after - base <= 2.0,
        "{:.1} MiB still allocated 40 s after the client hung up",
        after - base
    );
    // The next window opens at once.
    let r = get(&demo.diag_url("/debug/pprof/trace?seconds=1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_sidecar_cannot_starve_the_app_of_descriptors() {
    // The demo with 256 file descriptors, as under `ulimit -n 256`.
    let demo_bin = bin().to_str().unwrap().to_owned();
    let demo = Demo::start(
        Path::new("/usr/bin/prlimit"),
        &["--nofile=256:256", "--", &demo_bin],
        &[],
    );
    let addr = demo.diag_addr;
    let held = tokio::task::spawn_blocking(move || {
        (0..300)
            .filter_map(|_| TcpStream::connect(addr).ok())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    // Answered at all is the point (starved of descriptors, it would never be): the bound
    // leaves a loaded machine room.
    let r = tokio::time::timeout(Duration::from_secs(60), get(&demo.url("/")))
        .await
        .expect("GET / answered while 300 connections were held to the sidecar");
    let took = t.elapsed();
    eprintln!(
        "{} connections opened to the sidecar; GET / answered in {took:?}",
        held.len()
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The sidecar itself still answers once connections are let go.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(&demo.diag_url("/debug/pprof/cmdline")).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_client_cannot_hold_the_shutdown() {
    // A shutdown timeout far longer than the test needs, and a head that never ends: held
    // by the trickler, the shutdown would last until the app's 10 s header-read timeout
    // cut it; the bound below leaves a loaded machine room and still tells the two apart.
    let mut demo = Demo::start(bin(), &["--shutdown-timeout", "60s"], &[]);
    let addr = demo.addr;
    let (started, trickling) = std::sync::mpsc::channel();
    let trickler = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let until = Instant::now() + Duration::from_secs(120);
        for (i, b) in
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .iter()
                .chain(std::iter::repeat(&b'a'))
                .enumerate()
        {
            if s.write_all(&[*b]).is_err() || Instant::now() > until {
                return;
            }
            if i == 4 {
                let _ = started.send(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // The signal comes once the trickler is connected and sending its head.
    tokio::task::spawn_blocking(move || trickling.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the trickler started");
    let t = Instant::now();
    demo.signal("TERM");
    let status = demo.wait(Duration::from_secs(90));
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0), "{}", demo.logs().join("\n"));
    assert!(
        took < Duration::from_secs(8),
        "the shutdown took {took:?} with a 60 s timeout: the trickling client held it"
    );
    trickler.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_of_repeated_parameters_wins_and_bad_input_is_echoed_short() {
    let demo = Demo::start(bin(), &[], &[]);
    // Go's FormValue takes the first: seconds=abc is never read.
    let r = get(&demo.diag_url("/debug/pprof/trace?seconds=1&seconds=abc")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = get(&demo.diag_url("/debug/pprof/trace?seconds=abc&seconds=1")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // A long bad value comes back cut, saying how much was left out.
    let long = "9".repeat(50_000);
    let r = get(&demo.diag_url(&format!("/debug/pprof/profile?seconds={long}"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.header("x-go-pprof"), "1");
    assert!(r.body.len() < 1000, "{} bytes echoed", r.body.len());
    assert!(r.text().contains("more bytes)"), "{}", r.text());
}
