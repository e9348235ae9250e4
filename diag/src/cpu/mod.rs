//! CPU profiles: `/profile` and `/flamegraph` (Go's `/symbol` protocol is in
//! `crate::symbols`). The sampling is diag's own engine (`engine/`); this module captures a
//! live window or a stretch of the past (`past.rs`) and builds the profile (`encode.rs`),
//! knowing no HTTP. The handlers and their typed queries are in `http.rs`.

mod encode;
pub(crate) mod engine;
mod http;
mod past;

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::flamegraph::Format;
use crate::shutdown::Shutdown;

pub(crate) use encode::CpuProfile;
use engine::{EngineError, Window};
#[cfg(feature = "criterion")]
use engine::{Losses, Mark};
pub(crate) use engine::{install_handler, recorder_status, running};
pub(crate) use http::{flamegraph, profile};
use past::{Stretch, StretchError};

/// A CPU profile's length unless `seconds` says otherwise (Go's default).
pub(crate) const DEFAULT_SECONDS: u64 = 30;
/// Samples per second of CPU time unless `frequency` says otherwise (Go's 100, less one so
/// the timer does not beat against periodic work).
pub(crate) const DEFAULT_FREQUENCY: u32 = 99;
/// The highest `frequency` accepted. The kernel delivers CPU-time signals at most about
/// once per tick per thread; the expiries it folds together are counted (`si_overrun`)
/// and weigh the sample that carries them.
pub(crate) const MAX_FREQUENCY: u32 = 1000;

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

/// The samples a profile asks for.
#[derive(Debug, Clone)]
pub(crate) enum When {
    /// A window from now on: its length and the sampling rate (Hz).
    Live { window: Duration, frequency: u32 },
    /// A stretch of the past, read from the always-on recorder.
    Past(Stretch),
}

/// Why no CPU profile could be made.
#[derive(Debug)]
pub(crate) enum CaptureError {
    /// The sampling engine failed, or cannot run here.
    Engine(EngineError),
    /// The recorder cannot answer the stretch asked.
    Refused(StretchError),
    /// The task that symbolizes and encodes did not finish.
    Build(String),
    /// The encoder failed.
    Encode(std::io::Error),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Engine(e) => e.fmt(f),
            Self::Refused(e) => e.fmt(f),
            Self::Build(e) => write!(f, "building the CPU profile failed: {e}"),
            Self::Encode(e) => write!(f, "encoding the CPU profile failed: {e}"),
        }
    }
}

impl std::error::Error for CaptureError {}

impl From<EngineError> for CaptureError {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

/// One reader's window, and whether shutdown cut it short.
#[derive(Debug)]
pub(crate) struct Capture {
    pub(crate) window: Window,
    pub(crate) ended_early: bool,
    /// When the window comes from the recorder: what it kept.
    pub(crate) recorded: Option<Past>,
}

/// What the recorder kept of a stretch asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Past {
    /// The start of the oldest sample kept.
    pub(crate) kept_from: SystemTime,
    /// When the stretch asked began before that: its start.
    pub(crate) asked_from: Option<SystemTime>,
}

/// The samples `when` asks for: a live window (cut short when `shutdown` triggers), or the
/// recorder's stretch. `recorder`: whether this router turned the recorder on (another one
/// in the process may have).
pub(crate) async fn capture(
    when: When,
    shutdown: &Shutdown,
    recorder: bool,
) -> Result<Capture, CaptureError> {
    match when {
        When::Live { window, frequency } => live(window, frequency, shutdown).await,
        When::Past(stretch) => past::capture(stretch, recorder).await,
    }
}

async fn live(
    window: Duration,
    frequency: u32,
    shutdown: &Shutdown,
) -> Result<Capture, CaptureError> {
    let lease = engine::join(frequency, window).await?;
    let ended_early = tokio::select! {
        () = tokio::time::sleep(window) => false,
        () = shutdown.triggered() => true,
    };
    // If this request is cancelled while the end is taken, the lease's job still runs on
    // the sampler thread; if it is cancelled before, dropping the lease gives it up.
    let window = lease.finish().await?;
    Ok(Capture {
        window,
        ended_early,
        recorded: None,
    })
}

/// Symbolizes `capture` and encodes it as `format` (profile.proto with this process's
/// mappings) on a thread of diag's own (`offload::run`); `tagroot` keys root the folded
/// and SVG stacks.
pub(crate) async fn build(
    capture: Capture,
    tagroot: Vec<String>,
    format: Format,
) -> Result<(Vec<u8>, CpuProfile), CaptureError> {
    crate::offload::run(move || {
        let mut profile = CpuProfile::resolve(capture);
        profile.set_tagroot(tagroot);
        let body = match format {
            Format::Proto => profile.to_proto(crate::maps::current()),
            Format::Svg => profile.to_svg(),
            Format::Folded => Ok(profile.to_folded().join("\n").into_bytes()),
        };
        body.map(|b| (b, profile))
    })
    .await
    .map_err(|e| CaptureError::Build(e.to_string()))?
    .map_err(CaptureError::Encode)
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
