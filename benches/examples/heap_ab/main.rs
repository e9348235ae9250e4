//! What jemalloc's heap sampling costs the demo's `/churn`, measured in one process with
//! sampling switched on and off in turn (jemalloc's `prof.active`), so that what differs
//! between two processes (where their threads and pages land, which on this VM put single
//! rounds of overhead.py's two-process A/B into modes 25 % apart) falls out of the ratio:
//!
//!     cargo run --release -p benches --example heap_ab                      # about 4 minutes
//!     cargo run --release -p benches --example heap_ab -- --unwinder none   # jemalloc's own cost
//!     cargo run --release -p benches --example heap_ab -- --unwinder libgcc
//!     cargo run --release -p benches --example heap_ab -- --pool 8          # blocking pool of 8
//!     _RJEM_MALLOC_CONF=lg_prof_sample:20 cargo run --release -p benches --example heap_ab
//!
//! The demo's application as its binary runs it: its router with diag merged in (diag's
//! frame-pointer walker unwinds jemalloc's samples, the CPU recorder runs at 19 Hz), its
//! request-id and trace layers, its per-request log line (formatted, written to a sink),
//! the demo's jemalloc settings (`demo::MALLOC_CONF`; the environment's `_RJEM_MALLOC_CONF`
//! overrides them, as for the demo), tokio's default runtime. `wrk -t1 -c32` loads
//! `/churn?n=200&bytes=4096` for the whole run. Each round measures two short windows
//! (`--window`, 0.1 s), sampling active and inactive in an order drawn at random, each
//! after a settling pause (`--settle`, 0.02 s): the process's CPU time per request answered
//! (`CLOCK_PROCESS_CPUTIME_ID`, so wrk is not in it) and jemalloc's samples per request
//! ([`jemalloc::Samples`]). Windows this short put both of a round's windows in the same
//! state of the machine.
//!
//! `--unwinder none` puts a hook in jemalloc's place that unwinds nothing (one fixed
//! frame a sample): what remains is jemalloc's own work for a sample, a floor for any
//! unwinder. `--unwinder libgcc` leaves jemalloc's own. The run checks that the hook in
//! place is the one named.
//!
//! Prints each round, then the median of the ratios active/inactive with [min, max] and a
//! 95 % bootstrap interval of the median, and what one sample costs. Fails when jemalloc's
//! sampling cannot be switched (no `prof:true`), when the hook is not the one asked for
//! (diag's probe refused its walker), when a window answers nothing, or when the counts
//! show that the switch did not take: active, fewer than half the samples a request that
//! jemalloc's rate gives (800 KiB a request at one sample per 512 KiB is 1.56), or more
//! than 0.05 inactive. The count sees samples of objects up to 4 KiB only, so with another
//! `--path` the run prints the samples it counted but neither checks them nor prints a
//! cost per sample. Traffic goes to 127.0.0.1 only, bounded in time.
#![allow(missing_docs)]

mod jemalloc;

use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use benches::{XorShift, median, median_interval, process_cpu_ns};

/// The same allocator and settings as the demo's binary (demo/src/main.rs).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 84] = demo::MALLOC_CONF;

/// Responses the app has finished, counted by the outermost layer.
static ANSWERED: AtomicU64 = AtomicU64::new(0);

/// `/churn`'s path as the figures in docs/performance.md were measured.
const CHURN: &str = "/churn?n=200&bytes=4096";

/// Who unwinds jemalloc's samples.
#[derive(Clone, Copy, PartialEq)]
enum Unwinder {
    /// diag's frame-pointer walker, as the demo runs.
    Diag,
    /// jemalloc's own, libgcc's `_Unwind_Backtrace` (the demo's `--heap-libgcc-unwinder`).
    Libgcc,
    /// No unwinding: every sample gets one fixed frame.
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

struct Opts {
    rounds: usize,
    window: f64,
    settle: f64,
    connections: usize,
    path: String,
    /// The runtime's `max_blocking_threads`; tokio's default (512) when None.
    pool: Option<usize>,
    unwinder: Unwinder,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        rounds: 1000,
        window: 0.1,
        settle: 0.02,
        connections: 32,
        path: CHURN.to_owned(),
        pool: None,
        unwinder: Unwinder::Diag,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => o.rounds = whole(&flag, &value()?, 1, 10_000)?,
            "--window" => o.window = seconds(&flag, &value()?, 0.05, 60.0)?,
            "--settle" => o.settle = seconds(&flag, &value()?, 0.0, 10.0)?,
            "--connections" => o.connections = whole(&flag, &value()?, 1, 1024)?,
            "--pool" => o.pool = Some(whole(&flag, &value()?, 1, 1024)?),
            "--unwinder" => {
                o.unwinder = match value()?.as_str() {
                    "diag" => Unwinder::Diag,
                    "libgcc" => Unwinder::Libgcc,
                    "none" => Unwinder::None,
                    v => return Err(format!("--unwinder {v:?}: diag, libgcc or none")),
                }
            }
            "--path" => {
                o.path = value()?;
                if !o.path.starts_with('/') {
                    return Err(format!("--path {:?}: a path starting with /", o.path));
                }
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; the flags are --rounds N, --window S, \
                     --settle S, --connections N, --pool N, --unwinder diag|libgcc|none, \
                     --path P"
                ));
            }
        }
    }
    Ok(o)
}

fn whole(flag: &str, s: &str, lo: usize, hi: usize) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("{flag} {s:?}: a whole number from {lo} to {hi}")),
    }
}

fn seconds(flag: &str, s: &str, lo: f64, hi: f64) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("{flag} {s:?}: seconds from {lo} to {hi}")),
    }
}

/// One reading: CPU nanoseconds, requests answered, samples taken.
struct Reading {
    cpu: u64,
    answered: u64,
    samples: u64,
}

impl Reading {
    fn now(samples: &jemalloc::Samples) -> Result<Self, String> {
        Ok(Self {
            cpu: process_cpu_ns(),
            answered: ANSWERED.load(Ordering::Relaxed),
            samples: samples.read()?,
        })
    }
}

/// A window's µs of CPU per request and samples per request.
fn window(active: bool, o: &Opts, samples: &jemalloc::Samples) -> Result<(f64, f64), String> {
    jemalloc::set_sampling(active)?;
    std::thread::sleep(Duration::from_secs_f64(o.settle));
    let a = Reading::now(samples)?;
    std::thread::sleep(Duration::from_secs_f64(o.window));
    let b = Reading::now(samples)?;
    let n = b.answered.saturating_sub(a.answered);
    if n == 0 {
        return Err(format!("a {} s window answered no request", o.window));
    }
    let (Some(cpu), Some(taken)) = (b.cpu.checked_sub(a.cpu), b.samples.checked_sub(a.samples))
    else {
        return Err("a counter went backwards".to_owned());
    };
    Ok((cpu as f64 / 1000.0 / n as f64, taken as f64 / n as f64))
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
    let connections = format!("-c{}", o.connections);
    let duration = format!("-d{seconds}s");
    Command::new("wrk")
        .args(["-t1", &connections, &duration, url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Load)
        .map_err(|e| format!("cannot start wrk ({e}); scripts/test.sh installs it"))
}

/// The demo's application on a runtime of its own, served on a free port of 127.0.0.1,
/// with the unwinder `o` asks for in jemalloc's hook (checked). The runtime must outlive
/// the run.
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
    // diag probes its walker, with sampling active, and puts it in place (or jemalloc's
    // own back) as the router is built; the one-frame hook comes after that.
    jemalloc::set_sampling(true)?;
    let jemallocs = jemalloc::hook()?;
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
    let wanted = match o.unwinder {
        Unwinder::None => Some(jemalloc::install_one_frame()?),
        Unwinder::Libgcc => Some(jemallocs),
        Unwinder::Diag => None,
    };
    let now = jemalloc::hook()?;
    let right = match wanted {
        Some(hook) => now == hook,
        None => now != jemallocs && now != 0,
    };
    if !right {
        return Err(format!(
            "jemalloc's hook is {now:#x}, not {} (jemalloc's own: {jemallocs:#x})",
            o.unwinder.name()
        ));
    }
    rt.spawn(async move {
        let stop = diag::Shutdown::new();
        let _ = diag::conn::serve(listener, app, diag::conn::ConnLimits::default(), stop).await;
    });
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
    fn measure(o: &Opts, samples: &jemalloc::Samples) -> Result<Self, String> {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut rounds = Self::default();
        for r in 0..o.rounds {
            let active_first = rng.next_u64() % 2 == 0;
            let round = |e: String| format!("round {r}: {e}");
            let x = window(active_first, o, samples).map_err(round)?;
            let y = window(!active_first, o, samples).map_err(round)?;
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
    /// take (on `/churn`'s path, at one sample per `2^lg` bytes).
    fn report(&self, o: &Opts, lg: usize) -> Result<(), String> {
        let ratios: Vec<f64> = self
            .on_us
            .iter()
            .zip(&self.off_us)
            .map(|(a, b)| a / b)
            .collect();
        let (lo, hi) = median_interval(&ratios);
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
        if o.path == CHURN && !cost.is_empty() {
            println!(
                "one sample costs {:.3} µs (median of the rounds)",
                median(&cost)
            );
        }
        // /churn's request allocates 200 blocks of 4 KiB.
        let expected = (200 * 4096) as f64 / (1u64 << lg) as f64;
        if o.path == CHURN && (on_s < expected / 2.0 || off_s > 0.05) {
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
    let samples = jemalloc::Samples::new()?;
    let lg = jemalloc::lg_prof_sample()?;
    println!(
        "heap_ab: {url}, {} rounds of 2 × {} s, lg_prof_sample:{lg}, {}, blocking pool {}",
        o.rounds,
        o.window,
        o.unwinder.name(),
        o.pool
            .map_or_else(|| "512 (tokio's default)".to_owned(), |n| n.to_string())
    );
    let load = wrk(&url, o)?;
    // Let the blocking pool grow to what the load makes of it before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let rounds = Rounds::measure(o, &samples);
    drop(load);
    jemalloc::set_sampling(true)?;
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
