//! Cost of one sample at several stack depths, and how complete the recorded stacks are.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use unwinders::{descend, install_empty_handler, sample_here};

const DEPTHS: [usize; 3] = [8, 32, 96];

fn unwinder() -> &'static str {
    if cfg!(feature = "frame-pointer") {
        "frame-pointer"
    } else if cfg!(feature = "framehop") {
        "framehop"
    } else {
        "libgcc-dwarf"
    }
}

fn cost(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("one sample ({})", unwinder()));
    install_empty_handler();
    for depth in DEPTHS {
        group.bench_with_input(BenchmarkId::new("signal only", depth), &depth, |b, &d| {
            b.iter(|| descend(d, &mut sample_here))
        });
    }
    // 1 Hz: the timer almost never fires; the samples are the ones raised here.
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(1)
        .build()
        .expect("start pprof-rs");
    for depth in DEPTHS {
        group.bench_with_input(
            BenchmarkId::new("pprof-rs handler", depth),
            &depth,
            |b, &d| b.iter(|| descend(d, &mut sample_here)),
        );
    }
    group.finish();
    completeness(&guard);
}

/// Prints, per depth, the share of samples whose stack holds the leaf and the number of
/// `descend` frames recorded.
fn completeness(guard: &pprof::ProfilerGuard<'_>) {
    // A fresh set of samples at known depths, 50 each.
    let report_before = guard.report().build().expect("report");
    let before: usize = report_before.data.values().map(|n| *n as usize).sum();
    for depth in DEPTHS {
        for _ in 0..50 {
            descend(depth, &mut sample_here);
        }
    }
    let report = guard.report().build().expect("report");
    let mut by_depth: Vec<(usize, bool, isize)> = Vec::new();
    for (frames, n) in &report.data {
        let names: Vec<String> = frames.frames.iter().flatten().map(|s| s.name()).collect();
        if std::env::var_os("UNWINDERS_DEBUG").is_some() {
            eprintln!("{names:?}");
        }
        let descents = names
            .iter()
            .filter(|n| *n == "descend" || n.ends_with("::descend"))
            .count();
        if descents == 0 {
            continue;
        }
        let leaf = names
            .iter()
            .any(|n| n == "at_the_bottom" || n.ends_with("::at_the_bottom"));
        by_depth.push((descents, leaf, *n));
    }
    let total: isize = by_depth.iter().map(|(_, _, n)| n).sum();
    let with_leaf: isize = by_depth
        .iter()
        .filter(|(_, l, _)| *l)
        .map(|(_, _, n)| n)
        .sum();
    let mut depths: Vec<usize> = by_depth.iter().map(|(d, _, _)| *d).collect();
    depths.sort_unstable();
    depths.dedup();
    println!(
        "completeness ({}): {total} samples at depths {DEPTHS:?} (+{before} earlier); \
         leaf `at_the_bottom` present in {with_leaf}; `descend` frames recorded per stack: {depths:?}",
        unwinder()
    );
}

criterion_group!(benches, cost);
criterion_main!(benches);
