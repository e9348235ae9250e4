//! `/trace`'s Chrome trace-event writer.

use std::time::{Duration, SystemTime};

use super::check;
use crate::trace::{Record, Window, render};

#[test]
fn trace_json() {
    let f = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}\u{1e}{v}"))
            .collect::<Vec<_>>()
            .join("\u{1f}")
    };
    let records = vec![
        Record::Thread {
            tid: 11,
            name: "tokio-rt-worker".to_owned(),
        },
        Record::Span {
            id: 0x2a,
            name: "request",
            target: "demo",
            fields: f(&[("method", "GET"), ("uri", "/work?n=3")]),
            tid: 11,
            start: 1_000.0,
            end: 1_750.5,
        },
        Record::Poll {
            name: "request".to_owned(),
            fields: f(&[("task.id", "7")]),
            tid: 11,
            start: 1_001.25,
            end: 1_020.125,
        },
        Record::Instant {
            name: "event demo/src/main.rs:90",
            target: "demo",
            fields: f(&[("message", "served"), ("status", "200")]),
            tid: 11,
            ts: 1_749.0,
        },
    ];
    let window = Window {
        started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_115_200),
        start_us: 900.0,
        end_us: 2_900.0,
        dropped: 1,
        ended_early: false,
    };
    let mut json = render(&records, &window, 4242, "/usr/local/bin/demo");
    json.push('\n');
    check("trace.json", &json);
}
