//! Golden files: what each encoder writes for a fixed input, kept under `diag/tests/data/`.
//!
//! A changed byte fails the test and shows where. When a change is meant, regenerate the
//! files on purpose and review the diff:
//!
//! ```text
//! DIAG_BLESS=1 cargo test -p diag --all-features --lib golden
//! git diff diag/tests/data/
//! ```
//!
//! profile.proto is kept as text: every field of the wire format in order, with its
//! number, its profile.proto name and its value (a lossless listing, so any changed byte of
//! the encoding changes a line), and the string table at the end.

use std::path::PathBuf;

/// Compares `actual` with the golden file `name`, or writes it under `DIAG_BLESS=1`.
pub(crate) fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    if std::env::var_os("DIAG_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with DIAG_BLESS=1 (see diag/src/golden.rs)",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let (line, (want, got)) = expected
        .lines()
        .chain(std::iter::repeat("<end of file>"))
        .zip(actual.lines().chain(std::iter::repeat("<end of output>")))
        .enumerate()
        .find(|(_, (e, a))| e != a)
        .unwrap_or((0, ("(line endings differ)", "")));
    panic!(
        "{} differs from what the encoder wrote, first at line {}:\n  golden: {want}\n  now:    {got}\n\
         If the change is meant: DIAG_BLESS=1 cargo test -p diag --all-features --lib golden",
        path.display(),
        line + 1
    );
}

#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
/// profile.proto's fields by message: (number, name, what it holds).
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Packed,
    Str,
    Msg(&'static [(u64, &'static str, Kind)]),
}

#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
const VALUE_TYPE: &[(u64, &str, Kind)] = &[(1, "type", Kind::Int), (2, "unit", Kind::Int)];
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
const LABEL: &[(u64, &str, Kind)] = &[
    (1, "key", Kind::Int),
    (2, "str", Kind::Int),
    (3, "num", Kind::Int),
    (4, "num_unit", Kind::Int),
];
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
const SAMPLE: &[(u64, &str, Kind)] = &[
    (1, "location_id", Kind::Packed),
    (2, "value", Kind::Packed),
    (3, "label", Kind::Msg(LABEL)),
];
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
const MAPPING: &[(u64, &str, Kind)] = &[
    (1, "id", Kind::Int),
    (2, "memory_start", Kind::Int),
    (3, "memory_limit", Kind::Int),
    (4, "file_offset", Kind::Int),
    (5, "filename", Kind::Int),
    (6, "build_id", Kind::Int),
    (7, "has_functions", Kind::Int),
    (8, "has_filenames", Kind::Int),
    (9, "has_line_numbers", Kind::Int),
    (10, "has_inline_frames", Kind::Int),
];
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
const LINE: &[(u64, &str, Kind)] = &[
    (1, "function_id", Kind::Int),
    (2, "line", Kind::Int),
    (3, "column", Kind::Int),
];
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
const LOCATION: &[(u64, &str, Kind)] = &[
    (1, "id", Kind::Int),
    (2, "mapping_id", Kind::Int),
    (3, "address", Kind::Int),
    (4, "line", Kind::Msg(LINE)),
    (5, "is_folded", Kind::Int),
];
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
const FUNCTION: &[(u64, &str, Kind)] = &[
    (1, "id", Kind::Int),
    (2, "name", Kind::Int),
    (3, "system_name", Kind::Int),
    (4, "filename", Kind::Int),
    (5, "start_line", Kind::Int),
];
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
const PROFILE: &[(u64, &str, Kind)] = &[
    (1, "sample_type", Kind::Msg(VALUE_TYPE)),
    (2, "sample", Kind::Msg(SAMPLE)),
    (3, "mapping", Kind::Msg(MAPPING)),
    (4, "location", Kind::Msg(LOCATION)),
    (5, "function", Kind::Msg(FUNCTION)),
    (6, "string_table", Kind::Str),
    (7, "drop_frames", Kind::Int),
    (8, "keep_frames", Kind::Int),
    (9, "time_nanos", Kind::Int),
    (10, "duration_nanos", Kind::Int),
    (11, "period_type", Kind::Msg(VALUE_TYPE)),
    (12, "period", Kind::Int),
    (13, "comment", Kind::Packed),
    (14, "default_sample_type", Kind::Int),
];

#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
fn varint(buf: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = buf[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
    }
    panic!("a varint longer than 10 bytes at {at}");
}

#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
/// Lists every field of `buf` (a message of `schema`) in wire order, one per line.
fn listing(
    buf: &[u8],
    schema: &'static [(u64, &'static str, Kind)],
    depth: usize,
    out: &mut String,
) {
    use std::fmt::Write as _;
    let pad = "  ".repeat(depth);
    let mut at = 0;
    let mut strings = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at);
        let (number, wire) = (key >> 3, key & 7);
        let (name, kind) = schema
            .iter()
            .find(|(n, _, _)| *n == number)
            .map_or(("?", Kind::Int), |(_, name, kind)| (*name, *kind));
        match wire {
            0 => {
                let v = varint(buf, &mut at);
                if matches!(
                    name,
                    "address" | "memory_start" | "memory_limit" | "file_offset"
                ) {
                    writeln!(out, "{pad}{number} {name}: {v:#x}").unwrap();
                } else {
                    writeln!(out, "{pad}{number} {name}: {v}").unwrap();
                }
            }
            2 => {
                let len = varint(buf, &mut at) as usize;
                let body = &buf[at..at + len];
                at += len;
                match kind {
                    Kind::Msg(inner) => {
                        writeln!(out, "{pad}{number} {name} {{").unwrap();
                        listing(body, inner, depth + 1, out);
                        writeln!(out, "{pad}}}").unwrap();
                    }
                    Kind::Packed => {
                        let mut i = 0;
                        let mut values = Vec::new();
                        while i < body.len() {
                            values.push(varint(body, &mut i).to_string());
                        }
                        writeln!(
                            out,
                            "{pad}{number} {name} (packed): [{}]",
                            values.join(", ")
                        )
                        .unwrap();
                    }
                    Kind::Str => {
                        let text = String::from_utf8_lossy(body);
                        writeln!(out, "{pad}{number} {name}[{strings}]: {text:?}").unwrap();
                        strings += 1;
                    }
                    Kind::Int => {
                        writeln!(out, "{pad}{number} {name}: bytes {body:02x?}").unwrap();
                    }
                }
            }
            other => panic!(
                "wire type {other} in field {number} at byte {at}: profile.proto uses 0 and 2"
            ),
        }
    }
}

#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
/// A gzipped or plain profile.proto as its golden listing.
pub(crate) fn profile_listing(bytes: &[u8]) -> String {
    let plain = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
        out
    } else {
        bytes.to_vec()
    };
    let mut out = format!("# profile.proto, {} bytes uncompressed\n", plain.len());
    listing(&plain, PROFILE, 0, &mut out);
    out
}

#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
mod profiles {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::{check, profile_listing};
    use crate::flamegraph::{self, PREFIX_SEP};
    use crate::maps::ProcMapping;
    use crate::proto::{Line, ProfileBuilder};
    use crate::symbols::Resolved;

    fn line(function: &str, file: &str, line: u32) -> Line {
        Line {
            function: function.to_owned(),
            file: file.to_owned(),
            line,
        }
    }

    pub(super) fn mappings() -> Vec<ProcMapping> {
        vec![
            ProcMapping {
                start: 0x5555_0000_0000,
                end: 0x5555_0100_0000,
                offset: 0x1000,
                path: "/usr/local/bin/demo".to_owned(),
                build_id: "4f1c2a9e0b7d3c5a".to_owned(),
            },
            ProcMapping {
                start: 0x7f00_0000_0000,
                end: 0x7f00_0020_0000,
                offset: 0,
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
                build_id: String::new(),
            },
        ]
    }

    /// Three addresses: a leaf with an inlined call (two lines), its caller, and a libc
    /// frame with no lines.
    pub(super) fn symbols() -> HashMap<usize, Resolved> {
        let mut s: HashMap<usize, Resolved> = HashMap::new();
        s.insert(
            0x5555_0000_1234,
            Arc::from(vec![
                line(
                    "core::hint::black_box",
                    "/rustc/library/core/src/hint.rs",
                    389,
                ),
                line("demo::work::spin_cpu", "demo/src/work.rs", 42),
            ]),
        );
        s.insert(
            0x5555_0000_2000,
            Arc::from(vec![line("demo::work::handler", "demo/src/work.rs", 77)]),
        );
        s.insert(0x7f00_0000_0400, Arc::from(Vec::<Line>::new()));
        s
    }

    /// A stack (addresses leaf first), its count and its labels.
    type Stack<'a> = (&'a [usize], i64, &'a [(&'a str, &'a str)]);

    #[test]
    fn cpu_profile_proto() {
        let symbols = symbols();
        let mut b = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            10_101_010,
            mappings(),
        );
        b.time(1_764_115_200_000_000_000, 5_000_000_000);
        b.comment("diag CPU profile: 99 Hz, 2 threads");
        b.default_sample_type("cpu");
        let stacks: [Stack<'_>; 3] = [
            (
                &[0x5555_0000_1234, 0x5555_0000_2000],
                3,
                &[("thread", "tokio-rt-worker"), ("http.route", "/work")],
            ),
            (&[0x5555_0000_2000], 1, &[("thread", "tokio-rt-worker")]),
            (
                &[0x7f00_0000_0400, 0x5555_0000_2000],
                2,
                &[("thread", "main")],
            ),
        ];
        for (ips, count, labels) in stacks {
            let locations = ips
                .iter()
                .map(|ip| b.location(*ip as u64, &symbols[ip]))
                .collect();
            b.sample(locations, vec![count, count * 10_101_010], labels);
        }
        check("cpu.pb.txt", &profile_listing(&b.encode()));
    }

    fn folded() -> Vec<String> {
        let symbols = symbols();
        let prefix = format!("http.route=/work{PREFIX_SEP}tokio-rt-worker");
        let stacks: Vec<(&str, &[usize], i64)> = vec![
            (&prefix, &[0x5555_0000_1234, 0x5555_0000_2000], 3),
            ("tokio-rt-worker", &[0x5555_0000_2000], 1),
            ("main", &[0x7f00_0000_0400, 0x5555_0000_2000], 2),
            // Folds onto the first line: merged.
            (&prefix, &[0x5555_0000_1234, 0x5555_0000_2000], 4),
        ];
        flamegraph::fold(stacks, &symbols)
    }

    #[test]
    fn folded_stacks() {
        check("cpu.folded", &(folded().join("\n") + "\n"));
    }

    #[test]
    fn flamegraph_svg() {
        let labels = flamegraph::Labels {
            title: "CPU flamegraph",
            subtitle: "demo, 5 s at 99 Hz, 2025-11-26 00:00:00 UTC",
            count_name: "samples",
        };
        let svg = flamegraph::render(&folded(), &labels).unwrap();
        check("cpu.svg", &String::from_utf8(svg).unwrap());
    }
}

#[cfg(feature = "taskdump")]
mod task_dumps {
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};

    use super::{check, profile_listing};
    use crate::proto::Line;
    use crate::tasks::dump::{Frame, Missing, Silence, TaskDump, TaskTrace};
    use crate::tasks::http::{to_grouped_text, to_per_task_text, to_proto};
    use crate::tasks::registry::Outcome;

    fn frame(ip: u64, lines: &[(&str, &str, u32)]) -> Frame {
        Frame {
            ip,
            lines: Arc::from(
                lines
                    .iter()
                    .map(|(f, file, line)| Line {
                        function: (*f).to_owned(),
                        file: (*file).to_owned(),
                        line: *line,
                    })
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn dump() -> TaskDump {
        let sleep = || {
            vec![
                frame(
                    0x5555_0000_3000,
                    &[(
                        "tokio::time::sleep::Sleep::poll",
                        "tokio/src/time/sleep.rs",
                        450,
                    )],
                ),
                frame(
                    0x5555_0000_4000,
                    &[
                        ("demo::work::sleep::{{closure}}", "demo/src/work.rs", 120),
                        ("demo::work::handler::{{closure}}", "demo/src/work.rs", 80),
                    ],
                ),
            ]
        };
        let task = |id: u64, name: &str, stacks: Vec<Vec<Frame>>, outcome| TaskTrace {
            id,
            tokio_id: Some(format!("{}", id + 100)),
            name: name.into(),
            location: "demo/src/main.rs:200:5".to_owned(),
            age: Duration::from_millis(1_500 * id),
            waited: Duration::from_millis(250 * id),
            stacks,
            outcome,
        };
        TaskDump {
            taken: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_115_200),
            at: Instant::now(),
            took: Duration::from_millis(3),
            timeout: Duration::from_secs(5),
            tasks: vec![
                task(1, "request", vec![sleep()], Outcome::Waiting),
                task(2, "request", vec![sleep()], Outcome::Waiting),
                task(3, "ticker", vec![], Outcome::Waiting),
                task(4, "done", vec![], Outcome::Completed),
                task(5, "two leaves", vec![sleep(), sleep()], Outcome::Waiting),
            ],
            missing: vec![Missing {
                id: 6,
                name: "busy".into(),
                location: "demo/src/work.rs:10:1".to_owned(),
                age: Duration::from_secs(9),
                why: Silence::InPoll(Duration::from_millis(5_200)),
            }],
            untraced: 2,
        }
    }

    const HEADER: &str = "tokio task dump: 5 tasks, taken 2025-11-26 00:00:00 UTC (0 s ago; dumps at \
         most every 1 s), took 3 ms";

    #[test]
    fn goroutine_debug_1() {
        check("goroutine-debug1.txt", &to_grouped_text(&dump(), HEADER));
    }

    #[test]
    fn goroutine_debug_2() {
        check("goroutine-debug2.txt", &to_per_task_text(&dump(), HEADER));
    }

    #[test]
    fn goroutine_proto() {
        let bytes = to_proto(&dump(), HEADER, super::profiles::mappings()).unwrap();
        check("goroutine.pb.txt", &profile_listing(&bytes));
    }
}

#[cfg(feature = "trace")]
mod traces {
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
}
