//! A timeline over time: `/trace?seconds=N` records tracing spans and events, and tokio's
//! task polls per worker thread, into Chrome trace-event JSON (what Perfetto and
//! chrome://tracing open). Not Go's trace format: `go tool trace` does not read it.
//!
//! The application installs [`trace_layer`] in its subscriber. Outside a window the layer
//! reports no interest in any callsite and `OFF` as its maximum level, so tracing never
//! calls it; a window re-evaluates callsite interest when it opens and when it closes.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::header;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Filtered;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::error::ApiError;
use crate::params::Params;
use crate::state::Diag;
use crate::util::{unix_nanos, utc};

/// A trace's length unless `seconds` says otherwise.
pub(crate) const DEFAULT_SECONDS: u64 = 1;
/// The longest window accepted (a timeline is big; `seconds` is capped by this and by the
/// configured cap, whichever is lower).
pub(crate) const MAX_SECONDS: u64 = 60;
/// Events kept per window; beyond it they are counted and dropped, and the answer says so.
pub const MAX_TRACE_EVENTS: usize = 200_000;
/// Bytes a window's records may hold (their strings and their own size), beside the event
/// cap: past it events are counted and dropped like past the cap. Requests with 60 KB
/// paths would otherwise fill hundreds of MiB within the event cap.
pub const MAX_TRACE_BYTES: usize = 32 << 20;
/// The longest field value kept; longer ones are cut and end with a marker saying how
/// many bytes were left out.
pub const MAX_FIELD_BYTES: usize = 512;

static INSTALLED: AtomicBool = AtomicBool::new(false);
static ACTIVE: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static BUFFER: Mutex<Buffer> = Mutex::new(Buffer {
    records: Vec::new(),
    bytes: 0,
});
static WINDOW: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// One recorded thing, in microseconds since `ORIGIN`.
#[derive(Debug)]
pub(crate) enum Record {
    /// A span's life: created, closed (an async slice, its own track).
    Span {
        id: u64,
        name: &'static str,
        target: &'static str,
        fields: String,
        tid: u64,
        start: f64,
        end: f64,
    },
    /// One poll of a tokio task on a worker thread.
    Poll {
        name: String,
        fields: String,
        tid: u64,
        start: f64,
        end: f64,
    },
    /// A tracing event.
    Instant {
        name: &'static str,
        target: &'static str,
        fields: String,
        tid: u64,
        ts: f64,
    },
    /// A thread's name, once per thread seen.
    Thread { tid: u64, name: String },
}

/// The layer that records into `/trace` windows. Install it once in the application's
/// subscriber; without it `/trace` answers 501.
///
/// It carries its own per-layer filter, open only while a window is: outside one it tells
/// tracing that it wants nothing (no callsite, no level), so the subscriber behaves as if
/// the layer were absent: every span and event the other layers do not want stays
/// disabled at its callsite (tokio's trace-level task instrumentation among them). Opening
/// and closing a window re-evaluate every callsite's interest once. Spans created before
/// a window opens are not seen in it.
///
/// ```no_run
/// use tracing_subscriber::prelude::*;
///
/// tracing_subscriber::registry()
///     .with(diag::trace::trace_layer())
///     .with(tracing_subscriber::fmt::layer())
///     .init();
/// ```
pub fn trace_layer<S>() -> Filtered<TraceLayer, TraceFilter, S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    INSTALLED.store(true, Ordering::Relaxed);
    ORIGIN.get_or_init(Instant::now);
    TraceLayer { _private: () }.with_filter(TraceFilter { _private: () })
}

/// The per-layer filter [`trace_layer`] wears: open only while a `/trace` window is.
///
/// Outside a window it answers "never" for every callsite and `OFF` as its level, so it
/// adds nothing to what the other layers enable. Inside one, callsites that are never
/// recorded (tokio's resource, async-op and waker instrumentation) stay closed; the rest
/// ask one atomic load each time, so recording stops the moment the window ends.
#[derive(Debug)]
pub struct TraceFilter {
    _private: (),
}

impl<S> tracing_subscriber::layer::Filter<S> for TraceFilter {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        ACTIVE.load(Ordering::Relaxed)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if ACTIVE.load(Ordering::Relaxed)
            && (is_task(meta.target(), meta.name()) || !is_tokio_internal(meta.target()))
        {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        if ACTIVE.load(Ordering::Relaxed) {
            Some(LevelFilter::TRACE)
        } else {
            Some(LevelFilter::OFF)
        }
    }
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

/// The recording layer inside [`trace_layer`]'s filter.
#[derive(Debug)]
pub struct TraceLayer {
    _private: (),
}

/// What a span keeps while a window is open.
#[derive(Debug)]
struct Open {
    fields: String,
    tid: u64,
    start: f64,
    /// When the current poll (enter) began, for task spans.
    entered: Option<f64>,
}

fn now_us() -> f64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    origin.elapsed().as_secs_f64() * 1e6
}

thread_local! {
    static TID: Cell<u64> = const { Cell::new(0) };
}

/// This thread's id (the kernel's), recording its name the first time a window sees it.
fn tid() -> u64 {
    TID.with(|t| {
        if t.get() == 0 {
            // SAFETY: gettid has no preconditions.
            let id = unsafe { libc::gettid() } as u64;
            t.set(id);
        }
        t.get()
    })
}

thread_local! {
    static NAMED_IN: Cell<u64> = const { Cell::new(0) };
}

static WINDOW_SEQ: AtomicU64 = AtomicU64::new(0);
/// When the current window opened (`now_us`, as f64 bits): anything begun before it, in
/// an earlier window, is left out.
static WINDOW_START: AtomicU64 = AtomicU64::new(0);

fn in_window(t: f64) -> bool {
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

impl Record {
    /// What keeping this record costs, in bytes.
    fn weight(&self) -> usize {
        let strings = match self {
            Record::Span { fields, .. } | Record::Instant { fields, .. } => fields.capacity(),
            Record::Poll { name, fields, .. } => name.capacity() + fields.capacity(),
            Record::Thread { name, .. } => name.capacity(),
        };
        std::mem::size_of::<Record>() + strings
    }
}

fn push(r: Record) {
    let weight = r.weight();
    let mut b = Buffer::lock();
    if b.records.len() >= MAX_TRACE_EVENTS || b.bytes + weight > MAX_TRACE_BYTES {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    b.bytes += weight;
    b.records.push(r);
}

/// Names this thread in the current window's output, once.
fn note_thread(tid: u64) {
    let seq = WINDOW_SEQ.load(Ordering::Relaxed);
    if NAMED_IN.with(|n| n.get()) != seq {
        NAMED_IN.with(|n| n.set(seq));
        let name = std::thread::current()
            .name()
            .map_or_else(|| format!("thread {tid}"), str::to_owned);
        push(Record::Thread { tid, name });
    }
}

#[derive(Default)]
struct Fields(String);

/// Appends to a string up to a limit and counts what it left out, so that a huge value
/// is never copied whole.
struct Bounded<'a> {
    out: &'a mut String,
    room: usize,
    cut: usize,
}

impl std::fmt::Write for Bounded<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if s.len() <= self.room {
            self.out.push_str(s);
            self.room -= s.len();
        } else {
            let mut take = self.room;
            while !s.is_char_boundary(take) {
                take -= 1;
            }
            self.out.push_str(&s[..take]);
            self.room = 0;
            self.cut += s.len() - take;
        }
        Ok(())
    }
}

impl Fields {
    /// Appends `name` and `value`, the value cut to [`MAX_FIELD_BYTES`] and then marked
    /// with how many bytes were left out.
    fn push(&mut self, name: &str, value: std::fmt::Arguments<'_>) {
        if !self.0.is_empty() {
            self.0.push('\u{1f}');
        }
        self.0.push_str(name);
        self.0.push('\u{1e}');
        let mut w = Bounded {
            out: &mut self.0,
            room: MAX_FIELD_BYTES,
            cut: 0,
        };
        let _ = w.write_fmt(value);
        let cut = w.cut;
        if cut > 0 {
            let _ = write!(self.0, "…[{cut} bytes cut]");
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field.name(), format_args!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), format_args!("{value}"));
    }
}

fn is_task(target: &str, name: &str) -> bool {
    target == "tokio::task" && name == "runtime.spawn"
}

/// tokio's own instrumentation (resources, async ops, wakers) is tokio-console's data:
/// left out of the timeline, except task spans, whose polls are drawn.
fn is_tokio_internal(target: &str) -> bool {
    target.starts_with("runtime::") || target.starts_with("tokio::")
}

impl<S> Layer<S> for TraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !ACTIVE.load(Ordering::Relaxed) {
            return;
        }
        let meta = attrs.metadata();
        if is_tokio_internal(meta.target()) && !is_task(meta.target(), meta.name()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let tid = tid();
        note_thread(tid);
        span.extensions_mut().insert(Open {
            fields: fields.0,
            tid,
            start: now_us(),
            entered: None,
        });
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if !ACTIVE.load(Ordering::Relaxed) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        if !is_task(span.metadata().target(), span.metadata().name()) {
            return;
        }
        let now = now_us();
        let mut ext = span.extensions_mut();
        match ext.get_mut::<Open>() {
            Some(open) => open.entered = Some(now),
            // A task spawned before the window: its polls count too, unnamed.
            None => ext.insert(Open {
                fields: String::new(),
                tid: tid(),
                start: now,
                entered: Some(now),
            }),
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if !ACTIVE.load(Ordering::Relaxed) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let meta = span.metadata();
        if !is_task(meta.target(), meta.name()) {
            return;
        }
        let mut ext = span.extensions_mut();
        let Some(open) = ext.get_mut::<Open>() else {
            return;
        };
        let Some(start) = open.entered.take() else {
            return;
        };
        if !in_window(start) {
            return;
        }
        let tid = tid();
        note_thread(tid);
        let name = task_name(&open.fields).unwrap_or_else(|| "task poll".to_owned());
        push(Record::Poll {
            name,
            fields: open.fields.clone(),
            tid,
            start,
            end: now_us(),
        });
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !ACTIVE.load(Ordering::Relaxed) {
            return;
        }
        if is_tokio_internal(event.metadata().target()) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let tid = tid();
        note_thread(tid);
        push(Record::Instant {
            name: event.metadata().name(),
            target: event.metadata().target(),
            fields: fields.0,
            tid,
            ts: now_us(),
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if !ACTIVE.load(Ordering::Relaxed) {
            return;
        }
        let Some(span) = ctx.span(&id) else { return };
        let meta = span.metadata();
        if is_task(meta.target(), meta.name()) {
            return;
        }
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        if !in_window(open.start) {
            return;
        }
        push(Record::Span {
            id: id.into_u64(),
            name: meta.name(),
            target: meta.target(),
            fields: open.fields,
            tid: open.tid,
            start: open.start,
            end: now_us(),
        });
    }
}

fn field<'a>(fields: &'a str, name: &str) -> Option<&'a str> {
    fields
        .split('\u{1f}')
        .filter_map(|kv| kv.split_once('\u{1e}'))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// A tokio task span's name: its `task.name`, else where it was spawned.
fn task_name(fields: &str) -> Option<String> {
    match field(fields, "task.name").filter(|n| !n.is_empty()) {
        Some(name) => Some(name.to_owned()),
        None => {
            let file = field(fields, "loc.file")?;
            let line = field(fields, "loc.line").unwrap_or("?");
            Some(format!("task spawned at {file}:{line}"))
        }
    }
}

fn args_json(fields: &str) -> serde_json::Map<String, serde_json::Value> {
    fields
        .split('\u{1f}')
        .filter_map(|kv| kv.split_once('\u{1e}'))
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
        .collect()
}

/// Whether `/trace` can record: the layer is installed, or how to install it.
pub(crate) fn available() -> Result<(), String> {
    if INSTALLED.load(Ordering::Relaxed) {
        Ok(())
    } else {
        Err(NOT_INSTALLED.to_owned())
    }
}

const NOT_INSTALLED: &str = "no trace layer in this process: add diag::trace_layer() to the \
     application's tracing subscriber (tracing_subscriber::registry().with(diag::trace_layer())\
     .with(...).init()); it records nothing outside a /trace window";

/// `GET /trace?seconds=N`.
pub(crate) async fn trace(State(d): State<Diag>, RawQuery(q): RawQuery) -> Response {
    match run(&d, &Params::parse(q.as_deref())).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(d: &Diag, params: &Params) -> Result<Response, ApiError> {
    let max = d.cfg().max_seconds.min(MAX_SECONDS);
    let seconds = params.int_in("seconds", DEFAULT_SECONDS.min(max), 1, max)?;
    available().map_err(ApiError::NotImplemented)?;
    let _window = WINDOW.try_lock().map_err(|_| {
        ApiError::Conflict(
            "a trace window is already open (one at a time); retry when it ends".to_owned(),
        )
    })?;
    let _permit = d.heavy()?;
    Buffer::lock().clear();
    // Whatever ends this handler (the window's end, or the client going away and hyper
    // dropping it mid-window), the records go with it, not with the next window.
    let _release = ReleaseOnDrop;
    DROPPED.store(0, Ordering::Relaxed);
    WINDOW_SEQ.fetch_add(1, Ordering::Relaxed);
    let started = SystemTime::now();
    let start_us = now_us();
    WINDOW_START.store(start_us.to_bits(), Ordering::Relaxed);
    let open = OpenWindow::open();
    let shutdown = d.cfg().shutdown.clone();
    let ended_early = tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(seconds)) => false,
        () = shutdown.triggered() => true,
    };
    drop(open);
    let end_us = now_us();
    let records = Buffer::lock().take();
    let dropped = DROPPED.load(Ordering::Relaxed);
    let body = tokio::task::spawn_blocking(move || {
        let program = std::env::args().next().unwrap_or_default();
        let window = Window {
            started,
            start_us,
            end_us,
            dropped,
            ended_early,
        };
        render(&records, &window, std::process::id(), &program)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("building the trace failed: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"trace.json\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// Empties the window's buffer when dropped.
struct ReleaseOnDrop;

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        Buffer::lock().clear();
    }
}

/// What a window was: when it started (wall clock, and the trace clock in microseconds),
/// when it ended, what it dropped and whether shutdown ended it.
#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) started: SystemTime,
    pub(crate) start_us: f64,
    pub(crate) end_us: f64,
    pub(crate) dropped: u64,
    pub(crate) ended_early: bool,
}

/// The window's records as Chrome trace-event JSON, for the process `pid` running
/// `program`.
pub(crate) fn render(records: &[Record], window: &Window, pid: u32, program: &str) -> String {
    use serde_json::{Value, json};
    let Window {
        started,
        start_us,
        end_us,
        dropped,
        ended_early,
    } = *window;
    // Each event is written out as it is made, so the answer's peak memory is the text
    // itself, not a tree of every event beside it.
    let mut out = String::from("{\"traceEvents\":[");
    let mut first = true;
    let mut emit = |event: Value| {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        out.push_str(&event.to_string());
    };
    let mut threads: BTreeMap<u64, &str> = BTreeMap::new();
    emit(
        json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
        "args": {"name": program}}),
    );
    // Times relative to the window's start, in microseconds.
    let rel = |t: f64| ((t - start_us) * 1000.0).round() / 1000.0;
    for r in records {
        match r {
            Record::Thread { tid, name } => {
                threads.insert(*tid, name);
            }
            Record::Span {
                id,
                name,
                target,
                fields,
                tid,
                start,
                end,
            } => {
                let id = format!("{id:#x}");
                let mut args = args_json(fields);
                args.insert("target".into(), Value::String((*target).to_owned()));
                args.insert(
                    "duration_us".into(),
                    json!(((end - start) * 1000.0).round() / 1000.0),
                );
                emit(json!({"ph": "b", "cat": "span", "name": name, "id": id,
                    "ts": rel(*start), "pid": pid, "tid": tid, "args": Value::Object(args)}));
                emit(json!({"ph": "e", "cat": "span", "name": name, "id": id,
                    "ts": rel(*end), "pid": pid, "tid": tid}));
            }
            Record::Poll {
                name,
                fields,
                tid,
                start,
                end,
            } => {
                emit(json!({"ph": "X", "cat": "poll", "name": name,
                    "ts": rel(*start), "dur": ((end - start) * 1000.0).round() / 1000.0,
                    "pid": pid, "tid": tid, "args": Value::Object(args_json(fields))}));
            }
            Record::Instant {
                name,
                target,
                fields,
                tid,
                ts,
            } => {
                let mut args = args_json(fields);
                args.insert("target".into(), Value::String((*target).to_owned()));
                let name: String = field(fields, "message")
                    .map_or_else(|| (*name).to_owned(), |m| m.chars().take(80).collect());
                emit(json!({"ph": "i", "s": "t", "cat": "event", "name": name,
                    "ts": rel(*ts), "pid": pid, "tid": tid, "args": Value::Object(args)}));
            }
        }
    }
    for (tid, name) in threads {
        emit(
            json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
            "args": {"name": name}}),
        );
    }
    let other = json!({
        "producer": "diag /debug/pprof/trace",
        "format": "Chrome trace-event JSON (Perfetto, chrome://tracing); not Go's trace format",
        "start": utc(started),
        "start_unix_nanos": unix_nanos(started),
        "window_us": ((end_us - start_us) * 1000.0).round() / 1000.0,
        "events_kept": records.len(),
        "events_dropped": dropped,
        "event_cap": MAX_TRACE_EVENTS,
        "byte_budget": MAX_TRACE_BYTES,
        "ended_early_by_shutdown": ended_early,
    });
    out.push_str("],\"displayTimeUnit\":\"ms\",\"otherData\":");
    out.push_str(&other.to_string());
    out.push('}');
    out
}
