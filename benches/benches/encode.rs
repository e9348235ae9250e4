//! Turning a CPU profile into an answer: gzipped profile.proto, the flamegraph SVG and
//! folded stacks, for a small profile (100 samples) and a large one (50 000 samples,
//! each its own stack, 64 frames deep); and symbolization of real code addresses: one
//! uncached pass (`.symtab` names, one DWARF pass over the units holding them), with the
//! program's file mapped for the pass or kept mapped, and through diag's cache (warm).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use diag::bench::{
    SyntheticCpuProfile, code_addresses, keep_mapped, resolve_cached, resolve_uncached,
};

const DEPTH: usize = 64;

fn encoders(c: &mut Criterion) {
    let mut group = c.benchmark_group("CPU profile to answer");
    group.sample_size(10);
    for samples in [100, 50_000] {
        let profile = SyntheticCpuProfile::new(samples, DEPTH);
        group.throughput(Throughput::Elements(samples as u64));
        group.bench_with_input(BenchmarkId::new("proto+gzip", samples), &profile, |b, p| {
            b.iter(|| p.proto().unwrap().len())
        });
        group.bench_with_input(BenchmarkId::new("svg", samples), &profile, |b, p| {
            b.iter(|| p.svg().unwrap().len())
        });
        group.bench_with_input(BenchmarkId::new("folded", samples), &profile, |b, p| {
            b.iter(|| p.folded().len())
        });
    }
    group.finish();
}

fn symbolization(c: &mut Criterion) {
    let ips = code_addresses(1000);
    assert!(ips.len() > 900, "found {} code addresses", ips.len());
    let lines = resolve_uncached(&ips);
    assert!(lines >= ips.len());
    let mut group = c.benchmark_group("symbolize 1000 addresses");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ips.len() as u64));
    group.bench_function("uncached pass, file mapped per pass", |b| {
        keep_mapped(false);
        b.iter(|| resolve_uncached(&ips))
    });
    group.bench_function("uncached pass, file kept mapped", |b| {
        keep_mapped(true);
        b.iter(|| resolve_uncached(&ips))
    });
    keep_mapped(false);
    resolve_cached(&ips);
    group.bench_function("warm cache", |b| b.iter(|| resolve_cached(&ips)));
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = encoders, symbolization
}
criterion_main!(benches);
