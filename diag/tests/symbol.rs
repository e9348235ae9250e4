//! `/symbol` over real sockets: Go's protocol, the heavy-operation cap, and memory that
//! stays bounded however many new addresses clients send. Memory is this process's, so
//! these tests live in their own binary and run one at a time.
#![cfg(feature = "cpu")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use testkit::{get, profile_running, request};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Anonymous plus shared memory of this process, in KiB (`RssAnon + RssShmem`, read by
/// `testkit::mem`). Its address is also this test's known program function.
#[inline(never)]
fn anon_kib() -> u64 {
    kib(testkit::mem::anon_mib(std::process::id()))
}

fn kib(mib: f64) -> u64 {
    (mib * 1024.0) as u64
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The executable mapping of this test binary in memory, from `/proc/self/maps`.
fn own_text() -> (u64, u64) {
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.ends_with(exe) && l.split_whitespace().nth(1) == Some("r-xp"))
        .unwrap();
    let (start, end) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    (
        u64::from_str_radix(start, 16).unwrap(),
        u64::from_str_radix(end, 16).unwrap(),
    )
}

async fn post(addr: SocketAddr, body: &str) -> testkit::Reply {
    let url = format!("http://{addr}/debug/pprof/symbol");
    request(Method::POST, &url, &[], body.as_bytes()).await
}

/// Issue 12, item 3: 400 POSTs of 10,000 addresses never seen before each. Before the
/// cache was bounded this grew memory by ~375 MiB and kept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_new_addresses() {
    let _serial = SERIAL.lock().await;
    let addr = testkit::serve(diag::router(diag::Config::default())).await;
    let (text_start, text_end) = own_text();
    // Every 40th POST also carries 5,000 new addresses of this program's own code (a
    // DWARF pass each, over most of its units: ~2 s in this debug build), 50,000 in all,
    // so that the cache turns over real entries too, not only unknown ones.
    let body = |round: u64| -> String {
        let unknown = (0..10_000u64).map(|i| 0x7100_0000_0000 + (round * 10_000 + i) * 16);
        let mut words: Vec<String> = unknown.map(|a| format!("{a:#x}")).collect();
        if round % 40 == 0 {
            let step = (text_end - text_start) / 5_000;
            for (i, w) in words.iter_mut().take(5_000).enumerate() {
                let a = text_start + (i as u64) * step + (round / 40) * 4 % step.max(1);
                *w = format!("{a:#x}");
            }
        }
        words.join("+")
    };
    // The first pass and the server's own start-up are the base.
    let r = post(addr, &body(0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().lines().count() > 1000, "{}", &r.text()[..200]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = median((0..5).map(|_| anon_kib()).collect());
    let sampler = testkit::mem::Sampler::start(std::process::id(), Duration::from_millis(100));
    let started = Instant::now();
    for round in 1..400 {
        let t = Instant::now();
        let r = post(addr, &body(round)).await;
        assert_eq!(r.status, StatusCode::OK, "round {round}: {}", r.text());
        if round % 40 == 0 {
            // SAFETY: glibc's statistics call.
            let mi = unsafe { libc::mallinfo2() };
            eprintln!(
                "round {round}: {} ms, {} KiB, malloc in use {} KiB, from the OS {} KiB",
                t.elapsed().as_millis(),
                anon_kib(),
                mi.uordblks / 1024,
                (mi.arena + mi.hblkhd) / 1024
            );
        }
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples: Vec<u64> = sampler.finish().into_iter().map(kib).collect();
    let peak = *samples.iter().max().unwrap();
    let after = median(samples[samples.len().saturating_sub(10)..].to_vec());
    eprintln!(
        "400 POSTs in {:.1} s; RssAnon+RssShmem base {} KiB, peak {} KiB (+{}), after {} KiB (+{})",
        took.as_secs_f64(),
        base,
        peak,
        peak.saturating_sub(base),
        after,
        after.saturating_sub(base)
    );
    assert!(
        peak < base + 32 * 1024,
        "peak {peak} KiB against a base of {base} KiB"
    );
    assert!(
        after < base + 32 * 1024,
        "after {after} KiB against a base of {base} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbol_counts_against_the_heavy_cap() {
    let _serial = SERIAL.lock().await;
    let cfg = diag::Config::default().with_max_concurrent(1);
    let addr = testkit::serve(diag::router(cfg)).await;
    let f = anon_kib as *const () as usize as u64;
    // Resolved once before the profile, so the lookups below answer from the cache at
    // once: a cold pass over this test binary's debug info can outlast the profile on a
    // loaded machine, and the cap would never be met.
    assert_eq!(post(addr, &format!("{f:#x}")).await.status, StatusCode::OK);
    // A CPU profile holds the one permit from the moment the index page shows it running
    // (the handler takes the permit before it starts the capture), for the rest of its
    // 10 s window: time to spare for the requests below on a slow machine.
    let url = format!("http://{addr}/debug/pprof/profile?seconds=10");
    let profile = profile_running(&url, &format!("http://{addr}/debug/pprof/")).await;
    let r = post(addr, &format!("{f:#x}")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.header("x-go-pprof"), "1");
    // Go's probe (no addresses) is not heavy: it still answers.
    let r = get(&format!("http://{addr}/debug/pprof/symbol")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "num_symbols: 1\n");
    assert_eq!(profile.await.unwrap().status, StatusCode::OK);
    // The permit is back: addresses resolve again.
    let r = post(addr, &format!("{f:#x}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains(&format!("{f:#x} ")), "{}", r.text());
}

#[tokio::test]
async fn a_bad_body_is_echoed_truncated() {
    let _serial = SERIAL.lock().await;
    let addr = testkit::serve(diag::router(diag::Config::default())).await;
    let word = "q".repeat(1 << 20);
    let r = post(addr, &format!("0x10+{word}")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.header("x-go-pprof"), "1");
    let text = r.text();
    assert!(text.len() < 512, "{} bytes echoed", text.len());
    assert!(text.contains("\"address\": \"qqqq"), "{text}");
    assert!(text.contains("(1048576 bytes)"), "{text}");
}

/// Steps of the burn, inlined into `burn_in_symbol_test` even unoptimised: its samples
/// are lines of the burner's locations.
#[inline(always)]
fn burn_step(x: u64, i: u64) -> u64 {
    let mut x = x;
    for k in 0..64 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i ^ k);
    }
    x
}

const BURN_STEP_LINES: std::ops::RangeInclusive<u32> = (line!() - 8)..=(line!() - 2);

/// Burns CPU under a name the profile must show, with file and line.
#[inline(never)]
fn burn_in_symbol_test(n: u64) -> u64 {
    let mut x = std::hint::black_box(1u64);
    for i in 0..n {
        x = burn_step(x, i);
    }
    x
}

const BURN_CALL_LINE: u32 = line!() - 5;

/// The line number of `function` at `file:N` in a `go tool pprof -lines` row, if any.
fn lines_of<'a>(top: &'a str, function: &'a str) -> impl Iterator<Item = u32> + 'a {
    top.lines()
        .filter(move |l| l.contains(function))
        .filter_map(|l| l.split("symbol.rs:").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tool_pprof_shows_lines_and_inlined_frames() {
    let _serial = SERIAL.lock().await;
    let addr = testkit::serve(diag::router(diag::Config::default())).await;
    let on = Arc::new(AtomicBool::new(true));
    let flag = on.clone();
    let burner = std::thread::spawn(move || {
        while flag.load(Ordering::Relaxed) {
            std::hint::black_box(burn_in_symbol_test(1_000_000));
        }
    });
    let r = get(&format!("http://{addr}/debug/pprof/profile?seconds=3")).await;
    on.store(false, Ordering::Relaxed);
    burner.join().unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let dir = testkit::temp_dir("symbol-lines");
    let file = dir.join("cpu.pb.gz");
    std::fs::write(&file, &r.body).unwrap();
    let file = file.to_str().unwrap();

    // `-lines`: the burner and the step inlined into it, each with its file and line.
    let top = testkit::go_pprof(&["-top", "-lines", file]);
    assert!(
        lines_of(&top, "burn_in_symbol_test").any(|n| n == BURN_CALL_LINE),
        "no burn_in_symbol_test at symbol.rs:{BURN_CALL_LINE}:\n{top}"
    );
    assert!(
        lines_of(&top, "burn_step").any(|n| BURN_STEP_LINES.contains(&n)),
        "no burn_step at symbol.rs:{BURN_STEP_LINES:?}:\n{top}"
    );
    // The inlined step is a line of one of the burner's locations: in `-raw`, a location
    // is its first line (with its address and mapping) and the following indented ones,
    // innermost first.
    let raw = testkit::go_pprof(&["-raw", file]);
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in raw.lines() {
        if line.contains(" M=") {
            blocks.push(vec![line]);
        } else if let Some(b) = blocks.last_mut().filter(|_| line.starts_with("     ")) {
            b.push(line);
        }
    }
    let inlined = blocks.iter().any(|b| {
        let step = b.iter().position(|l| l.contains("burn_step"));
        let burner = b.iter().position(|l| l.contains("burn_in_symbol_test"));
        matches!((step, burner), (Some(s), Some(o)) if s < o)
    });
    assert!(
        inlined,
        "no location with burn_step inlined into the burner:\n{raw}"
    );
}
