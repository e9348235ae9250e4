//! The recording [`Layer`] and its per-layer [`Filter`], open only while a window is.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::MAX_FIELD_BYTES;
use super::render::Record;
use super::window::{ACTIVE, WINDOW_SEQ, in_window, now_us, push};

/// The per-layer filter [`layer()`](super::layer()) wears: open only while a `/trace` window is.
///
/// Outside a window it answers "never" for every callsite and `OFF` as its level, so it
/// adds nothing to what the other layers enable. Inside one, callsites that are never
/// recorded (tokio's resource, async-op and waker instrumentation) stay closed; the rest
/// ask one atomic load each time, so recording stops the moment the window ends.
#[derive(Debug)]
pub struct Filter {
    _private: (),
}

impl Filter {
    pub(super) fn new() -> Self {
        Self { _private: () }
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for Filter {
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

/// The recording layer inside [`layer()`](super::layer())'s filter.
#[derive(Debug)]
pub struct Layer {
    _private: (),
}

impl Layer {
    pub(super) fn new() -> Self {
        Self { _private: () }
    }
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

thread_local! {
    static TID: Cell<u64> = const { Cell::new(0) };
    /// The window this thread was last named in.
    static NAMED_IN: Cell<u64> = const { Cell::new(0) };
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

/// A span's or an event's fields: `name\u{1e}value` pairs joined by `\u{1f}`.
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

impl<S> tracing_subscriber::Layer<S> for Layer
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

/// The value of field `name` in `fields` (as [`Fields`] writes them), without quotes.
pub(super) fn field<'a>(fields: &'a str, name: &str) -> Option<&'a str> {
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
