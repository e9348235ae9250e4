//! What jemalloc's heap sampling costs the demo's `/churn`, measured in one process with
//! sampling switched on and off in turn (jemalloc's `prof.active`), so that what differs
//! between two processes (where their threads and pages land, which on this VM put single
//! rounds of overhead.py's two-process A/B into modes 25 % apart) falls out of the ratio:
//!
//!     cargo run --release -p benches --example heap_ab                 # about 5 minutes
//!     cargo run --release -p benches --example heap_ab -- --pool 8     # blocking pool of 8
//!     _RJEM_MALLOC_CONF=lg_prof_sample:20 cargo run --release -p benches --example heap_ab
//!     cargo run --release -p benches --example heap_ab -- --unwinder none   # jemalloc's own cost
//!
//! The demo's application as its binary runs it: its router with diag merged in (diag's
//! frame-pointer walker unwinds jemalloc's samples, the CPU recorder runs at 19 Hz), its
//! request-id and trace layers, its per-request log line (formatted, written to a sink),
//! jemalloc's settings from the demo's `main.rs` (the environment's `_RJEM_MALLOC_CONF`
//! overrides them, as for the demo), tokio's default runtime. `wrk -t1 -c32` loads
//! `/churn?n=200&bytes=4096` for the whole run. Each round measures two short windows
//! (`--window`, 0.1 s), sampling active and inactive in an order drawn at random, each
//! after a settling pause (`--settle`, 0.02 s): the process's CPU time per request answered
//! (`CLOCK_PROCESS_CPUTIME_ID`, so wrk is not in it) and jemalloc's samples per request.
//! Windows this short put both of a round's windows in the same state of the machine.
//!
//! The samples are counted from jemalloc's statistics: a sampled small object gets an
//! extent of its own and is counted in its size class's bin, whereas the objects thread
//! caches hand out are counted only when a cache is refilled, which `/churn`'s 4 KiB blocks,
//! freed at once, hardly need. Prints each round, then the median of the ratios
//! active/inactive with [min, max] and a 95 % bootstrap interval of the median, and what
//! one sample costs. Fails when jemalloc's sampling cannot be switched (no `prof:true`),
//! when a window answers nothing, or when on `/churn`'s default
//! path the counts show that the switch did not take: fewer than half the samples a request
//! that jemalloc's rate gives active (800 KiB a request at one sample per 512 KiB is 1.56),
//! or more than 0.05 inactive.
//! Traffic goes to 127.0.0.1 only, bounded in time.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The same allocator and settings as the demo's binary (demo/src/main.rs).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 84] =
    b"prof:true,prof_active:true,lg_prof_sample:19,prof_accum:true,background_thread:true\0";

/// Responses the app has finished, counted by the outermost layer.
static ANSWERED: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, PartialEq)]
enum Unwinder {
    /// diag's frame-pointer walker, as the demo runs.
    Diag,
    /// jemalloc's own, libgcc's `_Unwind_Backtrace` (the demo's `--heap-libgcc-unwinder`).
    Libgcc,
    /// No unwinding: every sample gets one fixed frame, so what a sample costs is
    /// jemalloc's own work alone (with one stack to hash and look up: a floor).
    None,
}

impl Unwinder {
    fn name(self) -> &'static str {
        match self {
            Unwinder::Diag => "diag's walker",
            Unwinder::Libgcc => "libgcc's unwinder",
            Unwinder::None => "no unwinder (one fixed frame)",
        }
    }
}

/// jemalloc's `prof_backtrace_hook_t` that unwinds nothing: one frame, always the same.
unsafe extern "C" fn one_frame(
    vec: *mut *mut std::ffi::c_void,
    len: *mut std::ffi::c_uint,
    max_len: std::ffi::c_uint,
) {
    // SAFETY: jemalloc passes room for max_len frames and a valid len.
    unsafe {
        if max_len > 0 {
            *vec = one_frame as *mut std::ffi::c_void;
            *len = 1;
        } else {
            *len = 0;
        }
    }
}

type Hook =
    unsafe extern "C" fn(*mut *mut std::ffi::c_void, *mut std::ffi::c_uint, std::ffi::c_uint);

fn install_one_frame() -> Result<(), String> {
    // SAFETY: experimental.hooks.prof_backtrace takes a prof_backtrace_hook_t, a nullable
    // function pointer of this signature.
    unsafe {
        tikv_jemalloc_ctl::raw::write::<Option<Hook>>(
            b"experimental.hooks.prof_backtrace\0",
            Some(one_frame),
        )
    }
    .map_err(|e| format!("writing experimental.hooks.prof_backtrace: {e}"))
}

struct Opts {
    rounds: usize,
    window: f64,
    settle: f64,
    connections: u32,
    path: String,
    /// The runtime's `max_blocking_threads`; tokio's default (512) when None.
    pool: Option<usize>,
    /// Who unwinds jemalloc's samples.
    unwinder: Unwinder,
    /// Whether the run checks that sampling took on `/churn` (its blocks are 4 KiB).
    check_samples: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        rounds: 1000,
        window: 0.1,
        settle: 0.02,
        connections: 32,
        path: "/churn?n=200&bytes=4096".to_owned(),
        pool: None,
        unwinder: Unwinder::Diag,
        check_samples: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => o.rounds = number(&flag, &value()?, 1.0, 10_000.0)? as usize,
            "--window" => o.window = number(&flag, &value()?, 0.05, 60.0)?,
            "--settle" => o.settle = number(&flag, &value()?, 0.0, 10.0)?,
            "--connections" => o.connections = number(&flag, &value()?, 1.0, 1024.0)? as u32,
            "--unwinder" => {
                o.unwinder = match value()?.as_str() {
                    "diag" => Unwinder::Diag,
                    "libgcc" => Unwinder::Libgcc,
                    "none" => Unwinder::None,
                    v => return Err(format!("--unwinder {v:?}: diag, libgcc or none")),
                }
            }
            "--pool" => o.pool = Some(number(&flag, &value()?, 1.0, 1024.0)? as usize),
            "--path" => {
                o.path = value()?;
                if !o.path.starts_with('/') {
                    return Err(format!("--path {:?}: a path starting with /", o.path));
                }
                o.check_samples = o.path == "/churn?n=200&bytes=4096";
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; the flags are --rounds N, --window S, \
                     --settle S, --connections N, --pool N, --unwinder diag|libgcc|none, --path P"
                ));
            }
        }
    }
    Ok(o)
}

fn number(flag: &str, s: &str, lo: f64, hi: f64) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("{flag} {s:?}: a number from {lo} to {hi}")),
    }
}

fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The index of jemalloc's small size class of `size` bytes.
fn bin_of(size: usize) -> Result<usize, String> {
    use tikv_jemalloc_ctl::raw;
    // SAFETY: arenas.nbins reads as unsigned, arenas.bin.<i>.size as size_t.
    let bins = unsafe { raw::read::<u32>(b"arenas.nbins\0") }.map_err(|e| e.to_string())?;
    (0..bins as usize)
        .find(|i| {
            let name = format!("arenas.bin.{i}.size\0");
            // SAFETY: as above.
            unsafe { raw::read::<usize>(name.as_bytes()) }.ok() == Some(size)
        })
        .ok_or_else(|| format!("jemalloc has no small size class of {size} bytes"))
}

/// Objects of one small size class allocated from its bins so far, all arenas: on
/// `/churn`, the samples (see the top of this file).
fn bin_allocations(name: &[u8]) -> u64 {
    use tikv_jemalloc_ctl::raw;
    // SAFETY: "epoch" is a u64 written to refresh the statistics; the counter reads as u64.
    unsafe {
        let _ = raw::update(b"epoch\0", 1u64);
        raw::read::<u64>(name).unwrap_or(0)
    }
}

fn set_sampling(active: bool) -> Result<(), String> {
    // SAFETY: prof.active is a bool.
    unsafe { tikv_jemalloc_ctl::raw::write(b"prof.active\0", active) }.map_err(|e| {
        format!("cannot set prof.active ({e}): jemalloc needs prof:true in its settings")
    })
}

/// One window's reading: CPU nanoseconds, requests answered, samples taken.
#[derive(Clone, Copy)]
struct Reading {
    cpu: u64,
    answered: u64,
    samples: u64,
}

fn read(counter: &[u8]) -> Reading {
    Reading {
        cpu: process_cpu_ns(),
        answered: ANSWERED.load(Ordering::Relaxed),
        samples: bin_allocations(counter),
    }
}

/// A window's µs of CPU per request and samples per request.
fn window(active: bool, o: &Opts, counter: &[u8]) -> Result<(f64, f64), String> {
    set_sampling(active)?;
    std::thread::sleep(Duration::from_secs_f64(o.settle));
    let a = read(counter);
    std::thread::sleep(Duration::from_secs_f64(o.window));
    let b = read(counter);
    let n = b.answered - a.answered;
    if n == 0 {
        return Err(format!("a {} s window answered no request", o.window));
    }
    Ok((
        (b.cpu - a.cpu) as f64 / 1000.0 / n as f64,
        (b.samples - a.samples) as f64 / n as f64,
    ))
}

/// A small deterministic generator (xorshift), so that reruns draw the same orders.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// A 95 % bootstrap interval of the median of `v` (fixed seed: reruns agree).
fn interval(v: &[f64]) -> (f64, f64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut meds: Vec<f64> = (0..4000)
        .map(|_| {
            let pick: Vec<f64> = (0..v.len())
                .map(|_| v[(rng.next() % v.len() as u64) as usize])
                .collect();
            median(&pick)
        })
        .collect();
    meds.sort_by(f64::total_cmp);
    (meds[100], meds[3899])
}

async fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    let stop = diag::Shutdown::new();
    let _ = diag::conn::serve(listener, app, diag::conn::ConnLimits::default(), stop).await;
}

/// The load, stopped when dropped (also when a panic unwinds past it).
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wrk(url: &str, o: &Opts) -> Result<Load, String> {
    let seconds = (o.rounds as f64 * 2.0 * (o.window + o.settle) + 30.0).ceil() as u64;
    Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", o.connections),
            &format!("-d{seconds}s"),
            url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Load)
        .map_err(|e| format!("cannot start wrk ({e}); scripts/test.sh installs it"))
}

/// The demo's application on a runtime of its own, served on a free port of 127.0.0.1,
/// with the unwinder `o` asks for in place. The runtime must outlive the run.
fn start(o: &Opts) -> Result<(tokio::runtime::Runtime, std::net::SocketAddr), String> {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(diag::trace::layer())
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = o.pool {
        rt.max_blocking_threads(n);
    }
    let rt = rt.build().map_err(|e| format!("tokio runtime: {e}"))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Built here, not in the runtime: diag puts its walker in place (or jemalloc's back)
    // as the router is built, and the one-frame hook must come after it.
    let cfg = diag::Config::default()
        .with_heap_frame_pointers(o.unwinder == Unwinder::Diag)
        .with_cpu_recorder(diag::config::CpuRecorder::new(Duration::from_secs(600)));
    let state = demo::AppState::new();
    state.set_ready(true);
    let app = {
        let _in_runtime = rt.enter();
        demo::app(state, Some(cfg)).layer(axum::middleware::map_response(
            |res: axum::response::Response| async move {
                ANSWERED.fetch_add(1, Ordering::Relaxed);
                res
            },
        ))
    };
    if o.unwinder == Unwinder::None {
        install_one_frame()?;
    }
    rt.spawn(serve(listener, app));
    Ok((rt, addr))
}

/// Each round's figures: µs per request and samples per request, active and inactive.
#[derive(Default)]
struct Rounds {
    on_us: Vec<f64>,
    off_us: Vec<f64>,
    on_samples: Vec<f64>,
    off_samples: Vec<f64>,
}

impl Rounds {
    /// Measures `o.rounds` rounds under the load already running, printing each.
    fn measure(o: &Opts, counter: &[u8]) -> Result<Self, String> {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut rounds = Self::default();
        for r in 0..o.rounds {
            let active_first = rng.next() % 2 == 0;
            let round = |e: String| format!("round {r}: {e}");
            let x = window(active_first, o, counter).map_err(round)?;
            let y = window(!active_first, o, counter).map_err(round)?;
            let ((on, son), (off, soff)) = if active_first { (x, y) } else { (y, x) };
            let order = if active_first {
                "on first"
            } else {
                "off first"
            };
            println!(
                "round {r:3} ({order}): active {on:7.2} µs/req {son:5.2} samples/req, \
                 inactive {off:7.2} µs/req {soff:5.2}, ratio {:.4}",
                on / off
            );
            rounds.on_us.push(on);
            rounds.off_us.push(off);
            rounds.on_samples.push(son);
            rounds.off_samples.push(soff);
        }
        Ok(rounds)
    }

    /// Prints the summary; fails when the sample counts show that the switch did not
    /// take (on `/churn`'s default path, at one sample per `2^lg` bytes).
    fn report(&self, o: &Opts, lg: usize) -> Result<(), String> {
        let ratios: Vec<f64> = self
            .on_us
            .iter()
            .zip(&self.off_us)
            .map(|(a, b)| a / b)
            .collect();
        let (lo, hi) = interval(&ratios);
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "active / inactive: median {:.4} [{min:.4}, {max:.4}], median's 95 % interval \
             [{lo:.4}, {hi:.4}], over {} rounds",
            median(&ratios),
            ratios.len()
        );
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (on_s, off_s) = (median(&self.on_samples), median(&self.off_samples));
        println!(
            "µs per request: active {:.2}, inactive {:.2} (medians; the ratio of their means \
             {:.4}); samples per request: active {on_s:.3}, inactive {off_s:.3}",
            median(&self.on_us),
            median(&self.off_us),
            mean(&self.on_us) / mean(&self.off_us),
        );
        let cost: Vec<f64> = (0..ratios.len())
            .filter(|&i| self.on_samples[i] > self.off_samples[i])
            .map(|i| (self.on_us[i] - self.off_us[i]) / (self.on_samples[i] - self.off_samples[i]))
            .collect();
        if !cost.is_empty() {
            println!(
                "one sample costs {:.3} µs (median of the rounds)",
                median(&cost)
            );
        }
        // /churn's default request allocates 200 blocks of 4 KiB.
        let expected = (200 * 4096) as f64 / (1u64 << lg) as f64;
        if o.check_samples && (on_s < expected / 2.0 || off_s > 0.05) {
            return Err(format!(
                "the switch did not take: {on_s:.3} samples a request active, {off_s:.3} \
                 inactive (expected about {expected:.2} and 0)"
            ));
        }
        Ok(())
    }
}

fn run(o: &Opts) -> Result<(), String> {
    let (_rt, addr) = start(o)?;
    let url = format!("http://{addr}{}", o.path);
    let counter = format!("stats.arenas.4096.bins.{}.nmalloc\0", bin_of(4096)?).into_bytes();
    // SAFETY: opt.lg_prof_sample reads as size_t.
    let lg = unsafe { tikv_jemalloc_ctl::raw::read::<usize>(b"opt.lg_prof_sample\0") }
        .map_err(|e| format!("opt.lg_prof_sample: {e}"))?;
    println!(
        "heap_ab: {url}, {} rounds of 2 × {} s, lg_prof_sample:{lg}, {}, blocking pool {}",
        o.rounds,
        o.window,
        o.unwinder.name(),
        o.pool
            .map_or_else(|| "512 (tokio's default)".to_owned(), |n| n.to_string())
    );
    set_sampling(true)?;
    let load = wrk(&url, o)?;
    // Let the blocking pool grow to what the load makes of it before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let rounds = Rounds::measure(o, &counter);
    drop(load);
    set_sampling(true)?;
    rounds?.report(o, lg)
}

fn main() -> ExitCode {
    match parse().and_then(|o| run(&o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heap_ab: {e}");
            ExitCode::FAILURE
        }
    }
}
