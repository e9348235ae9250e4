//! What profiling costs the demo in memory, as a budget (issue 13): under load (wrk on `/`
//! plus a loop on `/work`), a `go tool pprof -seconds 8` CPU profile, then a heap profile
//! and a 2 s flamegraph. Anonymous plus shared memory (RssAnon + RssShmem: heap dumps go
//! through a memfd, which a cgroup limit counts), sampled every 100 ms, stays within
//! 24 MiB of what it was before the first profile, and within 12 MiB of it 15 s after the
//! last answer. (With pprof-rs and backtrace-rs it rose by ~160 MiB and stayed.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::StatusCode;
use testkit::{Demo, get, go_pprof_async, mem};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_under_load_stay_within_the_memory_budget() {
    let demo = Demo::start(bin(), &[], &[]);
    let pid = demo.pid();

    // The load: wrk on the counter, and a loop of CPU-heavy requests.
    let wrk = Command::new("wrk")
        .args(["-t1", "-c4", "-d40s", &demo.url("/")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wrk (scripts/test.sh installs it)");
    let stop = Arc::new(AtomicBool::new(false));
    let work = {
        let stop = stop.clone();
        let url = demo.url("/work?n=3000000");
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(get(&url).await.status, StatusCode::OK);
            }
        })
    };

    // What the process holds under load before any profile.
    let warm = mem::Sampler::start(pid, Duration::from_millis(100));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = median(warm.finish());

    let sampler = mem::Sampler::start(pid, Duration::from_millis(100));
    let top = go_pprof_async(vec![
        "-top".into(),
        "-seconds".into(),
        "8".into(),
        demo.diag_url("/debug/pprof/profile"),
    ])
    .await;
    assert!(top.contains("spin_cpu"), "{top}");
    let heap = get(&demo.diag_url("/debug/pprof/heap")).await;
    assert_eq!(heap.status, StatusCode::OK, "{}", heap.text());
    let svg = get(&demo.diag_url("/debug/pprof/flamegraph?seconds=2")).await;
    assert_eq!(svg.status, StatusCode::OK, "{}", svg.text());
    let during = sampler.finish();

    stop.store(true, Ordering::Relaxed);
    work.await.unwrap();
    let _ = Command::new("kill").arg(wrk.id().to_string()).status();
    let mut wrk = wrk;
    let _ = wrk.wait();

    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = mem::anon_mib(pid);
    let peak = mem::peak(&during);
    eprintln!(
        "memory budget: anonymous+shared {before:.1} MiB before, peak {peak:.1} MiB during \
         ({} readings), {after:.1} MiB 15 s after the last answer",
        during.len()
    );
    assert!(
        peak - before <= 24.0,
        "peak {peak:.1} MiB is {:.1} MiB above the {before:.1} MiB before: {during:?}",
        peak - before
    );
    assert!(
        after - before <= 12.0,
        "{after:.1} MiB 15 s after the last answer, {:.1} MiB above the {before:.1} MiB before",
        after - before
    );
}
