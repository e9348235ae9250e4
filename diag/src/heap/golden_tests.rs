//! Golden files for every heap output, from a fixed jemalloc dump, fixed symbols and fixed
//! mappings: profile.proto (as its listing), folded stacks, the flamegraph, and
//! `/heap/stats` in both formats. Regenerate with
//! `DIAG_BLESS=1 cargo test -p diag --all-features --lib heap::golden` and review the diff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::dump;
use super::profile::{Format, HeapProfile, Kind, SampleType, Taken};
use super::stats::{self, Stats, StatsFormat};
use super::unwinder::Unwinder;
use crate::golden::{check, profile_listing};
use crate::maps::ProcMapping;
use crate::proto::Line;
use crate::symbols::Resolved;

/// Three stacks: two through the allocator's frames (dropped, and then merged, as they
/// end in the same caller), one without.
const DUMP: &str = "heap_v2/524288
  t*: 9: 5767168 [30: 12582912]
  t0: 9: 5767168 [30: 12582912] main
@ 0x7f0000000100 0x7f0000000200 0x555500001000 0x555500002000 0x555500003000
  t*: 4: 4194304 [10: 10485760]
  t0: 4: 4194304 [10: 10485760]
@ 0x7f0000000100 0x555500001000 0x555500002000 0x555500003000
  t*: 1: 1048576 [2: 2097152]
@ 0x555500004000 0x555500003000
  t*: 4: 524288 [18: 1179648]

MAPPED_LIBRARIES:
555500000000-555501000000 r-xp 00001000 fe:00 1   /usr/local/bin/demo
";

fn line(function: &str, file: &str, line: u32) -> Line {
    Line {
        function: function.to_owned(),
        file: file.to_owned(),
        line,
    }
}

fn symbols() -> HashMap<usize, Resolved> {
    let mut s: HashMap<usize, Resolved> = HashMap::new();
    let mut put = |ip: usize, lines: Vec<Line>| {
        s.insert(ip, Arc::from(lines));
    };
    put(
        0x7f00_0000_0100,
        vec![line("_rjem_je_prof_backtrace", "src/prof.c", 120)],
    );
    put(
        0x7f00_0000_0200,
        vec![line("_rjem_malloc", "src/jemalloc.c", 2500)],
    );
    put(
        0x5555_0000_1000,
        vec![
            line(
                "alloc::raw_vec::RawVec<T>::allocate_in",
                "/rustc/library/alloc/src/raw_vec.rs",
                480,
            ),
            line("demo::work::hold_memory", "demo/src/work.rs", 61),
        ],
    );
    put(
        0x5555_0000_2000,
        vec![line("demo::work::handler", "demo/src/work.rs", 77)],
    );
    put(
        0x5555_0000_3000,
        vec![line("demo::main", "demo/src/main.rs", 40)],
    );
    put(
        0x5555_0000_4000,
        vec![line("demo::store::insert", "demo/src/store/mod.rs", 12)],
    );
    s
}

fn mappings() -> Vec<ProcMapping> {
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
            path: "/usr/lib/libjemalloc.so.2".to_owned(),
            build_id: String::new(),
        },
    ]
}

fn profile(duration: Option<Duration>) -> HeapProfile {
    let snap = dump::parse(DUMP).unwrap();
    let taken = Taken {
        start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_115_200),
        duration,
        ended_early: false,
    };
    let unwinder = Unwinder::Jemalloc("diag's walker not probed: golden test".to_owned());
    HeapProfile::from_parts(snap, symbols(), true, taken, unwinder)
}

#[test]
fn heap_profile_proto() {
    let p = profile(None);
    let bytes = p
        .encode(
            Format::Proto,
            Kind::Heap,
            SampleType::InuseSpace,
            mappings(),
        )
        .unwrap();
    check("heap.pb.txt", &profile_listing(&bytes));
}

#[test]
fn allocs_delta_profile_proto() {
    let p = profile(Some(Duration::from_millis(5_000)));
    let bytes = p
        .encode(
            Format::Proto,
            Kind::Allocs,
            SampleType::AllocObjects,
            mappings(),
        )
        .unwrap();
    check("allocs-delta.pb.txt", &profile_listing(&bytes));
}

#[test]
fn heap_folded() {
    let bytes = profile(None)
        .encode(
            Format::Folded,
            Kind::Heap,
            SampleType::InuseSpace,
            Vec::new(),
        )
        .unwrap();
    check("heap.folded", &(String::from_utf8(bytes).unwrap() + "\n"));
}

#[test]
fn allocs_delta_flamegraph_svg() {
    let bytes = profile(Some(Duration::from_millis(5_000)))
        .encode(
            Format::Svg,
            Kind::Allocs,
            SampleType::AllocSpace,
            Vec::new(),
        )
        .unwrap();
    check("allocs-delta.svg", &String::from_utf8(bytes).unwrap());
}

#[test]
fn heap_stats_text_and_prometheus() {
    let s = Stats {
        allocated: 12_582_912,
        active: 14_680_064,
        resident: 20_971_520,
        mapped: 25_165_824,
        retained: 4_194_304,
        metadata: 1_048_576,
    };
    check("heap-stats.txt", &stats::render(&s, StatsFormat::Text));
    check(
        "heap-stats.prom",
        &stats::render(&s, StatsFormat::Prometheus),
    );
}
