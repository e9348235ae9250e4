//! The flamegraph in a real browser: headless Chromium opens the downloaded SVG, searches
//! for `spin_cpu` with Ctrl-F as a person would, and zooms into it with a click
//! (`scripts/browser/flamegraph-check.mjs`, driven by playwright-core).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use testkit::{Demo, get};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_and_zoom_work_in_chromium() {
    let tools = std::env::var_os("DIAG_BROWSER_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/browser"));
    assert!(
        tools.join("node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "this test drives Debian's chromium through playwright-core in {}: run scripts/test.sh, \
         which installs both",
        tools.display()
    );
    let demo = Demo::start(Path::new(env!("CARGO_BIN_EXE_demo")), &[], &[]);
    // CPU in spin_cpu beside CPU in churn_memory, so the flamegraph has more than one
    // tower and zooming into spin_cpu hides the other. (Counter traffic alone was too
    // little CPU to be sampled reliably: one cold CI run had spin_cpu at 100 %.)
    let work = demo.url("/work?ms=2500");
    let load = tokio::spawn(async move { get(&work).await });
    let churn = demo.url("/churn?n=2000&bytes=65536");
    let traffic = tokio::spawn(async move {
        for _ in 0..3000 {
            get(&churn).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(&demo.diag_url("/debug/pprof/flamegraph?seconds=2")).await;
    assert_eq!(r.status, StatusCode::OK);
    load.await.unwrap();
    traffic.abort();

    let dir = testkit::temp_dir("browser");
    let svg = dir.join("flamegraph.svg");
    std::fs::write(&svg, &r.body).unwrap();
    let shot = dir.join("flamegraph.png");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(root().join("scripts/browser/flamegraph-check.mjs"))
            .arg(&svg)
            .arg("spin_cpu")
            .arg(&shot)
            .env("DIAG_BROWSER_TOOLS", &tools)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser check failed:\n{stdout}\n{stderr}"
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON from the check");
    assert_eq!(seen["title"], "CPU flamegraph");
    assert!(
        seen["matched"].as_str().unwrap().starts_with("Matched: "),
        "{seen}"
    );
    assert!(seen["highlighted"].as_u64().unwrap() > 0, "{seen}");
    assert_eq!(seen["unzoomVisible"], true, "{seen}");
    assert!(
        seen["hiddenAfterZoom"].as_u64().unwrap() > 0,
        "zooming hid no frame: {seen}"
    );
}
