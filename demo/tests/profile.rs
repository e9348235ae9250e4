//! What a user does first: `go tool pprof` against the running demo under load, with and
//! without a token, and a flamegraph download.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use testkit::{Demo, get, get_with, go_pprof_async, profile_running, rss_mib, try_request};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tool_pprof_finds_spin_cpu_under_load() {
    let demo = Demo::start(bin(), &[], &[]);
    let on = load(&demo, 2);
    // `-seconds` on the command line, as users type it.
    let top = go_pprof_async(vec![
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
    let top = go_pprof_async(vec!["-top".into(), url]).await;
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

/// pprof-rs kept its samples in a temporary file, so an unwritable temp directory made
/// every CPU profile fail until a restart (this test asserted that clear error). diag's
/// own engine writes no file: the profile works, and so do heap dumps.
#[tokio::test]
async fn an_unwritable_temp_dir_does_not_stop_profiling_and_the_service_keeps_serving() {
    let demo = Demo::start(bin(), &[], &[("TMPDIR", "/nonexistent/diag-test")]);
    for _ in 0..2 {
        let r = get(&demo.diag_url("/debug/pprof/profile?seconds=1")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(&r.body[..2], &[0x1f, 0x8b], "not a gzipped profile");
    }
    // Heap dumps go through an in-memory file: the temp directory does not matter.
    let r = get(&demo.diag_url("/debug/pprof/heap")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(get(&demo.url("/")).await.text(), "1\n");
    assert_eq!(
        get(&demo.diag_url("/debug/pprof/")).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tool_pprof_web_ui_opens_the_profile() {
    let demo = Demo::start(bin(), &[], &[]);
    let on = load(&demo, 1);
    let dir = testkit::temp_dir("pprof-http");
    let file = dir.join("cpu.pb.gz");
    let r = get(&demo.diag_url("/debug/pprof/profile?seconds=2")).await;
    on.store(false, Ordering::Relaxed);
    assert_eq!(r.status, StatusCode::OK);
    std::fs::write(&file, &r.body).unwrap();
    // `go tool pprof -http` serves its web UI; ask it for the flame graph view.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // The tool itself, not the `go` wrapper, so that killing it stops the web UI.
    let mut ui = std::process::Command::new(testkit::go_tool("pprof"))
        .args(["-no_browser", &format!("-http=127.0.0.1:{port}")])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/ui/flamegraph");
    // A wait for progress: go tool pprof reads and symbolizes the file before it listens,
    // seconds on a loaded machine.
    let mut page = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if let Ok(r) = try_request(Method::GET, &url, &[], b"").await {
            page = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = ui.kill();
    let _ = ui.wait();
    let page = page.expect("go tool pprof -http never answered");
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text().contains("spin_cpu"),
        "the web UI does not show spin_cpu"
    );
}

/// With jemalloc as the allocator, the CPU sampler's freed collector (~65 MB) would stay
/// resident as dirty pages for jemalloc's decay time, swinging resident memory by hundreds
/// of MiB over back-to-back profiles; diag purges after each stop.
///
/// Resident memory is read while the next profile runs: the sampler starts it only after
/// the previous one's stop has finished (its jobs run in order on one thread). Read right
/// after an answer instead, it could catch that stop halfway, while pprof-rs holds its old
/// and its new collector both (the stop runs after the answer goes out; ~0.85 s in a debug
/// build): 307 → 401 MiB in one CI run, a moment, not growth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_memory_stays_flat_over_back_to_back_profiles() {
    let demo = Demo::start(bin(), &[], &[]);
    let on = load(&demo, 1);
    let url = demo.diag_url("/debug/pprof/profile?seconds=1");
    let index = demo.diag_url("/debug/pprof/");
    let mut during = Vec::new();
    for _ in 0..13 {
        let profile = profile_running(&url, &index).await;
        during.push(rss_mib(demo.pid()));
        let r = profile.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    on.store(false, Ordering::Relaxed);
    // The first window pays for the collector; the second reads during the first stop's
    // aftermath with the symbolizer's caches filled. After that, flat but for the symbol
    // cache taking in addresses it had not seen.
    let base = during[2];
    let peak = *during[2..].iter().max().unwrap();
    assert!(
        peak <= base + 24,
        "resident MiB during each profile: {during:?} (base {base}, peak {peak})"
    );
}
