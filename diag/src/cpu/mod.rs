//! CPU profiles: `/profile`, `/flamegraph` and Go's `/symbol` protocol.

mod sampler;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use crate::error::ApiError;
use crate::flamegraph;
use crate::params::Params;
use crate::proto::{self, ProfileBuilder};
use crate::state::Diag;
use crate::util::{unix_nanos, utc};

use crate::symbols::{self, Resolved};
use sampler::{JoinError, Lease, Mark, Stack};

/// A CPU profile's length unless `seconds` says otherwise (Go's default).
pub(crate) const DEFAULT_SECONDS: u64 = 30;
/// Samples per second of CPU time unless `frequency` says otherwise (Go's 100, less one so
/// the timer does not beat against periodic work).
pub(crate) const DEFAULT_FREQUENCY: u32 = 99;
/// The highest `frequency` accepted. The kernel delivers CPU-time signals at most about
/// once per tick per CPU; when it delivers well under the rate asked, samples are weighed
/// by the rate actually achieved (see `period_ns`).
pub(crate) const MAX_FREQUENCY: u32 = 1000;

pub(crate) use sampler::running;

/// `GET /profile?seconds=N&frequency=HZ&format=proto|svg|folded`.
pub(crate) async fn profile(State(d): State<Diag>, RawQuery(q): RawQuery) -> Response {
    let params = Params::parse(q.as_deref());
    let format = match params.choice("format", "proto", &["proto", "svg", "folded"]) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    respond(d, params, format, false).await
}

/// `GET /flamegraph?seconds=N&frequency=HZ`: the SVG as a download.
pub(crate) async fn flamegraph(State(d): State<Diag>, RawQuery(q): RawQuery) -> Response {
    respond(d, Params::parse(q.as_deref()), "svg", true).await
}

async fn respond(d: Diag, params: Params, format: &'static str, download: bool) -> Response {
    match run(&d, &params, format).await {
        Ok((body, profile)) => {
            let (ctype, disposition) = match (format, download) {
                ("proto", _) => (
                    "application/octet-stream",
                    Some("attachment; filename=\"profile\""),
                ),
                ("svg", true) => (
                    "image/svg+xml",
                    Some("attachment; filename=\"flamegraph.svg\""),
                ),
                ("svg", false) => ("image/svg+xml", None),
                _ => ("text/plain; charset=utf-8", None),
            };
            let mut res = body.into_response();
            let h = res.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            if let Some(disp) = disposition {
                h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(disp));
            }
            h.insert("x-diag-samples", profile.samples.into());
            if let Ok(v) = HeaderValue::from_str(&format!("{:.1}", profile.achieved_hz())) {
                h.insert("x-diag-sample-rate", v);
            }
            if profile.ended_early {
                h.insert("x-diag-ended-early", HeaderValue::from_static("shutdown"));
            }
            res
        }
        Err(e) => e.into_response(),
    }
}

async fn run(
    d: &Diag,
    params: &Params,
    format: &'static str,
) -> Result<(Vec<u8>, CpuProfile), ApiError> {
    let seconds = d.seconds(params, DEFAULT_SECONDS)?;
    let frequency = params.int_in("frequency", DEFAULT_FREQUENCY, 1, MAX_FREQUENCY)?;
    let _permit = d.heavy()?;
    let capture = capture(d, Duration::from_secs(seconds), frequency).await?;
    tokio::task::spawn_blocking(move || {
        let profile = CpuProfile::resolve(capture);
        let body = match format {
            "proto" => profile.to_proto(),
            "svg" => profile.to_svg(),
            _ => Ok(profile.to_folded().join("\n").into_bytes()),
        };
        body.map(|b| (b, profile))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("building the CPU profile failed: {e}")))?
    .map_err(|e| ApiError::Internal(format!("encoding the CPU profile failed: {e}")))
}

/// The raw samples of one reader's window.
#[derive(Debug)]
struct Capture {
    stacks: Vec<Stack>,
    start: Mark,
    end: Mark,
    frequency: u32,
    ended_early: bool,
}

/// Runs sampler work on the sampler's own thread.
async fn on_sampler<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    sampler::on_sampler_thread(f)
        .await
        .ok_or_else(|| ApiError::Internal("the CPU sampler failed (see the logs)".to_owned()))
}

async fn capture(d: &Diag, window: Duration, frequency: u32) -> Result<Capture, ApiError> {
    let joined = on_sampler(move || Lease::join(frequency, window)).await?;
    let (lease, start_counts) = joined.map_err(|e| match e {
        JoinError::OtherFrequency { running, until } => {
            let left = until
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .as_secs();
            ApiError::Conflict(format!(
                "cpu profiling already in use at frequency={running} Hz until {} ({left} s from now); \
                 ask for frequency={running} to share it, or retry once it ends",
                utc(until)
            ))
        }
        JoinError::Start(msg) => ApiError::Internal(format!(
            "could not start the CPU profiler: {msg}. pprof-rs keeps its samples in a \
             temporary file, created once per process: check that the temp directory ({}) \
             is writable. If it was not when the first profile started, CPU profiling stays \
             unavailable until the process restarts.",
            std::env::temp_dir().display()
        )),
    })?;
    let start = Mark::now();
    let shutdown = d.cfg().shutdown.clone();
    let ended_early = tokio::select! {
        () = tokio::time::sleep(window) => false,
        () = shutdown.triggered() => true,
    };
    let frequency = lease.frequency();
    // The lease moves into the sampler thread's job and is given up there, right after the
    // end snapshot; if this request is cancelled meanwhile, the job still finishes.
    let (end_counts, end) = on_sampler(move || {
        let counts = lease.snapshot();
        let end = Mark::now();
        drop(lease);
        (counts, end)
    })
    .await?;
    Ok(Capture {
        stacks: sampler::delta(&start_counts, end_counts),
        start,
        end,
        frequency,
        ended_early,
    })
}

/// A CPU recording driven from synchronous code (the criterion hook): [`Recording::start`]
/// joins the shared sampler like a `/profile` request does, [`Recording::finish`] takes
/// the end snapshot and symbolizes.
#[cfg(feature = "criterion")]
pub(crate) struct Recording {
    lease: Lease,
    start_counts: sampler::Counts,
    start: Mark,
}

#[cfg(feature = "criterion")]
impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("lease", &self.lease)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "criterion")]
impl Recording {
    /// Starts (or joins) the sampler at `frequency`; the error says why it could not.
    pub(crate) fn start(frequency: u32) -> Result<Recording, String> {
        let joined = sampler::on_sampler_thread_blocking(move || {
            Lease::join(frequency, Duration::from_secs(3600))
        })
        .ok_or("the CPU sampler failed")?;
        match joined {
            Ok((lease, start_counts)) => Ok(Recording {
                lease,
                start_counts,
                start: Mark::now(),
            }),
            Err(JoinError::OtherFrequency { running, .. }) => Err(format!(
                "the CPU sampler already runs at {running} Hz in this process"
            )),
            Err(JoinError::Start(msg)) => Err(format!("could not start the CPU profiler: {msg}")),
        }
    }

    /// Ends the recording: the samples taken since [`Recording::start`], symbolized.
    pub(crate) fn finish(self) -> CpuProfile {
        let Recording {
            lease,
            start_counts,
            start,
        } = self;
        let frequency = lease.frequency();
        let (end_counts, end) = sampler::on_sampler_thread_blocking(move || {
            let counts = lease.snapshot();
            let end = Mark::now();
            drop(lease);
            (counts, end)
        })
        .unwrap_or_else(|| (None, Mark::now()));
        CpuProfile::resolve(Capture {
            stacks: sampler::delta(&start_counts, end_counts),
            start,
            end,
            frequency,
            ended_early: false,
        })
    }
}

/// A symbolized CPU profile, ready to encode in any format.
#[derive(Debug)]
pub(crate) struct CpuProfile {
    stacks: Vec<Stack>,
    symbols: HashMap<usize, Resolved>,
    start: SystemTime,
    duration: Duration,
    cpu_used: Duration,
    frequency: u32,
    samples: i64,
    period_ns: i64,
    ended_early: bool,
}

impl CpuProfile {
    fn resolve(capture: Capture) -> Self {
        let mut stacks = capture.stacks;
        let symbols = symbols::resolve_all(stacks.iter().flat_map(|s| s.ips.iter().copied()));
        for s in &mut stacks {
            strip_signal_frames(&mut s.ips, &symbols);
        }
        stacks.retain(|s| !s.ips.is_empty());
        let samples = stacks.iter().map(|s| s.count).sum();
        let cpu_used = capture.end.cpu.saturating_sub(capture.start.cpu);
        Self {
            period_ns: period_ns(capture.frequency, samples, cpu_used),
            stacks,
            symbols,
            start: capture.start.wall,
            duration: capture.end.mono.duration_since(capture.start.mono),
            cpu_used,
            frequency: capture.frequency,
            samples,
            ended_early: capture.ended_early,
        }
    }

    /// Samples per second of the process's CPU time over the window.
    fn achieved_hz(&self) -> f64 {
        let cpu = self.cpu_used.as_secs_f64();
        if cpu > 0.0 {
            self.samples as f64 / cpu
        } else {
            0.0
        }
    }

    fn subtitle(&self) -> String {
        format!(
            "{:.1} s at {} Hz from {}: {} samples ({:.0} Hz achieved), {:.2} s of CPU sampled{}",
            self.duration.as_secs_f64(),
            self.frequency,
            utc(self.start),
            self.samples,
            self.achieved_hz(),
            (self.samples * self.period_ns) as f64 / 1e9,
            if self.ended_early {
                "; ended early by shutdown"
            } else {
                ""
            },
        )
    }

    /// gzipped profile.proto with Go's CPU sample types.
    /// How many samples the profile holds.
    #[cfg(feature = "criterion")]
    pub(crate) fn samples(&self) -> i64 {
        self.samples
    }

    pub(crate) fn to_proto(&self) -> std::io::Result<Vec<u8>> {
        let mut b = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            self.period_ns,
            crate::maps::current(),
        );
        b.time(unix_nanos(self.start), self.duration.as_nanos() as i64);
        b.comment(&format!("diag CPU profile: {}", self.subtitle()));
        b.default_sample_type("cpu");
        for s in &self.stacks {
            let locations = s
                .ips
                .iter()
                .map(|ip| b.location(*ip as u64, self.symbols.get(ip).map_or(&[][..], |l| &l[..])))
                .collect();
            b.sample(
                locations,
                vec![s.count, s.count * self.period_ns],
                &[("thread", &s.thread)],
            );
        }
        proto::gzip(&b.encode())
    }

    /// Collapsed stacks, root first, one line per distinct stack and thread name:
    /// `thread;a;b;c COUNT`. Threads that share a name (a pool's workers) and stacks that
    /// differ only below what the names show are merged, as the folded format expects.
    pub(crate) fn to_folded(&self) -> Vec<String> {
        flamegraph::fold(
            self.stacks
                .iter()
                .map(|s| (s.thread.as_str(), &s.ips[..], s.count)),
            &self.symbols,
        )
    }

    pub(crate) fn to_svg(&self) -> std::io::Result<Vec<u8>> {
        self.to_svg_titled("CPU flamegraph")
    }

    pub(crate) fn to_svg_titled(&self, title: &str) -> std::io::Result<Vec<u8>> {
        flamegraph::render(
            &self.to_folded(),
            &flamegraph::Labels {
                title,
                subtitle: &self.subtitle(),
                count_name: "samples",
            },
        )
    }
}

#[cfg(feature = "bench")]
impl CpuProfile {
    /// A profile of `samples` samples, each its own stack `depth` frames deep, drawn from
    /// a pool of made-up functions so that stacks share prefixes as real ones do (a few
    /// roots, wider towards the leaves). For benchmarks of the encoders.
    pub(crate) fn synthetic(samples: usize, depth: usize) -> CpuProfile {
        let mut symbols = HashMap::new();
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let stacks: Vec<Stack> = (0..samples)
            .map(|_| {
                // Frame i (from the root) is one of 2 + 4*i functions at that level.
                let ips = (0..depth)
                    .rev()
                    .map(|level| {
                        let choices = 2 + 4 * level as u64;
                        0x10_0000 + (level as u64 * 4096 + next() % choices) as usize * 16
                    })
                    .collect();
                Stack {
                    ips,
                    thread: format!("worker-{}", next() % 4),
                    count: 1,
                }
            })
            .collect();
        for s in &stacks {
            for &ip in &s.ips {
                symbols.entry(ip).or_insert_with(|| -> Resolved {
                    vec![proto::Line {
                        function: format!("app::module_{}::function_{ip:x}", ip / 65536),
                        file: format!("src/module_{}.rs", ip / 65536),
                        line: (ip % 997) as u32,
                    }]
                    .into()
                });
            }
        }
        CpuProfile {
            symbols,
            start: SystemTime::now(),
            duration: Duration::from_secs(30),
            cpu_used: Duration::from_secs_f64(samples as f64 / 99.0),
            frequency: DEFAULT_FREQUENCY,
            samples: stacks.len() as i64,
            period_ns: 1_000_000_000 / i64::from(DEFAULT_FREQUENCY),
            stacks,
            ended_early: false,
        }
    }
}

/// Drops the frames of the profiler itself: the signal handler, the unwinder it calls, and
/// the kernel's signal trampoline, so that every stack starts at the interrupted code.
fn strip_signal_frames(ips: &mut Vec<usize>, symbols: &HashMap<usize, Resolved>) {
    let handler = ips.iter().position(|ip| {
        symbols.get(ip).is_some_and(|lines| {
            lines
                .iter()
                .any(|l| l.function.contains("perf_signal_handler"))
        })
    });
    if let Some(i) = handler {
        // The frame after the handler's is the trampoline (`__restore_rt`) the kernel
        // returns through; the one after that is the interrupted code.
        let cut = (i + 2).min(ips.len());
        ips.drain(..cut);
    }
}

/// Nanoseconds of CPU time one sample stands for.
///
/// pprof-rs weighs every sample by the period of the *requested* frequency. But the
/// kernel delivers CPU-time signals at most about once per tick per CPU, and two signals
/// landing at once lose one to the handler's try-lock: asking for 1000 Hz yields ~170
/// samples per CPU-second here (`CONFIG_HZ=250`), so the requested period would
/// under-report CPU about sixfold. When the rate achieved over the window (samples per
/// second of the process's CPU time) falls below 80 % of the requested one, each sample
/// is weighed by the achieved period instead; above that, by the requested period, so
/// that ordinary losses stay visible rather than scaled away.
fn period_ns(frequency: u32, samples: i64, cpu_used: Duration) -> i64 {
    let requested = f64::from(frequency.max(1));
    let achieved = if cpu_used.is_zero() {
        requested
    } else {
        samples as f64 / cpu_used.as_secs_f64()
    };
    let effective = if achieved > 0.0 && achieved < 0.8 * requested {
        achieved
    } else {
        requested
    };
    (1e9 / effective) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_follows_the_rate_achieved_when_far_below_the_request() {
        let cpu = Duration::from_secs(2);
        // 99 Hz asked, 97 per CPU-second achieved: the requested period, losses visible.
        assert_eq!(period_ns(99, 194, cpu), 1_000_000_000 / 99);
        // 1000 Hz asked, 170 achieved: each sample stands for 1/170 s, not 1/1000 s.
        assert_eq!(period_ns(1000, 340, cpu), 1_000_000_000 / 170);
        // No CPU used: the requested period.
        assert_eq!(period_ns(1000, 0, Duration::ZERO), 1_000_000);
    }

    #[test]
    fn handler_frames_are_stripped() {
        let line = |f: &str| -> Resolved {
            vec![proto::Line {
                function: f.into(),
                file: String::new(),
                line: 0,
            }]
            .into()
        };
        let symbols = HashMap::from([
            (1, line("backtrace::trace")),
            (2, line("pprof::profiler::perf_signal_handler")),
            (3, line("__restore_rt")),
            (4, line("demo::spin_cpu")),
            (5, line("main")),
        ]);
        let mut ips = vec![1, 2, 3, 4, 5];
        strip_signal_frames(&mut ips, &symbols);
        assert_eq!(ips, [4, 5]);
    }
}
