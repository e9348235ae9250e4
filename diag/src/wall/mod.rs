//! Wall-time profiles (`/wall`): where the traced tokio tasks spend their time, awaiting
//! included, as `go tool pprof` reads it (`wall/nanoseconds`).
//!
//! A thread of diag's own takes a traced task dump (`crate::tasks`) at each tick, by
//! default 20 times a second: every future wrapped in [`Traced`](crate::tasks::Traced)
//! (each request under [`TracedLayer`](crate::tasks::TracedLayer), each task of
//! [`tasks::spawn`](crate::tasks::spawn)) reports its await stack, and each stack is
//! weighted by the time since the previous tick. A future that does not report within
//! the tick is counted too, as inside a poll (running, or blocking its worker) or as
//! woken and waiting for a worker. Above 1,000 traced futures the ticks are spaced out in
//! proportion, and the profile says so. Futures not wrapped are not seen; with
//! `TracedLayer`, an HTTP/1 connection idle between requests is not a traced future, so
//! keep-alive idle time stays out of the profile.

pub(crate) mod encode;
mod http;
mod idle;
pub(crate) mod sampler;
#[cfg(all(feature = "cpu", diag_engine))]
mod threads;

/// Without diag's CPU engine there is no thread sampling: task samples alone.
#[cfg(not(all(feature = "cpu", diag_engine)))]
mod threads {
    use super::sampler::{ThreadSample, ThreadStats};

    pub(crate) struct Sampler {
        pub(crate) stats: ThreadStats,
    }

    impl Sampler {
        pub(crate) fn new() -> Result<Self, String> {
            Err(
                "threads are sampled with diag's CPU engine (the `cpu` feature, Linux on \
                 x86_64 or aarch64)"
                    .to_owned(),
            )
        }
        pub(crate) fn ask(&mut self) {}
        pub(crate) fn collect(&mut self) -> Vec<ThreadSample> {
            Vec::new()
        }
    }
}

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::flamegraph::Format;
pub(crate) use http::wall;
use sampler::{Capture, Options, WallProfile};

/// A wall-time profile's length unless `seconds` says otherwise (Go's CPU default).
pub(crate) const DEFAULT_SECONDS: u64 = 30;

/// Why no wall-time profile could be made.
#[derive(Debug)]
pub(crate) enum WallError {
    /// Traced task dumps, which the profile samples, are not available: why.
    Unavailable(String),
    /// The sampler's thread could not be started.
    Start(std::io::Error),
    /// The sampler's thread ended without an answer.
    Failed,
    /// The task that symbolizes and encodes did not finish.
    Build(String),
    /// The encoder failed.
    Encode(std::io::Error),
}

impl fmt::Display for WallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(
                f,
                "no wall-time profile: it samples the traced task dumps, and {why}"
            ),
            Self::Start(e) => write!(f, "could not start the wall sampler: {e}"),
            Self::Failed => f.write_str("the wall sampler failed (see the logs)"),
            Self::Build(e) => write!(f, "building the wall-time profile failed: {e}"),
            Self::Encode(e) => write!(f, "encoding the wall-time profile failed: {e}"),
        }
    }
}

impl std::error::Error for WallError {}

/// Whether this process can take wall-time profiles (traced task dumps work here).
pub(crate) fn available() -> Result<(), WallError> {
    crate::tasks::available().map_err(|e| WallError::Unavailable(e.to_string()))
}

/// Sets the sampler's stop flag when the request goes away (or ends).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Samples the traced tasks (and threads) as `opts` asks, until the window ends, shutdown
/// begins or the returned future is dropped. `held` (the dump guard) lives exactly as long
/// as the sampling.
pub(crate) async fn sample<H: Send + 'static>(
    opts: Options,
    held: H,
) -> Result<Capture, WallError> {
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: it sleeps between ticks and waits for the reports on a
    // condition variable, so no runtime's timer or worker is held by the profile.
    std::thread::Builder::new()
        .name("diag-wall".to_owned())
        .spawn(move || {
            let capture = sampler::run(&opts, &stop);
            drop(held);
            let _ = tx.send(capture);
        })
        .map_err(WallError::Start)?;
    rx.await.map_err(|_| WallError::Failed)
}

/// Symbolizes `capture` and encodes it as `format` (profile.proto with this process's
/// mappings and label sets) on a thread of diag's own (`offload::run`).
pub(crate) async fn build(
    capture: Capture,
    format: Format,
) -> Result<(Vec<u8>, WallProfile), WallError> {
    crate::offload::run(move || {
        let profile = sampler::symbolize(capture);
        let body = match format {
            Format::Proto => {
                let sets = encode::label_sets(&profile);
                encode::to_proto(&profile, &sets, crate::maps::current())
            }
            Format::Svg => encode::to_svg(&profile),
            Format::Folded => Ok(encode::to_folded(&profile).join("\n").into_bytes()),
        };
        body.map(|b| (b, profile))
    })
    .await
    .map_err(|e| WallError::Build(e.to_string()))?
    .map_err(WallError::Encode)
}
