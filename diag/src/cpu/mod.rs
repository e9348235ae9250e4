//! CPU profiles: `/profile`, `/flamegraph` and Go's `/symbol` protocol. The sampling is
//! diag's own engine (`engine/`, no HTTP in it); this file turns its windows into answers.

pub(crate) mod engine;
mod past;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use crate::error::ApiError;
use crate::flamegraph;
use crate::labels::LabelSet;
use crate::params::Params;
use crate::proto::{self, ProfileBuilder};
use crate::state::Diag;
use crate::util::{unix_nanos, utc};

use crate::symbols::{self, Resolved};
#[cfg(feature = "criterion")]
use engine::Mark;
use engine::{EngineError, Losses, Sample, Window};

/// A CPU profile's length unless `seconds` says otherwise (Go's default).
pub(crate) const DEFAULT_SECONDS: u64 = 30;
/// Samples per second of CPU time unless `frequency` says otherwise (Go's 100, less one so
/// the timer does not beat against periodic work).
pub(crate) const DEFAULT_FREQUENCY: u32 = 99;
/// The highest `frequency` accepted. The kernel delivers CPU-time signals at most about
/// once per tick per thread; the expiries it folds together are counted (`si_overrun`)
/// and weigh the sample that carries them.
pub(crate) const MAX_FREQUENCY: u32 = 1000;

pub(crate) use engine::{install_handler, recorder_status, running};

/// Starts the always-on recorder when `cfg` asks for one; it stops with `cfg`'s shutdown.
pub(crate) fn start_recorder(cfg: &crate::Config) {
    let Some(r) = cfg.cpu_recorder() else {
        return;
    };
    let shutdown = cfg.shutdown().clone();
    engine::start_recorder(
        engine::RecorderSettings {
            frequency: r.frequency(),
            keep: r.keep(),
            bucket: r.bucket(),
        },
        Box::new(move || shutdown.is_triggered()),
    );
}

/// `GET /profile?seconds=N&frequency=HZ&format=proto|svg|folded&tagroot=KEY[,KEY]`.
pub(crate) async fn profile(State(d): State<Diag>, RawQuery(q): RawQuery) -> Response {
    let params = Params::parse(q.as_deref());
    let format = match params.choice("format", "proto", &["proto", "svg", "folded"]) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    respond(d, params, format, false).await
}

/// `GET /flamegraph?seconds=N&frequency=HZ&tagroot=KEY[,KEY]`: the SVG as a download.
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
            // The process's CPU time over the window (all threads), which the samples
            // stand for: a client can compare it with what the profile sampled.
            if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", profile.cpu_used.as_secs_f64()))
            {
                h.insert("x-diag-cpu-seconds", v);
            }
            if profile.ended_early {
                h.insert("x-diag-ended-early", HeaderValue::from_static("shutdown"));
            }
            if let Some(past) = &profile.recorded {
                let end = profile.start + profile.duration;
                if let Ok(v) =
                    HeaderValue::from_str(&format!("{} to {}", utc(profile.start), utc(end)))
                {
                    h.insert("x-diag-recorded", v);
                }
                if let Some(asked) = past.asked_from {
                    if let Ok(v) = HeaderValue::from_str(&format!(
                        "asked from {}, kept from {} ({:.0} s)",
                        utc(asked),
                        utc(past.kept_from),
                        SystemTime::now()
                            .duration_since(past.kept_from)
                            .unwrap_or_default()
                            .as_secs_f64()
                    )) {
                        h.insert("x-diag-recorder-short", v);
                    }
                }
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
    let stretch = past::stretch(params)?;
    let (seconds, frequency) = match stretch {
        None => (
            d.seconds(params, DEFAULT_SECONDS)?,
            params.int_in("frequency", DEFAULT_FREQUENCY, 1, MAX_FREQUENCY)?,
        ),
        Some(_) => (0, 0),
    };
    let tagroot = tagroot(params, format)?;
    let _permit = d.heavy()?;
    let capture = match stretch {
        None => capture(d, Duration::from_secs(seconds), frequency).await?,
        Some(stretch) => past::capture(stretch, d.cfg().cpu_recorder().is_some()).await?,
    };
    tokio::task::spawn_blocking(move || {
        let mut profile = CpuProfile::resolve(capture);
        profile.tagroot = tagroot;
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

/// The most keys `tagroot` takes.
const MAX_TAGROOT_KEYS: usize = 8;

/// `tagroot=KEY[,KEY]`: label keys whose values become the root frames of svg and folded
/// output (Go's `-tagroot`). A proto profile carries every label already.
fn tagroot(params: &Params, format: &str) -> Result<Vec<String>, ApiError> {
    let Some(raw) = params.get("tagroot") else {
        return Ok(Vec::new());
    };
    let keys: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if format == "proto" {
        return Err(ApiError::bad_param(
            "tagroot",
            raw,
            "tagroot only with format=svg or format=folded (a proto profile carries the labels: use go tool pprof -tagroot)",
        ));
    }
    if keys.is_empty()
        || keys.len() > MAX_TAGROOT_KEYS
        || keys.iter().any(|k| k.len() > crate::labels::MAX_KEY_LEN)
    {
        return Err(ApiError::bad_param(
            "tagroot",
            raw,
            format!(
                "1 to {MAX_TAGROOT_KEYS} comma-separated label keys of at most {} bytes, such as http.route",
                crate::labels::MAX_KEY_LEN
            ),
        ));
    }
    Ok(keys)
}

/// One reader's window, and whether shutdown cut it short.
#[derive(Debug)]
struct Capture {
    window: Window,
    ended_early: bool,
    /// When the window comes from the recorder: what it kept.
    recorded: Option<Past>,
}

/// What the recorder kept of a stretch asked.
#[derive(Debug, Clone, Copy)]
struct Past {
    /// The start of the oldest sample kept.
    kept_from: SystemTime,
    /// When the stretch asked began before that: its start.
    asked_from: Option<SystemTime>,
}

/// The answer an engine error gets.
fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Unsupported => ApiError::NotImplemented(e.to_string()),
        EngineError::Start(_) | EngineError::Lost => ApiError::Internal(e.to_string()),
    }
}

async fn capture(d: &Diag, window: Duration, frequency: u32) -> Result<Capture, ApiError> {
    let lease = engine::join(frequency, window)
        .await
        .map_err(engine_error)?;
    let shutdown = d.cfg().shutdown.clone();
    let ended_early = tokio::select! {
        () = tokio::time::sleep(window) => false,
        () = shutdown.triggered() => true,
    };
    // If this request is cancelled while the end is taken, the lease's job still runs on
    // the sampler thread; if it is cancelled before, dropping the lease gives it up.
    let window = lease.finish().await.map_err(engine_error)?;
    Ok(Capture {
        window,
        ended_early,
        recorded: None,
    })
}

/// A CPU recording driven from synchronous code (the criterion hook): [`Recording::start`]
/// joins the shared sampler like a `/profile` request does, [`Recording::finish`] ends the
/// window and symbolizes.
#[cfg(feature = "criterion")]
#[derive(Debug)]
pub(crate) struct Recording {
    lease: engine::Lease,
}

#[cfg(feature = "criterion")]
impl Recording {
    /// Starts (or joins) the sampler at `frequency`; the error says why it could not.
    pub(crate) fn start(frequency: u32) -> Result<Recording, String> {
        match engine::join_blocking(frequency, Duration::from_secs(3600)) {
            Ok(lease) => Ok(Recording { lease }),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Ends the recording: the samples taken since [`Recording::start`], symbolized.
    pub(crate) fn finish(self) -> CpuProfile {
        let frequency = self.lease.frequency();
        let window = self.lease.finish_blocking().unwrap_or_else(|_| {
            let now = Mark::now();
            Window {
                samples: Vec::new(),
                start: now,
                end: now,
                frequency,
                peak_frequency: frequency,
                losses: Losses::default(),
            }
        });
        CpuProfile::resolve(Capture {
            window,
            ended_early: false,
            recorded: None,
        })
    }
}

/// A symbolized CPU profile, ready to encode in any format.
#[derive(Debug)]
pub(crate) struct CpuProfile {
    stacks: Vec<Sample>,
    symbols: HashMap<usize, Resolved>,
    /// The label sets the samples name.
    labels: HashMap<u32, Arc<LabelSet>>,
    /// Label keys whose values root the folded stacks (`?tagroot=`).
    tagroot: Vec<String>,
    start: SystemTime,
    duration: Duration,
    cpu_used: Duration,
    frequency: u32,
    /// The highest rate the sampler ran at over the window (for other readers).
    peak_frequency: u32,
    /// Signals taken.
    samples: i64,
    /// CPU nanoseconds they stand for.
    sampled_ns: i64,
    losses: Losses,
    ended_early: bool,
    /// From the recorder: what it kept of the stretch asked.
    recorded: Option<Past>,
}

impl CpuProfile {
    fn resolve(capture: Capture) -> Self {
        let Window {
            samples: mut stacks,
            start,
            end,
            frequency,
            peak_frequency,
            losses,
        } = capture.window;
        stacks.retain(|s| !s.ips.is_empty());
        let symbols = symbols::resolve_all(stacks.iter().flat_map(|s| s.ips.iter().copied()));
        let labels = crate::labels::resolve(stacks.iter().map(|s| s.label));
        Self {
            labels,
            tagroot: Vec::new(),
            samples: stacks.iter().map(|s| s.count).sum(),
            sampled_ns: stacks.iter().map(|s| s.weight_ns).sum(),
            stacks,
            symbols,
            start: start.wall,
            duration: end.mono.duration_since(start.mono),
            cpu_used: end.cpu.saturating_sub(start.cpu),
            frequency,
            peak_frequency,
            losses,
            ended_early: capture.ended_early,
            recorded: capture.recorded,
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

    /// Nanoseconds of CPU time per timer expiry.
    fn period_ns(&self) -> i64 {
        1_000_000_000 / i64::from(self.frequency.max(1))
    }

    fn subtitle(&self) -> String {
        let l = &self.losses;
        let mut lost = Vec::new();
        for (n, what) in [
            (l.ring_full, "dropped (sample ring full)"),
            (
                l.ip_only,
                "with only the interrupted address (stack range not learned yet)",
            ),
            (l.stacks_full, "dropped (stack table full)"),
            (
                l.threads_unsampled,
                "threads not sampled (thread table full)",
            ),
            (l.foreign_signals, "foreign SIGPROFs passed on"),
        ] {
            if n > 0 {
                lost.push(format!("{n} {what}"));
            }
        }
        let source = match &self.recorded {
            None => String::new(),
            Some(Past {
                asked_from: None, ..
            }) => " (from the CPU recorder)".to_owned(),
            Some(Past {
                asked_from: Some(asked),
                kept_from,
            }) => format!(
                " (from the CPU recorder: asked from {}, which keeps only from {})",
                utc(*asked),
                utc(*kept_from)
            ),
        };
        let shared = if self.peak_frequency > self.frequency {
            format!(
                " (the sampler ran at up to {} Hz for other readers; each sample weighs its own timer's period)",
                self.peak_frequency
            )
        } else {
            String::new()
        };
        format!(
            "{:.1} s at {} Hz{shared}{source} from {}: {} samples ({:.0} Hz achieved), {:.2} s of CPU sampled of {:.2} s used{}{}",
            self.duration.as_secs_f64(),
            self.frequency,
            utc(self.start),
            self.samples,
            self.achieved_hz(),
            self.sampled_ns as f64 / 1e9,
            self.cpu_used.as_secs_f64(),
            if lost.is_empty() {
                String::new()
            } else {
                format!("; {}", lost.join(", "))
            },
            if self.ended_early {
                "; ended early by shutdown"
            } else {
                ""
            },
        )
    }

    /// How many samples the profile holds.
    #[cfg(feature = "criterion")]
    pub(crate) fn samples(&self) -> i64 {
        self.samples
    }

    /// gzipped profile.proto with Go's CPU sample types.
    pub(crate) fn to_proto(&self) -> std::io::Result<Vec<u8>> {
        let mut b = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            self.period_ns(),
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
            let mut labels: Vec<(&str, &str)> = vec![("thread", &s.thread)];
            if let Some(set) = self.labels.get(&s.label) {
                labels.extend(set.iter().filter(|(k, _)| *k != "thread"));
            }
            b.sample(locations, vec![s.count, s.weight_ns], &labels);
        }
        proto::gzip(&b.encode())
    }

    /// Collapsed stacks, root first, one line per distinct stack and thread name:
    /// `thread;a;b;c COUNT`. Threads that share a name (a pool's workers) and stacks that
    /// differ only below what the names show are merged, as the folded format expects.
    /// With `tagroot` keys, each key's value comes first: `KEY=value;thread;a;b;c COUNT`
    /// (`KEY=(none)` for samples without it).
    pub(crate) fn to_folded(&self) -> Vec<String> {
        if self.tagroot.is_empty() {
            return flamegraph::fold(
                self.stacks
                    .iter()
                    .map(|s| (s.thread.as_str(), &s.ips[..], s.count)),
                &self.symbols,
            );
        }
        let prefixes: Vec<String> = self
            .stacks
            .iter()
            .map(|s| {
                let set = self.labels.get(&s.label);
                let mut p = String::new();
                for key in &self.tagroot {
                    let value = set.and_then(|l| l.get(key)).unwrap_or("(none)");
                    p.push_str(key);
                    p.push('=');
                    p.push_str(value);
                    p.push(flamegraph::PREFIX_SEP);
                }
                p.push_str(&s.thread);
                p
            })
            .collect();
        flamegraph::fold(
            self.stacks
                .iter()
                .zip(&prefixes)
                .map(|(s, p)| (p.as_str(), &s.ips[..], s.count)),
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
        let period_ns = 1_000_000_000 / i64::from(DEFAULT_FREQUENCY);
        let stacks: Vec<Sample> = (0..samples)
            .map(|_| {
                // Frame i (from the root) is one of 2 + 4*i functions at that level.
                let ips = (0..depth)
                    .rev()
                    .map(|level| {
                        let choices = 2 + 4 * level as u64;
                        0x10_0000 + (level as u64 * 4096 + next() % choices) as usize * 16
                    })
                    .collect();
                Sample {
                    ips,
                    thread: format!("worker-{}", next() % 4),
                    label: 0,
                    count: 1,
                    weight_ns: period_ns,
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
            labels: HashMap::new(),
            tagroot: Vec::new(),
            start: SystemTime::now(),
            duration: Duration::from_secs(30),
            cpu_used: Duration::from_secs_f64(samples as f64 / 99.0),
            frequency: DEFAULT_FREQUENCY,
            peak_frequency: DEFAULT_FREQUENCY,
            recorded: None,
            samples: stacks.len() as i64,
            sampled_ns: stacks.len() as i64 * period_ns,
            stacks,
            losses: Losses::default(),
            ended_early: false,
        }
    }
}
