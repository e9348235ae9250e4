//! The always-on CPU recorder's settings.

use std::time::Duration;

/// The always-on CPU recorder's settings
/// ([`Config::with_cpu_recorder`](super::Config::with_cpu_recorder)): how far back it keeps,
/// how often it samples, and how finely it divides time.
///
/// Memory is bounded whatever the load: stacks are interned once in a table capped at 5
/// MiB of addresses, and each bucket holds only (stack id, thread, label, count, CPU
/// time) entries. See docs/performance.md for what 10 minutes cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuRecorder {
    keep: Duration,
    frequency: u32,
    bucket: Duration,
}

impl CpuRecorder {
    /// How far back the recorder keeps unless told otherwise.
    pub const DEFAULT_KEEP: Duration = Duration::from_secs(600);
    /// The longest it may keep.
    pub const MAX_KEEP: Duration = Duration::from_secs(3600);
    /// Samples per second of each thread's CPU time (as Parca's agent: low, and prime so
    /// it does not beat against periodic work).
    pub const DEFAULT_FREQUENCY: u32 = 19;
    /// The length of a bucket unless told otherwise: the finest time a stretch can pick.
    pub const DEFAULT_BUCKET: Duration = Duration::from_secs(1);
    /// The shortest bucket.
    pub const MIN_BUCKET: Duration = Duration::from_millis(10);

    /// A recorder keeping the last `keep` (1 s to [`CpuRecorder::MAX_KEEP`]) at 19 Hz in
    /// buckets of 1 s.
    pub fn new(keep: Duration) -> Self {
        Self {
            keep: keep.clamp(Duration::from_secs(1), Self::MAX_KEEP),
            frequency: Self::DEFAULT_FREQUENCY,
            bucket: Self::DEFAULT_BUCKET,
        }
    }

    /// Samples at `frequency` Hz (1 to 1000) instead of 19.
    pub fn with_frequency(mut self, frequency: u32) -> Self {
        self.frequency = frequency.clamp(1, 1000);
        self
    }

    /// Divides time into buckets of `bucket` ([`CpuRecorder::MIN_BUCKET`] to 1 s).
    pub fn with_bucket(mut self, bucket: Duration) -> Self {
        self.bucket = bucket.clamp(Self::MIN_BUCKET, Self::DEFAULT_BUCKET);
        self
    }

    /// How far back it keeps.
    pub fn keep(&self) -> Duration {
        self.keep
    }

    /// Its sampling rate, in Hz.
    pub fn frequency(&self) -> u32 {
        self.frequency
    }

    /// The length of its buckets.
    pub fn bucket(&self) -> Duration {
        self.bucket
    }
}

impl Default for CpuRecorder {
    fn default() -> Self {
        Self::new(Self::DEFAULT_KEEP)
    }
}
