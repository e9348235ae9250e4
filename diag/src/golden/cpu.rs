//! The CPU profile's encoders: profile.proto, folded stacks and the SVG flamegraph.

use std::collections::HashMap;
use std::sync::Arc;

use super::{check, mappings, profile_listing};
use crate::flamegraph::{self, PREFIX_SEP};
use crate::proto::{Line, ProfileBuilder};
use crate::symbols::Resolved;

fn line(function: &str, file: &str, line: u32) -> Line {
    Line {
        function: function.to_owned(),
        file: file.to_owned(),
        line,
    }
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
