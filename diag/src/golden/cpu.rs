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

/// A whole CPU profile as the engine hands it over: stacks with and without labels (one
/// with a `thread` key the encoder leaves to the sample's own), a stack with no address
/// (left out), losses, a shared sampler, the recorder's short past, and a shutdown.
#[cfg(feature = "cpu")]
fn cpu_profile() -> crate::cpu::CpuProfile {
    use std::time::{Duration, Instant, SystemTime};

    use crate::cpu::engine::{Losses, Mark, Sample, Window};
    use crate::cpu::{Capture, CpuProfile, Past};
    use crate::labels::LabelSet;

    let period = 10_101_010;
    let sample = |ips: &[usize], thread: &str, label, count| Sample {
        ips: ips.to_vec(),
        thread: thread.to_owned(),
        label,
        count,
        weight_ns: count * period,
    };
    let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let mono = Instant::now();
    let window = Window {
        samples: vec![
            sample(
                &[0x5555_0000_1234, 0x5555_0000_2000],
                "tokio-rt-worker",
                1,
                3,
            ),
            sample(&[0x5555_0000_2000], "tokio-rt-worker", 0, 1),
            sample(&[0x7f00_0000_0400, 0x5555_0000_2000], "main", 2, 2),
            sample(&[], "main", 0, 1),
        ],
        start: Mark {
            wall: at(1_764_115_200),
            mono,
            cpu: Duration::from_secs(1),
        },
        end: Mark {
            wall: at(1_764_115_205),
            mono: mono + Duration::from_secs(5),
            cpu: Duration::from_millis(1_070),
        },
        frequency: 99,
        peak_frequency: 199,
        losses: Losses {
            ring_full: 1,
            foreign_signals: 2,
            ..Losses::default()
        },
    };
    let capture = Capture {
        window,
        ended_early: true,
        recorded: Some(Past {
            kept_from: at(1_764_115_202),
            asked_from: Some(at(1_764_115_140)),
        }),
    };
    let labels = [
        (
            1,
            LabelSet::new([("http.route", "/work"), ("http.method", "GET")]),
        ),
        (
            2,
            LabelSet::new([("thread", "shadowed"), ("tenant", "acme")]),
        ),
    ];
    let labels = labels.map(|(id, set)| (id, Arc::new(set))).into();
    CpuProfile::assemble(capture, symbols(), labels)
}

#[cfg(feature = "cpu")]
#[test]
fn cpu_profile_encoded_proto() {
    let bytes = cpu_profile().to_proto(mappings()).unwrap();
    check("cpu-profile.pb.txt", &profile_listing(&bytes));
}

#[cfg(feature = "cpu")]
#[test]
fn cpu_profile_folded_by_tagroot() {
    let mut profile = cpu_profile();
    profile.set_tagroot(vec!["http.route".to_owned(), "tenant".to_owned()]);
    check(
        "cpu-tagroot.folded",
        &(profile.to_folded().join("\n") + "\n"),
    );
}
