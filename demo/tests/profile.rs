//! What a user does first: `go tool pprof` against the running demo under load, with and
//! without a token, and a flamegraph download.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use testkit::{Demo, get, get_with, go_pprof, try_request};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

/// Keeps `clients` sequential `/work?n=` loops busy until the returned flag is cleared.
fn load(demo: &Demo, clients: usize) -> Arc<AtomicBool> {
    let on = Arc::new(AtomicBool::new(true));
    for _ in 0..clients {
        let on = on.clone();
        let url = demo.url("/work?n=3000000");
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                match try_request(Method::GET, &url, &[], b"").await {
                    Ok(r) => assert_eq!(r.status, StatusCode::OK, "{}", r.text()),
                    // The test has ended and the demo with it.
                    Err(_) if !on.load(Ordering::Relaxed) => break,
                    Err(e) => panic!("{e}"),
                }
            }
        });
    }
    on
}

async fn pprof_top(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        go_pprof(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tool_pprof_finds_spin_cpu_under_load() {
    let demo = Demo::start(bin(), &[], &[]);
    let on = load(&demo, 2);
    // `-seconds` on the command line, as users type it.
    let top = pprof_top(vec![
        "-top".into(),
        "-cum".into(),
        "-seconds".into(),
        "3".into(),
        demo.diag_url("/debug/pprof/profile"),
    ])
    .await;
    on.store(false, Ordering::Relaxed);
    let line = top
        .lines()
        .find(|l| {
            l.split_whitespace()
                .last()
                .is_some_and(|f| f.ends_with("spin_cpu"))
        })
        .unwrap_or_else(|| panic!("spin_cpu not in the profile:\n{top}"));
    // Columns: flat flat% sum% cum cum%: spin_cpu holds most of the time.
    let cum_pct: f64 = line
        .split_whitespace()
        .nth(4)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(cum_pct > 50.0, "spin_cpu only {cum_pct}% cum:\n{top}");
    assert!(top.contains("Type: cpu"), "{top}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tool_pprof_sends_the_token_as_basic_auth() {
    let demo = Demo::start(bin(), &[], &[("DIAG_TOKEN", "t0ken-42")]);
    let r = get(&demo.diag_url("/debug/pprof/profile?seconds=1")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let on = load(&demo, 1);
    let url = format!(
        "http://:t0ken-42@{}/debug/pprof/profile?seconds=2",
        demo.diag_addr
    );
    let top = pprof_top(vec!["-top".into(), url]).await;
    on.store(false, Ordering::Relaxed);
    assert!(top.contains("Type: cpu"), "{top}");
    // The token never shows in the index page, even to a client that has it.
    let r = get_with(
        &demo.diag_url("/debug/pprof/"),
        &[("authorization", "Bearer t0ken-42")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.text().contains("t0ken-42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flamegraph_download_shows_spin_cpu() {
    let demo = Demo::start(bin(), &[], &[]);
    let on = load(&demo, 2);
    let r = get(&demo.diag_url("/debug/pprof/flamegraph?seconds=2")).await;
    on.store(false, Ordering::Relaxed);
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "image/svg+xml");
    assert_eq!(
        r.header("content-disposition"),
        "attachment; filename=\"flamegraph.svg\""
    );
    let svg = r.text();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..60.min(svg.len())]);
    assert!(svg.contains("spin_cpu"));
    assert!(svg.contains("CPU flamegraph"));
    tokio::time::sleep(Duration::from_millis(10)).await;
}
