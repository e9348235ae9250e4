//! diag's CPU sampling engine: per-thread CPU-time timers, a `SIGPROF` handler that walks
//! frame pointers into a lock-free ring, and one `diag-sampler` thread that drains the
//! ring into each reader's window. It knows nothing of HTTP; its errors are
//! [`EngineError`], mapped to answers by the handlers in `cpu/mod.rs`.
//!
//! Linux on x86_64 and aarch64 only: elsewhere [`join`] answers
//! [`EngineError::Unsupported`].
//!
//! Readers share one sampler, at any frequencies: the timers run at the highest rate any
//! reader (or the recorder) asks, and each sample weighs the period of the timer that
//! produced it × (1 + overruns), so every reader's CPU time stays true; a reader at a
//! lower rate keeps every sample (more samples, the same total). The first reader starts
//! the timers, the last one to leave (by [`Lease::finish`] or by dropping its lease, e.g.
//! when its client disconnects) stops and deletes them, unless the recorder runs.

#[cfg(diag_engine)]
mod control;
#[cfg(diag_engine)]
mod recorder;
#[cfg(diag_engine)]
mod ring;
#[cfg(test)]
#[cfg(diag_engine)]
mod ring_tests;
#[cfg(diag_engine)]
pub(crate) mod signal;
#[cfg(diag_engine)]
mod stacks;
#[cfg(diag_engine)]
pub(crate) mod threads;
#[cfg(diag_engine)]
mod timer;
#[cfg(diag_engine)]
pub(crate) mod unwind;

use std::time::{Duration, Instant, SystemTime};

/// Where the engine runs.
pub(crate) const SUPPORTED: &str = "Linux on x86_64 or aarch64";

/// Why a reader could not join, or lost its window.
#[derive(Debug)]
pub(crate) enum EngineError {
    /// The signal handler or the timers could not be set up (the system's error).
    Start(String),
    /// This platform has no engine.
    #[cfg_attr(diag_engine, allow(dead_code))]
    Unsupported,
    /// The `diag-sampler` thread could not run the request (it could not be started, or
    /// the request panicked there).
    Lost,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Start(msg) => write!(f, "could not start the CPU sampler: {msg}"),
            Self::Unsupported => write!(
                f,
                "CPU profiling needs {SUPPORTED}; this is {} on {}",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
            Self::Lost => write!(f, "the CPU sampler thread failed (see the logs)"),
        }
    }
}

/// A reader's share of the running sampler. Dropping it without [`Lease::finish`] gives
/// the share up at once (the last share stops the timers).
#[derive(Debug)]
pub(crate) struct Lease {
    id: u64,
    #[cfg_attr(not(feature = "criterion"), allow(dead_code))]
    frequency: u32,
    done: bool,
}

/// One sampled stack of a window.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Code addresses, leaf first; each one past the instruction (return addresses, and
    /// the interrupted address plus one).
    pub(crate) ips: Vec<usize>,
    /// The thread's name (`comm`).
    pub(crate) thread: String,
    /// The label-set id the thread carried (0: none).
    pub(crate) label: u32,
    /// Signals that landed on this stack.
    pub(crate) count: i64,
    /// CPU nanoseconds they stand for: the period × (1 + timer overruns) of each.
    pub(crate) weight_ns: i64,
}

/// What went missing from a window, for the profile's comment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Losses {
    /// Samples dropped because the ring was full.
    pub(crate) ring_full: u64,
    /// Samples that kept only the interrupted address (the thread's stack range was not
    /// learned yet).
    pub(crate) ip_only: u64,
    /// Samples not kept because the window's table of distinct stacks was full.
    pub(crate) stacks_full: u64,
    /// Threads not sampled because the thread table was full.
    pub(crate) threads_unsampled: u64,
    /// `SIGPROF`s not from diag's timers, passed on to the application's action.
    pub(crate) foreign_signals: u64,
}

/// A reader's finished window.
#[derive(Debug)]
pub(crate) struct Window {
    pub(crate) samples: Vec<Sample>,
    pub(crate) start: Mark,
    pub(crate) end: Mark,
    /// The rate this reader asked.
    pub(crate) frequency: u32,
    /// The highest rate the sampler ran at during the window (other readers').
    pub(crate) peak_frequency: u32,
    pub(crate) losses: Losses,
}

/// How the recorder samples and what it keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecorderSettings {
    pub(crate) frequency: u32,
    pub(crate) keep: Duration,
    pub(crate) bucket: Duration,
}

/// What the recorder answers for a stretch of time.
#[derive(Debug)]
pub(crate) struct Recorded {
    pub(crate) window: Window,
    /// The start of the oldest bucket kept.
    pub(crate) kept_from: SystemTime,
    /// Whether the stretch asked began before what is kept.
    pub(crate) short: bool,
}

/// Why a stretch could not be answered.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The recorder is not on.
    Off,
    /// Nothing is kept of the stretch asked: it ended before `kept_from`.
    Before { kept_from: SystemTime },
}

/// What the index page shows of the recorder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecorderStatus {
    pub(crate) frequency: u32,
    pub(crate) keep: Duration,
    pub(crate) reaches_back: Duration,
    pub(crate) bytes: usize,
    pub(crate) stacks: usize,
}

/// A moment of the window, for the achieved-rate arithmetic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    pub(crate) wall: SystemTime,
    pub(crate) mono: Instant,
    pub(crate) cpu: Duration,
}

impl Mark {
    pub(crate) fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
            cpu: process_cpu_time(),
        }
    }
}

/// The process's CPU time so far (all threads).
pub(crate) fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(diag_engine)]
#[cfg_attr(
    not(any(feature = "criterion", feature = "bench")),
    allow(unused_imports)
)]
pub(crate) use control::join_blocking;
#[cfg(diag_engine)]
pub(crate) use control::{
    install_handler, join, recorded, recorder_status, running, start_recorder,
};
#[cfg(diag_engine)]
#[cfg_attr(not(feature = "heap"), allow(unused_imports))]
pub(crate) use unwind::walk_own_stack;

#[cfg(diag_engine)]
pub(crate) use signal::{label_id, set_label_id};

#[cfg(feature = "bench")]
#[cfg(diag_engine)]
pub(crate) use control::bench_sample_here;

impl Lease {
    /// The frequency this reader samples at.
    #[cfg_attr(not(feature = "criterion"), allow(dead_code))]
    pub(crate) fn frequency(&self) -> u32 {
        self.frequency
    }
}

#[cfg(not(diag_engine))]
mod unsupported {
    use super::*;

    /// Does nothing: there is no handler on this platform.
    pub(crate) fn install_handler() {}

    /// Always [`EngineError::Unsupported`].
    pub(crate) async fn join(_frequency: u32, _window: Duration) -> Result<Lease, EngineError> {
        Err(EngineError::Unsupported)
    }

    /// Always [`EngineError::Unsupported`].
    #[allow(dead_code)]
    pub(crate) fn join_blocking(_frequency: u32, _window: Duration) -> Result<Lease, EngineError> {
        Err(EngineError::Unsupported)
    }

    /// Logs that there is no recorder on this platform.
    pub(crate) fn start_recorder(
        _settings: RecorderSettings,
        _stop_when: Box<dyn Fn() -> bool + Send>,
    ) {
        tracing::warn!("diag: the CPU recorder needs {SUPPORTED}");
    }

    /// Always [`EngineError::Unsupported`].
    pub(crate) async fn recorded(
        _from: SystemTime,
        _to: Option<SystemTime>,
    ) -> Result<Result<Recorded, Refusal>, EngineError> {
        Err(EngineError::Unsupported)
    }

    /// Always `None`.
    pub(crate) fn recorder_status() -> Option<RecorderStatus> {
        None
    }

    /// Always `None`.
    pub(crate) fn running() -> Option<(u32, usize, SystemTime)> {
        None
    }

    thread_local! {
        static LABEL: AtomicU32 = const { AtomicU32::new(0) };
    }

    /// Sets the thread's label-set id (nothing samples it here); returns the old.
    pub(crate) fn set_label_id(id: u32) -> u32 {
        LABEL.with(|l| l.swap(id, Ordering::Relaxed))
    }

    /// The thread's label-set id.
    pub(crate) fn label_id() -> u32 {
        LABEL.with(|l| l.load(Ordering::Relaxed))
    }

    impl Lease {
        pub(crate) async fn finish(mut self) -> Result<Window, EngineError> {
            self.done = true;
            Err(EngineError::Unsupported)
        }

        #[allow(dead_code)]
        pub(crate) fn finish_blocking(mut self) -> Result<Window, EngineError> {
            self.done = true;
            Err(EngineError::Unsupported)
        }
    }

    impl Drop for Lease {
        fn drop(&mut self) {}
    }
}

#[cfg(not(diag_engine))]
#[allow(unused_imports)]
pub(crate) use unsupported::{
    install_handler, join, join_blocking, label_id, recorded, recorder_status, running,
    set_label_id, start_recorder,
};

#[cfg(feature = "bench")]
#[cfg(diag_engine)]
pub(crate) use signal::foreign_signal_this_thread;
