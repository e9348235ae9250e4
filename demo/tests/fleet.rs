//! What Grafana Alloy's `pyroscope.scrape` does to a service, replayed against the demo
//! under load: every interval a CPU profile of (interval − 1) s, `allocs` and `goroutine`,
//! each with Alloy's timeout, and in the middle a person's `go tool pprof` and a flamegraph
//! download. The profiles and paths come from deploy/alloy/config.alloy, so the replay
//! follows the shipped configuration.
//!
//! Every scrape must answer 200 with a profile `go tool pprof` parses, the person's
//! requests must be served, no request to the application may fail, and resident memory
//! at the end must be within 24 MiB of its level after the first cycle and, in runs of 12
//! cycles or more, within 12 MiB of its level a third of the way in. (The first sight of
//! each part of the code parses more of the binary's debug info: measured, a rise of
//! 10–15 MiB over the first cycles, in steps, then flat.)
//!
//! The test script runs a few short cycles (4 × 4 s). Alloy's own timing, 15 s, for
//! three minutes:
//!
//!     DIAG_FLEET_CYCLES=12 DIAG_FLEET_INTERVAL_SECS=15 cargo test -p demo --test fleet
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use testkit::{Demo, go_pprof_async, rss_mib, temp_dir, try_request};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

const TOKEN: &str = "fleet-test-token-0123456789";
/// How far resident memory at the end may sit above its level a third of the way in, in
/// runs of at least `STEADY_CYCLES` cycles: room for one more late debug-info parse (they
/// come in steps of up to ~10 MiB when a new part of the code is first sampled).
const RSS_SLACK_MIB: u64 = 12;
/// Runs this long (Alloy's timing for three minutes and more) also check the steady state.
const STEADY_CYCLES: u64 = 12;
/// The one-time rise allowed between the first cycle and the end: the first sight of each
/// code path parses more of the binary's debug info (measured: 11–15 MiB over the first
/// few cycles, then flat; docs/fleet.md).
const RSS_WARMUP_MIB: u64 = 24;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One `profile.NAME { ... }` block of the Alloy configuration that is enabled: its path
/// and whether Alloy asks for a delta (`seconds=`).
#[derive(Debug, Clone)]
struct Scrape {
    name: String,
    path: String,
    delta: bool,
}

/// The enabled profiles of deploy/alloy/config.alloy, and its scrape timeout.
fn alloy_config() -> (Vec<Scrape>, Duration) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alloy/config.alloy"),
    )
    .unwrap();
    let mut scrapes = Vec::new();
    for chunk in text.split("profile.").skip(1) {
        let Some((name, rest)) = chunk.split_once('{') else {
            continue;
        };
        let body = rest.split('}').next().unwrap();
        let attr = |key: &str| {
            body.lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix(key)?.trim().strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_owned())
        };
        if attr("enabled").as_deref() == Some("true") {
            scrapes.push(Scrape {
                name: name.trim().to_owned(),
                path: attr("path").expect("an enabled profile names its path"),
                delta: attr("delta").as_deref() == Some("true"),
            });
        }
    }
    let timeout = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("scrape_timeout"))
        .and_then(|v| v.trim().strip_prefix('='))
        .map(|v| {
            v.trim()
                .trim_matches('"')
                .trim_end_matches('s')
                .parse()
                .unwrap()
        })
        .expect("scrape_timeout in the Alloy config");
    (scrapes, Duration::from_secs(timeout))
}

/// Requests to the application until `on` is cleared; counts (served, failed).
fn load(demo: &Demo, on: Arc<AtomicBool>) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Each loop opens a connection per request (as many clients do); a short pause keeps
    // the rate of new connections (and sockets in TIME_WAIT) moderate.
    for path in [
        "/",
        "/work?n=2000000",
        "/churn?n=20&bytes=65536",
        "/work?n=2000000",
    ] {
        let url = demo.url(path);
        let (on, served, failed) = (on.clone(), served.clone(), failed.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                match try_request(Method::GET, &url, &[], b"").await {
                    Ok(r) if r.status == StatusCode::OK => served.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("{url}: {} {}", r.status, r.text());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("{url}: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    (served, failed)
}

/// Borrowed header pairs, as requests take them, from owned ones a task can hold.
fn refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Writes a scraped body to a file and has `go tool pprof` parse it: its sample types.
async fn parses(body: &[u8], name: &str) -> String {
    let file = temp_dir("fleet").join(format!("{name}.pb.gz"));
    std::fs::write(&file, body).unwrap();
    go_pprof_async(vec!["-raw".into(), file.to_str().unwrap().into()]).await
}

/// One fleet loop at a time: each replays one scraper against one process, and two loaded
/// demos on a 2-core machine would each get half of it (seen: Alloy's 3 s profile past its
/// 13 s timeout in a debug build).
static ONE_LOOP_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn replay(token: Option<&str>) {
    let _one = ONE_LOOP_AT_A_TIME.lock().await;
    let cycles = env_u64("DIAG_FLEET_CYCLES", 4).max(3);
    let interval = Duration::from_secs(env_u64("DIAG_FLEET_INTERVAL_SECS", 4).max(2));
    let (scrapes, timeout) = alloy_config();
    let names: Vec<&str> = scrapes.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["process_cpu", "memory", "goroutine"], "{scrapes:?}");

    let env: Vec<(&str, &str)> = token.map(|t| ("DIAG_TOKEN", t)).into_iter().collect();
    let demo = Demo::start(bin(), &[], &env);
    let auth: Vec<(String, String)> = token
        .map(|t| ("authorization".to_owned(), format!("Bearer {t}")))
        .into_iter()
        .collect();
    let scraper: Arc<Vec<(String, String)>> = Arc::new(
        auth.iter()
            .cloned()
            .chain([("user-agent".to_owned(), "Alloy/v1.10.0 (replay)".to_owned())])
            .collect(),
    );
    if token.is_some() {
        let r = try_request(Method::GET, &demo.diag_url("/debug/pprof/allocs"), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the token is on");
    }

    let on = Arc::new(AtomicBool::new(true));
    let (served, failed) = load(&demo, on.clone());
    let mut rss_after_first = 0;
    let mut rss_warm = 0;
    for cycle in 0..cycles {
        let start = Instant::now();
        let mut jobs = Vec::new();
        for s in &scrapes {
            // Alloy: delta profiles ask for interval − 1 s and wait that much longer.
            let (url, limit) = if s.delta {
                let secs = interval.as_secs() - 1;
                (
                    demo.diag_url(&format!("{}?seconds={secs}", s.path)),
                    timeout + interval - Duration::from_secs(1),
                )
            } else {
                (demo.diag_url(&s.path), timeout)
            };
            let headers = scraper.clone();
            let name = format!("{}-{cycle}", s.name);
            jobs.push(tokio::spawn(async move {
                let h = refs(&headers);
                let t = Instant::now();
                let r = tokio::time::timeout(limit, try_request(Method::GET, &url, &h, b""))
                    .await
                    .unwrap_or_else(|_| panic!("{url}: over Alloy's {limit:?} timeout"))
                    .unwrap_or_else(|e| panic!("{url}: {e}"));
                assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text());
                assert!(!r.body.is_empty(), "{url}: empty body");
                let types = parses(&r.body, &name).await;
                (name, types, t.elapsed())
            }));
        }
        let person = if cycle == cycles / 2 {
            // A person, mid-loop: go tool pprof (token as Basic auth in the URL, as the
            // docs give it) and a flamegraph download.
            let userinfo = token.map(|t| format!(":{t}@")).unwrap_or_default();
            let url = format!(
                "http://{userinfo}{}/debug/pprof/profile?seconds=2",
                demo.diag_addr
            );
            // Go waits 1.5 × seconds for the answer by default; a debug build's window that
            // ends behind the other scrapes' symbolization can take longer (seen: over 3 s
            // for a 2 s window), so the person gives it a minute. Alloy's own timeouts above
            // stay as Alloy has them.
            let pprof = tokio::spawn(go_pprof_async(vec![
                "-top".into(),
                "-timeout=60".into(),
                url,
            ]));
            let svg_url = demo.diag_url("/debug/pprof/flamegraph?seconds=2");
            let h = auth.clone();
            let svg = tokio::spawn(async move {
                try_request(Method::GET, &svg_url, &refs(&h), b"")
                    .await
                    .unwrap()
            });
            Some((pprof, svg))
        } else {
            None
        };
        // Resident memory mid-cycle, while the CPU scrape's sampler runs: the same phase
        // every cycle.
        tokio::time::sleep(interval / 2).await;
        let rss = rss_mib(demo.pid());
        let status = std::fs::read_to_string(format!("/proc/{}/status", demo.pid())).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let jemalloc = try_request(Method::GET, &demo.url("/metrics"), &[], b"")
            .await
            .map(|r| {
                r.text()
                    .lines()
                    .find(|l| l.starts_with("jemalloc_allocated_bytes"))
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default();
        eprintln!(
            "cycle {cycle}: rss {rss} MiB, anon {}, file {}, {jemalloc}",
            field("RssAnon:"),
            field("RssFile:")
        );
        if cycle == 1 {
            rss_after_first = rss;
        }
        if cycle == cycles / 3 {
            rss_warm = rss;
        }
        for job in jobs {
            let (name, types, took) = job.await.unwrap();
            assert!(
                types.contains("PeriodType") || types.contains("Samples"),
                "{types}"
            );
            eprintln!("cycle {cycle}: {name} in {took:?}, rss {rss} MiB");
        }
        if let Some((pprof, svg)) = person {
            let top = pprof.await.unwrap();
            assert!(top.contains("Showing nodes"), "{top}");
            let svg = svg.await.unwrap();
            assert_eq!(svg.status, StatusCode::OK, "{}", svg.text());
            assert!(svg.text().contains("<svg"), "not an SVG");
        }
        if cycle + 1 == cycles {
            eprintln!(
                "resident memory: {rss_after_first} MiB after the first cycle, {rss_warm} MiB \
                 after a third, {rss} MiB at the end"
            );
            assert!(
                cycles < STEADY_CYCLES || rss <= rss_warm + RSS_SLACK_MIB,
                "resident memory grew from {rss_warm} MiB (a third of the way, warm) to {rss} \
                 MiB at the end of {cycles} cycles"
            );
            assert!(
                rss <= rss_after_first + RSS_WARMUP_MIB,
                "resident memory grew from {rss_after_first} MiB (after the first cycle) to \
                 {rss} MiB over {cycles} cycles"
            );
        }
        let next = start + interval;
        tokio::time::sleep_until(next.into()).await;
    }
    on.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert!(
        served > 100,
        "only {served} requests served under the scrapes"
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} application requests failed",
        served + failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alloys_loop_without_a_token() {
    replay(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alloys_loop_with_the_token_as_the_docs_give_it() {
    replay(Some(TOKEN)).await;
}
