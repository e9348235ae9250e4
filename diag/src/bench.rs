//! Internals opened to this project's own benchmarks (feature `bench`). Not a stable API:
//! nothing here is meant for applications.

use crate::cpu::CpuProfile;

/// A made-up CPU profile for benchmarking the encoders: `samples` samples, each its own
/// stack `depth` frames deep, stacks sharing prefixes as real ones do.
#[derive(Debug)]
pub struct SyntheticCpuProfile(CpuProfile);

impl SyntheticCpuProfile {
    /// Builds it (deterministic: the same arguments give the same profile).
    pub fn new(samples: usize, depth: usize) -> Self {
        Self(CpuProfile::synthetic(samples, depth))
    }

    /// gzipped profile.proto, as `/profile` answers.
    pub fn proto(&self) -> std::io::Result<Vec<u8>> {
        self.0.to_proto()
    }

    /// The flamegraph SVG, as `/flamegraph` answers.
    pub fn svg(&self) -> std::io::Result<Vec<u8>> {
        self.0.to_svg()
    }

    /// Folded stacks, as `/profile?format=folded` answers (one line each).
    pub fn folded(&self) -> Vec<String> {
        self.0.to_folded()
    }
}

/// `n` code addresses spread evenly over this binary's executable mapping: real
/// addresses for symbolization to resolve.
pub fn code_addresses(n: usize) -> Vec<usize> {
    let maps = crate::maps::current();
    let Some(main) = maps.first() else {
        return Vec::new();
    };
    let step = ((main.end - main.start) / n.max(1) as u64).max(1);
    (0..n as u64)
        .map(|i| (main.start + 1 + i * step) as usize)
        .filter(|ip| (*ip as u64) < main.end)
        .collect()
}

/// Resolves the addresses in one pass, bypassing diag's cache (what a profile pays for
/// addresses it has not seen before). Returns how many source lines came back.
pub fn resolve_uncached(ips: &[usize]) -> usize {
    crate::symbols::resolve_uncached(ips)
        .iter()
        .map(|l| l.len())
        .sum()
}

/// Resolves the addresses through diag's cache (what a later profile pays for addresses
/// seen before). Returns how many source lines came back.
pub fn resolve_cached(ips: &[usize]) -> usize {
    crate::symbols::resolve_all(ips.iter().copied())
        .values()
        .map(|l| l.len())
        .sum()
}

/// Keeps the program's file mapped between symbolization passes (`true`) instead of
/// mapping it for each pass and unmapping it after (`false`, the default).
pub fn keep_mapped(keep: bool) {
    crate::symbols::keep_mapped(keep);
}
