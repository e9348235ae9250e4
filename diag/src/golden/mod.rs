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
            "{}: {e}; create it with DIAG_BLESS=1 (see diag/src/golden/mod.rs)",
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

/// Two executable mappings, the main binary's first (with a build id) and libc's: what
/// the encoders take instead of reading `/proc/self/maps`.
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
pub(crate) fn mappings() -> Vec<crate::maps::ProcMapping> {
    vec![
        crate::maps::ProcMapping {
            start: 0x5555_0000_0000,
            end: 0x5555_0100_0000,
            offset: 0x1000,
            path: "/usr/local/bin/demo".to_owned(),
            build_id: "4f1c2a9e0b7d3c5a".to_owned(),
        },
        crate::maps::ProcMapping {
            start: 0x7f00_0000_0000,
            end: 0x7f00_0020_0000,
            offset: 0,
            path: "/usr/lib/x86_64-linux-gnu/libc.so.6".to_owned(),
            build_id: String::new(),
        },
    ]
}

/// A task-dump frame at `ip` with its (function, file, line) lines, innermost first.
#[cfg(feature = "taskdump")]
pub(crate) fn frame(ip: u64, lines: &[(&str, &str, u32)]) -> crate::tasks::dump::Frame {
    crate::tasks::dump::Frame {
        ip,
        lines: std::sync::Arc::from(
            lines
                .iter()
                .map(|(function, file, line)| crate::proto::Line {
                    function: (*function).to_owned(),
                    file: (*file).to_owned(),
                    line: *line,
                })
                .collect::<Vec<_>>(),
        ),
    }
}

#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
mod cpu;
#[cfg(feature = "taskdump")]
mod tasks;
#[cfg(feature = "trace")]
mod trace;
#[cfg(feature = "taskdump")]
mod wall;
