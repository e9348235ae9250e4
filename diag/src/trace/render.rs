//! A window's records as Chrome trace-event JSON (what Perfetto and chrome://tracing
//! open): a pure function of the records, the window, the pid and the program's name.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::layer::field;
use super::{MAX_TRACE_BYTES, MAX_TRACE_EVENTS};
use crate::util::{unix_nanos, utc};

/// One recorded thing, in microseconds since the trace clock started.
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

impl Record {
    /// What keeping this record costs, in bytes.
    pub(super) fn weight(&self) -> usize {
        let strings = match self {
            Record::Span { fields, .. } | Record::Instant { fields, .. } => fields.capacity(),
            Record::Poll { name, fields, .. } => name.capacity() + fields.capacity(),
            Record::Thread { name, .. } => name.capacity(),
        };
        std::mem::size_of::<Record>() + strings
    }
}

/// What a window was: when it started (wall clock, and the trace clock in microseconds),
/// when it ended, what it dropped and whether shutdown ended it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) started: SystemTime,
    pub(crate) start_us: f64,
    pub(crate) end_us: f64,
    pub(crate) dropped: u64,
    pub(crate) ended_early: bool,
}

fn args_json(fields: &str) -> Map<String, Value> {
    fields
        .split('\u{1f}')
        .filter_map(|kv| kv.split_once('\u{1e}'))
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect()
}

/// Microseconds rounded to nanoseconds.
fn round_us(us: f64) -> f64 {
    (us * 1000.0).round() / 1000.0
}

/// The window's records as Chrome trace-event JSON, for the process `pid` running
/// `program`.
pub(crate) fn render(records: &[Record], window: &Window, pid: u32, program: &str) -> String {
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
    for r in records {
        match r {
            Record::Thread { tid, name } => {
                threads.insert(*tid, name);
            }
            _ => events(r, window.start_us, pid, &mut emit),
        }
    }
    for (tid, name) in threads {
        emit(
            json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
            "args": {"name": name}}),
        );
    }
    out.push_str("],\"displayTimeUnit\":\"ms\",\"otherData\":");
    out.push_str(&other_data(window, records.len()).to_string());
    out.push('}');
    out
}

/// The events of one span, poll or event record, times relative to `start_us`.
fn events(r: &Record, start_us: f64, pid: u32, emit: &mut impl FnMut(Value)) {
    let rel = |t: f64| round_us(t - start_us);
    match r {
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
            args.insert("duration_us".into(), json!(round_us(end - start)));
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
                "ts": rel(*start), "dur": round_us(end - start),
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
        Record::Thread { .. } => {}
    }
}

/// The answer's `otherData`: what the window was and what it kept.
fn other_data(window: &Window, kept: usize) -> Value {
    json!({
        "producer": "diag /debug/pprof/trace",
        "format": "Chrome trace-event JSON (Perfetto, chrome://tracing); not Go's trace format",
        "start": utc(window.started),
        "start_unix_nanos": unix_nanos(window.started),
        "window_us": round_us(window.end_us - window.start_us),
        "events_kept": kept,
        "events_dropped": window.dropped,
        "event_cap": MAX_TRACE_EVENTS,
        "byte_budget": MAX_TRACE_BYTES,
        "ended_early_by_shutdown": window.ended_early,
    })
}
