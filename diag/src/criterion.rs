//! A profiler hook for criterion 0.8: `cargo bench -- --profile-time 5` then writes, for
//! each benchmark, a CPU flamegraph and a profile `go tool pprof` reads.

use std::path::Path;

use crate::cpu::{MAX_FREQUENCY, Recording};

/// Samples per second of CPU time unless [`Flamegraphs::frequency`] says otherwise. The
/// kernel delivers fewer (about one per tick, 250 a second on many kernels); diag weighs
/// the samples by the rate achieved.
pub const DEFAULT_BENCH_FREQUENCY: u32 = 999;

/// criterion's [`Profiler`](::criterion::profiler::Profiler), backed by diag's CPU sampler.
///
/// While criterion profiles a benchmark (`--profile-time`), diag samples the whole process
/// and, when it stops, writes `flamegraph.svg` and `profile.pb.gz` into the benchmark's
/// directory (`target/criterion/<group>/<benchmark>/profile/`). A recording that cannot
/// start (the sampler could not set up its timers) is reported on stderr and skipped; it
/// never panics in the middle of a benchmark run.
///
/// ```no_run
/// use criterion::{Criterion, criterion_group, criterion_main};
///
/// fn bench(c: &mut Criterion) {
///     c.bench_function("sum", |b| b.iter(|| (0..1000u64).sum::<u64>()));
/// }
///
/// criterion_group! {
///     name = benches;
///     config = Criterion::default().with_profiler(diag::criterion::Flamegraphs::new());
///     targets = bench
/// }
/// criterion_main!(benches);
/// ```
#[derive(Debug)]
pub struct Flamegraphs {
    frequency: u32,
    recording: Option<Recording>,
}

impl Default for Flamegraphs {
    fn default() -> Self {
        Self::new()
    }
}

impl Flamegraphs {
    /// A hook sampling at [`DEFAULT_BENCH_FREQUENCY`].
    pub fn new() -> Self {
        Self {
            frequency: DEFAULT_BENCH_FREQUENCY,
            recording: None,
        }
    }

    /// Samples per second of CPU time, clamped to 1..=1000.
    pub fn frequency(mut self, hz: u32) -> Self {
        self.frequency = hz.clamp(1, MAX_FREQUENCY);
        self
    }
}

impl ::criterion::profiler::Profiler for Flamegraphs {
    fn start_profiling(&mut self, benchmark_id: &str, _benchmark_dir: &Path) {
        match Recording::start(self.frequency) {
            Ok(r) => self.recording = Some(r),
            Err(e) => eprintln!("diag: no flamegraph for {benchmark_id}: {e}"),
        }
    }

    fn stop_profiling(&mut self, benchmark_id: &str, benchmark_dir: &Path) {
        let Some(recording) = self.recording.take() else {
            return;
        };
        let profile = recording.finish();
        let written = std::fs::create_dir_all(benchmark_dir)
            .and_then(|()| {
                let svg = profile.to_svg_titled(benchmark_id)?;
                std::fs::write(benchmark_dir.join("flamegraph.svg"), svg)
            })
            .and_then(|()| {
                std::fs::write(
                    benchmark_dir.join("profile.pb.gz"),
                    profile.to_proto(crate::maps::current())?,
                )
            });
        match written {
            Ok(()) => eprintln!(
                "diag: {} samples of {benchmark_id}: {}/flamegraph.svg, profile.pb.gz",
                profile.samples(),
                benchmark_dir.display()
            ),
            Err(e) => eprintln!(
                "diag: could not write the flamegraph of {benchmark_id} into {}: {e}",
                benchmark_dir.display()
            ),
        }
    }
}
