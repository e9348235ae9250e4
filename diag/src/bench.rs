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
        self.0.to_proto(crate::maps::current())
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

/// The CPU engine's signal handler, driven one sample at a time: joins the sampler at
/// 1 Hz (its timers almost never fire), then each [`SampleHere::sample`] sends the
/// calling thread a `SIGPROF` shaped like one of diag's timer expiries, so the handler
/// walks exactly the caller's stack into the ring before it returns. Linux on x86_64 or
/// aarch64 only, as the engine.
#[cfg(diag_engine)]
pub struct SampleHere {
    _lease: crate::cpu::engine::Lease,
    sample: Box<dyn Fn()>,
    drain: Box<dyn Fn()>,
}

#[cfg(diag_engine)]
impl std::fmt::Debug for SampleHere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleHere").finish_non_exhaustive()
    }
}

#[cfg(diag_engine)]
impl SampleHere {
    /// Starts the sampler for the calling thread (waits until it has been listed).
    pub fn start() -> Result<Self, String> {
        let (lease, sample, drain) =
            crate::cpu::engine::bench_sample_here().map_err(|e| e.to_string())?;
        Ok(Self {
            _lease: lease,
            sample: Box::new(sample),
            drain: Box::new(drain),
        })
    }

    /// One sample of the calling thread's stack (the handler runs before this returns).
    pub fn sample(&self) {
        (self.sample)()
    }

    /// Waits until the sampler thread has drained the ring.
    pub fn drain(&self) {
        (self.drain)()
    }

    /// A `SIGPROF` delivered the same way but without diag's marker: the handler's check
    /// and hand-off to the previous action (here the default, which diag does not take),
    /// i.e. the cost of the signal alone.
    pub fn foreign_signal(&self) {
        let _ = crate::cpu::engine::foreign_signal_this_thread();
    }
}

/// One window of the CPU engine at `frequency` over `window`, unsymbolized: (samples,
/// CPU nanoseconds they stand for, CPU nanoseconds the process used meanwhile).
#[cfg(diag_engine)]
pub fn cpu_window(frequency: u32, window: std::time::Duration) -> Result<(i64, i64, i64), String> {
    let lease = crate::cpu::engine::join_blocking(frequency, window).map_err(|e| e.to_string())?;
    std::thread::sleep(window);
    let w = lease.finish_blocking().map_err(|e| e.to_string())?;
    let samples = w.samples.iter().map(|s| s.count).sum();
    let sampled = w.samples.iter().map(|s| s.weight_ns).sum();
    let used = w.end.cpu.saturating_sub(w.start.cpu).as_nanos() as i64;
    Ok((samples, sampled, used))
}
