//! A `/trace` window: one at a time, opened and closed for the layer, its records kept
//! within [`MAX_TRACE_EVENTS`] and [`MAX_TRACE_BYTES`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::render::{Record, Window};
use super::{MAX_TRACE_BYTES, MAX_TRACE_EVENTS, available};
use crate::shutdown::Shutdown;

/// Whether a window is open: the layer and its filter read it on every call.
pub(super) static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Counts each window, so that each names the threads it sees once.
pub(super) static WINDOW_SEQ: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static BUFFER: Mutex<Buffer> = Mutex::new(Buffer {
    records: Vec::new(),
    bytes: 0,
});
static WINDOW: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static ORIGIN: OnceLock<Instant> = OnceLock::new();
/// When the current window opened (`now_us`, as f64 bits): anything begun before it, in
/// an earlier window, is left out.
static WINDOW_START: AtomicU64 = AtomicU64::new(0);

/// Why a window cannot be opened now. The HTTP side answers each as Go would (see
/// `trace/http.rs`).
#[derive(Debug)]
pub(crate) enum TraceError {
    /// No [`super::layer()`] in this process (501), with how to install it.
    NotInstalled(String),
    /// A window is already open (409).
    Busy,
}

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotInstalled(how) => f.write_str(how),
            Self::Busy => {
                f.write_str("a trace window is already open (one at a time); retry when it ends")
            }
        }
    }
}

impl std::error::Error for TraceError {}

/// Starts the trace clock (if it has not started): times are microseconds since then.
pub(super) fn start_clock() {
    ORIGIN.get_or_init(Instant::now);
}

/// Microseconds since the trace clock started.
pub(super) fn now_us() -> f64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    origin.elapsed().as_secs_f64() * 1e6
}

/// Whether `t` (from [`now_us`]) is within the current window.
pub(super) fn in_window(t: f64) -> bool {
    t >= f64::from_bits(WINDOW_START.load(Ordering::Relaxed))
}

/// A window's records and what they weigh.
#[derive(Debug)]
struct Buffer {
    records: Vec<Record>,
    /// The records' own size plus their strings' capacity.
    bytes: usize,
}

impl Buffer {
    fn lock() -> std::sync::MutexGuard<'static, Buffer> {
        BUFFER.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Empties the buffer and gives its memory back.
    fn clear(&mut self) {
        drop(self.take());
    }

    /// Takes the records out, leaving the buffer empty.
    fn take(&mut self) -> Vec<Record> {
        self.bytes = 0;
        std::mem::take(&mut self.records)
    }
}

/// Keeps `r` in the current window, or counts it as dropped past the caps.
pub(super) fn push(r: Record) {
    let weight = r.weight();
    let mut b = Buffer::lock();
    if b.records.len() >= MAX_TRACE_EVENTS || b.bytes + weight > MAX_TRACE_BYTES {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    b.bytes += weight;
    b.records.push(r);
}

/// Opens a window: the filter starts answering "yes", and every callsite's cached interest
/// and the global maximum level are worked out again so the callsites the other layers
/// left off reach this one. Dropping it (the window ended, or the client went away and the
/// handler was dropped) closes the window the same way, so idle costs nothing again.
struct OpenWindow(());

impl OpenWindow {
    fn open() -> OpenWindow {
        ACTIVE.store(true, Ordering::Release);
        tracing::callsite::rebuild_interest_cache();
        OpenWindow(())
    }
}

impl Drop for OpenWindow {
    fn drop(&mut self) {
        ACTIVE.store(false, Ordering::Release);
        tracing::callsite::rebuild_interest_cache();
    }
}

/// The right to open the one window, held until the answer is written. Whatever ends it
/// (the answer, or the client going away and hyper dropping the handler mid-window), the
/// records go with it, not with the next window.
#[derive(Debug)]
pub(crate) struct Session {
    _lock: tokio::sync::MutexGuard<'static, ()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        Buffer::lock().clear();
    }
}

/// Claims the window: an error when the layer is not installed or a window is open.
pub(crate) fn claim() -> Result<Session, TraceError> {
    available().map_err(TraceError::NotInstalled)?;
    let lock = WINDOW.try_lock().map_err(|_| TraceError::Busy)?;
    Ok(Session { _lock: lock })
}

impl Session {
    /// Records for `seconds` (less if `shutdown` is triggered) and returns what the window
    /// kept and what it was.
    pub(crate) async fn record(&self, seconds: u64, shutdown: &Shutdown) -> (Vec<Record>, Window) {
        Buffer::lock().clear();
        DROPPED.store(0, Ordering::Relaxed);
        WINDOW_SEQ.fetch_add(1, Ordering::Relaxed);
        let started = SystemTime::now();
        let start_us = now_us();
        WINDOW_START.store(start_us.to_bits(), Ordering::Relaxed);
        let open = OpenWindow::open();
        let ended_early = tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(seconds)) => false,
            () = shutdown.triggered() => true,
        };
        drop(open);
        let end_us = now_us();
        let records = Buffer::lock().take();
        let window = Window {
            started,
            start_us,
            end_us,
            dropped: DROPPED.load(Ordering::Relaxed),
            ended_early,
        };
        (records, window)
    }
}
