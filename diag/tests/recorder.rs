//! The always-on CPU recorder over real sockets, read by the real `go tool pprof`. The
//! sampler and the recorder are process-global, so these tests live in their own binary
//! and run one at a time.
#![cfg(feature = "cpu")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diag::config::CpuRecorder;
use diag::{Config, Shutdown};
use http::StatusCode;
use testkit::{get, go_pprof_async, thread_cpu};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server with the recorder on as `rec` says, and the shutdown that stops it.
async fn server(rec: CpuRecorder) -> (tokio::sync::MutexGuard<'static, ()>, SocketAddr, Shutdown) {
    server_holding(SERIAL.lock().await, rec).await
}

/// [`server`] for a test that already holds [`SERIAL`] (to read the process's memory
/// before the recorder starts, with no other test running).
async fn server_holding(
    serial: tokio::sync::MutexGuard<'static, ()>,
    rec: CpuRecorder,
) -> (tokio::sync::MutexGuard<'static, ()>, SocketAddr, Shutdown) {
    let shutdown = Shutdown::new();
    let cfg = Config::default()
        .with_cpu_recorder(rec)
        .with_shutdown(shutdown.clone());
    let addr = testkit::serve(diag::router(cfg)).await;
    // The recorder starts on the sampler thread, at once (a loaded machine may be slow).
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorder_line(addr).await.is_none() {
        assert!(Instant::now() < deadline, "the recorder never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (serial, addr, shutdown)
}

/// The index page's recorder figures: (reaches back s, stacks, MiB), when it runs.
async fn recorder_line(addr: SocketAddr) -> Option<(u64, u64, f64)> {
    let page = get(&format!("http://{addr}/debug/pprof/")).await.text();
    let rest = page.split("it reaches back ").nth(1)?;
    let back: u64 = rest.split(' ').next()?.parse().ok()?;
    let rest = rest.split("s now; ").nth(1)?;
    let stacks: u64 = rest.split(' ').next()?.parse().ok()?;
    let mib: f64 = rest
        .split("stacks, ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some((back, stacks, mib))
}

/// Stops the recorder as the application's shutdown does, and waits for the index to say.
async fn stop(addr: SocketAddr, shutdown: &Shutdown) {
    shutdown.trigger();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = get(&format!("http://{addr}/debug/pprof/")).await.text();
        if page.contains("configured but not running") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the recorder kept running:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The CPU work the bar looks for.
#[inline(never)]
fn spin_cpu(n: u64) -> u64 {
    let mut x = std::hint::black_box(1u64);
    for i in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
    }
    x
}

/// `go tool pprof -top -cum` of `url`: the cum seconds of the line naming `name` (0 when
/// none does), and the output.
async fn cum_seconds(url: String, name: &str) -> (f64, String) {
    let top = go_pprof_async(vec!["-top".into(), "-cum".into(), url]).await;
    let secs = top
        .lines()
        .filter(|l| l.contains(name))
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(duration_secs)
        .fold(0.0, f64::max);
    (secs, top)
}

/// `1.23s`, `950ms`, `12.5us`, `0` as seconds.
fn duration_secs(s: &str) -> f64 {
    for (unit, scale) in [
        ("ms", 1e-3),
        ("us", 1e-6),
        ("ns", 1e-9),
        ("s", 1.0),
        ("min", 60.0),
    ] {
        if let Some(n) = s.strip_suffix(unit) {
            return n.parse::<f64>().unwrap_or(0.0) * scale;
        }
    }
    s.parse().unwrap_or(0.0)
}

/// The bar: CPU burnt in `spin_cpu` for 5 s, then 10 s of something else: the last 30 s
/// show about 5 s of it, the last 5 s almost none. A live 99 Hz profile overlaps the burn
/// (the sampler runs faster for it; the recorder thins back to 19 Hz) and answers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_minutes_show_cpu_burnt_before_and_not_after() {
    let (_serial, addr, shutdown) = server(CpuRecorder::new(Duration::from_secs(120))).await;
    let burnt = Arc::new(AtomicU64::new(0));
    let b = burnt.clone();
    let burner = std::thread::Builder::new()
        .name("spinner".into())
        .spawn(move || {
            // 5 s of CPU, or what 15 s of wall time give on a busy machine.
            let start = thread_cpu();
            let until = Instant::now() + Duration::from_secs(15);
            while Instant::now() < until && thread_cpu() - start < Duration::from_secs(5) {
                std::hint::black_box(spin_cpu(200_000));
            }
            b.store((thread_cpu() - start).as_nanos() as u64, Ordering::Relaxed);
        })
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let live = get(&format!(
        "http://{addr}/debug/pprof/profile?seconds=3&frequency=99&format=folded"
    ))
    .await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.text());
    assert!(live.text().contains("spin_cpu"), "{}", live.text());
    tokio::task::spawn_blocking(move || burner.join().unwrap())
        .await
        .unwrap();
    let burnt = burnt.load(Ordering::Relaxed) as f64 / 1e9;
    // Something else: sleep, and ask for the index now and then.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let _ = get(&format!("http://{addr}/debug/pprof/")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let asked = Instant::now();
    let (seen, top) = cum_seconds(
        format!("http://{addr}/debug/pprof/profile?since=30"),
        "spin_cpu",
    )
    .await;
    let took = asked.elapsed();
    eprintln!("spin_cpu burnt {burnt:.2} s; the last 30 s show {seen:.2} s ({took:?})");
    assert!(
        (0.8..=1.2).contains(&(seen / burnt)),
        "burnt {burnt:.2} s, the recorder shows {seen:.2} s:\n{top}"
    );
    let (recent, top) = cum_seconds(
        format!("http://{addr}/debug/pprof/profile?since=5"),
        "spin_cpu",
    )
    .await;
    eprintln!("the last 5 s show {recent:.2} s");
    assert!(
        recent < 0.05 * burnt,
        "the last 5 s show {recent:.2} s:\n{top}"
    );
    stop(addr, &shutdown).await;
}

/// Asking for more than is kept answers what is kept, and says so; `start`/`end` pick a
/// stretch inside; bad values are Go-style 400s naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_kept_says_so_and_bad_values_are_400s() {
    let rec = CpuRecorder::new(Duration::from_secs(2)).with_bucket(Duration::from_millis(100));
    let (_serial, addr, shutdown) = server(rec).await;
    let on = Arc::new(AtomicBool::new(true));
    let flag = on.clone();
    // Under labels: a profile of the past carries them as a live one does.
    let burner = std::thread::spawn(move || {
        diag::labels::with(diag::labels::LabelSet::new([("job", "spinner")]), || {
            while flag.load(Ordering::Relaxed) {
                std::hint::black_box(spin_cpu(100_000));
            }
        })
    });
    tokio::time::sleep(Duration::from_secs(4)).await;

    let r = get(&format!("http://{addr}/debug/pprof/profile?since=60")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let short = r.header("x-diag-recorder-short");
    assert!(short.starts_with("asked from "), "{:?}", r.headers);
    assert!(short.contains("kept from"), "{short}");
    let mut proto = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_end(&mut proto)
        .unwrap();
    let comment = String::from_utf8_lossy(&proto);
    assert!(
        comment.contains("from the CPU recorder: asked from")
            && comment.contains("keeps only from"),
        "no word of it in the profile's comment"
    );
    // What is kept spans about 2 s (buckets of 100 ms), not 60 (nor the 4 s it ran).
    let recorded = r.header("x-diag-recorded");
    let secs_of_day = |t: &str| -> i64 {
        let hms = t.split_whitespace().nth(1).unwrap();
        hms.split(':')
            .map(|v| v.parse::<i64>().unwrap())
            .fold(0, |a, v| a * 60 + v)
    };
    let (from, to) = recorded.split_once(" to ").unwrap();
    let span = (secs_of_day(to) - secs_of_day(from)).rem_euclid(86_400);
    assert!((1..=3).contains(&span), "recorded {recorded}");

    let r = get(&format!(
        "http://{addr}/debug/pprof/profile?start=-2&end=-1&format=folded"
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("spin_cpu"), "{}", r.text());
    assert!(r.header("x-diag-recorder-short").is_empty());
    assert!(r.header("x-diag-recorded").contains(" to "));

    let r = get(&format!(
        "http://{addr}/debug/pprof/profile?since=30&format=folded&tagroot=job"
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.text()
            .lines()
            .any(|l| l.starts_with("job=spinner;") && l.contains("spin_cpu")),
        "{}",
        r.text()
    );
    let tags = go_pprof_async(vec![
        "-tags".into(),
        format!("http://{addr}/debug/pprof/profile?since=30"),
    ])
    .await;
    assert!(
        tags.contains("job: Total") && tags.contains("spinner"),
        "{tags}"
    );

    let r = get(&format!(
        "http://{addr}/debug/pprof/profile?since=30&format=svg"
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("spin_cpu"));

    for (query, expect) in [
        (
            "since=0",
            "invalid value for \"since\": \"0\"; allowed: an integer from 1 to",
        ),
        ("since=soon", "invalid value for \"since\": \"soon\""),
        ("since=30&seconds=5", "invalid value for \"seconds\": \"5\""),
        ("since=30&start=-60", "not both"),
        (
            "start=yesterday",
            "invalid value for \"start\": \"yesterday\"; allowed: a Unix time",
        ),
        (
            "start=-600&end=-300",
            "invalid value for \"end\": \"-300\"; allowed: a time after",
        ),
        (
            "start=-5&end=-10",
            "invalid value for \"end\": \"-10\"; allowed: a time later than start",
        ),
    ] {
        let r = get(&format!("http://{addr}/debug/pprof/profile?{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text());
        assert_eq!(r.header("x-go-pprof"), "1", "{query}");
        assert!(
            r.header("content-type").starts_with("text/plain"),
            "{query}"
        );
        assert!(r.text().contains(expect), "{query}: {}", r.text());
    }
    on.store(false, Ordering::Relaxed);
    burner.join().unwrap();

    // A router without the recorder says it is off, even while another one records.
    let plain = testkit::serve(diag::router(Config::default())).await;
    let r = get(&format!("http://{plain}/debug/pprof/profile?since=30")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("CPU recorder is off"), "{}", r.text());

    stop(addr, &shutdown).await;
    // Stopped, the recorder answers nothing; live profiles go on.
    let r = get(&format!("http://{addr}/debug/pprof/profile?since=30")).await;
    assert_ne!(r.status, StatusCode::OK);
}

/// One frame of a deep stack whose path is chosen by the bits of `path`: every call of
/// [`deep`] with other bits is a stack of its own.
#[inline(never)]
fn deep(level: u32, path: u64, work: u64) -> u64 {
    if level == 0 {
        return spin_cpu(work);
    }
    if path & 1 == 0 {
        left(level - 1, path >> 1, work)
    } else {
        right(level - 1, path >> 1, work)
    }
}

#[inline(never)]
fn left(level: u32, path: u64, work: u64) -> u64 {
    std::hint::black_box(deep(level, path, work)).wrapping_add(1)
}

#[inline(never)]
fn right(level: u32, path: u64, work: u64) -> u64 {
    std::hint::black_box(deep(level, path, work)).wrapping_add(2)
}

/// `threads` threads burning on distinct stacks of at least 64 frames (the worst case
/// for the stack table) until the flag is cleared.
fn distinct_stacks(threads: usize) -> Arc<AtomicBool> {
    let on = Arc::new(AtomicBool::new(true));
    for t in 0..threads {
        let on = on.clone();
        std::thread::Builder::new()
            .name(format!("deep-{t}"))
            .spawn(move || {
                let mut n: u64 = t as u64 + 1;
                while on.load(Ordering::Relaxed) {
                    n = n.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
                    std::hint::black_box(deep(32, n, 20_000));
                }
            })
            .unwrap();
    }
    on
}

/// Ten minutes of distinct 64-frame stacks: the stack table's cap holds the recorder's
/// memory. The recorder runs at 1000 Hz (the kernel delivers ~250 per CPU-second) so that
/// the samples of ten minutes at 19 Hz on two busy threads (22,800, more than the cap's
/// ~7,700 stacks of this depth) come within a minute or two; the test goes on until the
/// table is at its cap, then 10 s more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_deep_stacks_stay_within_the_memory_bound() {
    // Read with no other test of this binary running (their threads and buffers are
    // the process's too).
    let serial = SERIAL.lock().await;
    let before_mib = testkit::mem::anon_mib(std::process::id());
    let rec = CpuRecorder::new(Duration::from_secs(600)).with_frequency(1000);
    let (_serial, addr, shutdown) = server_holding(serial, rec).await;
    let sampler = testkit::mem::Sampler::start(std::process::id(), Duration::from_millis(100));
    let on = distinct_stacks(4);
    let mut accounted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut full_since: Option<Instant> = None;
    while Instant::now() < deadline
        && full_since.is_none_or(|t| t.elapsed() < Duration::from_secs(10))
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(line) = recorder_line(addr).await {
            if line.2 >= 5.3 && full_since.is_none() {
                full_since = Some(Instant::now());
            }
            accounted.push(line);
        }
    }
    on.store(false, Ordering::Relaxed);
    let readings = sampler.finish();
    let peak = testkit::mem::peak(&readings) - before_mib;
    let last = accounted.last().copied().unwrap();
    eprintln!(
        "anonymous memory {before_mib:.1} MiB before, peak +{peak:.1} MiB; recorder: {} stacks, {:.1} MiB accounted",
        last.1, last.2
    );
    // The cap was reached (the load was the worst case), and held.
    assert!(
        last.1 > 6_000 && last.2 >= 5.3,
        "only {} stacks, {:.1} MiB: the load was too light",
        last.1,
        last.2
    );
    assert!(last.2 <= 8.0, "{:.1} MiB accounted", last.2);
    assert!(peak <= 12.0, "peak +{peak:.1} MiB");
    // The stacks are there to read (the profile itself symbolizes, which costs more).
    let r = get(&format!(
        "http://{addr}/debug/pprof/profile?since=600&format=folded"
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("deep"), "no deep stacks");
    stop(addr, &shutdown).await;
}

/// With buckets of 20 ms kept for 1 s, 20 s of distinct stacks are 20 generations of
/// everything kept: the table and the process's memory stay level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_buckets_are_dropped_and_memory_does_not_grow_with_uptime() {
    let rec = CpuRecorder::new(Duration::from_secs(1))
        .with_frequency(250)
        .with_bucket(Duration::from_millis(20));
    let (_serial, addr, shutdown) = server(rec).await;
    let on = distinct_stacks(2);
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let line = recorder_line(addr).await.unwrap();
        seen.push((
            start.elapsed(),
            line,
            testkit::mem::anon_mib(std::process::id()),
        ));
    }
    on.store(false, Ordering::Relaxed);
    for (at, (back, stacks, mib), anon) in &seen {
        eprintln!(
            "{at:.1?}: back {back} s, {stacks} stacks, {mib:.2} MiB accounted, {anon:.1} MiB anon"
        );
    }
    let median = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let (early, late): (Vec<_>, Vec<_>) = seen
        .iter()
        .partition(|(at, _, _)| *at < Duration::from_secs(10));
    // One second at 250 Hz on two threads is at most ~500 samples: the table holds about
    // that many stacks, not twenty seconds' worth.
    for (_, (back, stacks, _), _) in &seen {
        assert!(*back <= 2, "reaches back {back} s with 1 s kept");
        assert!(*stacks <= 1500, "{stacks} stacks held with 1 s kept");
    }
    let mut e: Vec<f64> = early.iter().skip(4).map(|(_, _, a)| *a).collect();
    let mut l: Vec<f64> = late.iter().map(|(_, _, a)| *a).collect();
    let (e, l) = (median(&mut e), median(&mut l));
    assert!(
        l - e <= 1.0,
        "anonymous memory went from {e:.1} to {l:.1} MiB"
    );
    stop(addr, &shutdown).await;
}

/// A measurement, not a check (run with `--ignored --nocapture`): the `diag-sampler`
/// thread's CPU time with only the recorder at 19 Hz, beside the process's, over 60 s
/// with two threads burning. The samples' own cost is in the burning threads (the
/// handler runs on them): 19 × 2.83 µs per CPU-second (docs/performance.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn measure_the_sampler_threads_cost_at_19_hz() {
    let (_serial, addr, shutdown) = server(CpuRecorder::default()).await;
    let on = distinct_stacks(2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s0, p0) = (
        testkit::sched::named_cpu(std::process::id(), "diag-sampler").as_nanos() as u64,
        process_ticks(),
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (s1, p1) = (
        testkit::sched::named_cpu(std::process::id(), "diag-sampler").as_nanos() as u64,
        process_ticks(),
    );
    on.store(false, Ordering::Relaxed);
    let sampler_ms = (s1 - s0) as f64 / 1e6;
    let process_ms = (p1 - p0) as f64 * 10.0;
    eprintln!(
        "diag-sampler: {sampler_ms:.1} ms of CPU over 60 s ({:.3} ms per second), the process {process_ms:.0} ms: {:.3} %",
        sampler_ms / 60.0,
        sampler_ms * 100.0 / process_ms.max(1.0)
    );
    stop(addr, &shutdown).await;
}

/// utime + stime of this process, in ticks.
fn process_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
