//! A timeline over time: `/trace?seconds=N` records tracing spans and events, and tokio's
//! task polls per worker thread, into Chrome trace-event JSON (what Perfetto and
//! chrome://tracing open). Not Go's trace format: `go tool trace` does not read it.
//!
//! The application installs [`layer()`] in its subscriber. Outside a window the layer
//! reports no interest in any callsite and `OFF` as its maximum level, so tracing never
//! calls it; a window re-evaluates callsite interest when it opens and when it closes.
//!
//! The parts: `layer` records (the [`Layer`] and its [`Filter`]), `window` opens and
//! closes a window and keeps its records, `render` writes them as JSON (pure: the pid,
//! program and times are passed in), `http` answers `/trace`.

mod http;
mod layer;
mod render;
mod window;

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Subscriber;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Filtered;
use tracing_subscriber::registry::LookupSpan;

pub(crate) use http::trace;
pub use layer::{Filter, Layer};
/// The encoder's paths the golden tests (`crate::golden`) use.
#[cfg(test)]
pub(crate) use render::{Record, Window, render};

/// Events kept per window; beyond it they are counted and dropped, and the answer says so.
pub const MAX_TRACE_EVENTS: usize = 200_000;
/// Bytes a window's records may hold (their strings and their own size), beside the event
/// cap: past it events are counted and dropped like past the cap. Requests with 60 KB
/// paths would otherwise fill hundreds of MiB within the event cap.
pub const MAX_TRACE_BYTES: usize = 32 << 20;
/// The longest field value kept; longer ones are cut and end with a marker saying how
/// many bytes were left out.
pub const MAX_FIELD_BYTES: usize = 512;

/// Whether [`layer()`] was called in this process.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The layer that records into `/trace` windows, wearing its own [`Filter`]. Install it
/// once in the application's subscriber; without it `/trace` answers 501.
///
/// Its filter is open only while a window is: outside one it tells tracing that it wants
/// nothing (no callsite, no level), so the subscriber behaves as if the layer were
/// absent: every span and event the other layers do not want stays disabled at its
/// callsite (tokio's trace-level task instrumentation among them). Opening and closing a
/// window re-evaluate every callsite's interest once. Spans created before a window opens
/// are not seen in it.
///
/// ```no_run
/// use tracing_subscriber::prelude::*;
///
/// tracing_subscriber::registry()
///     .with(diag::trace::layer())
///     .with(tracing_subscriber::fmt::layer())
///     .init();
/// ```
pub fn layer<S>() -> Filtered<Layer, Filter, S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    INSTALLED.store(true, Ordering::Relaxed);
    window::start_clock();
    Layer::new().with_filter(Filter::new())
}

/// Whether `/trace` can record: the layer is installed, or how to install it.
pub(crate) fn available() -> Result<(), String> {
    if INSTALLED.load(Ordering::Relaxed) {
        Ok(())
    } else {
        Err(NOT_INSTALLED.to_owned())
    }
}

const NOT_INSTALLED: &str = "no trace layer in this process: add diag::trace::layer() to the \
     application's tracing subscriber (tracing_subscriber::registry().with(diag::trace::layer())\
     .with(...).init()); it records nothing outside a /trace window";
