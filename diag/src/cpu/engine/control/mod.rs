//! The `diag-sampler` thread: it owns the session (the timers, the thread table, the
//! readers' windows), drains the ring (every [`RESCAN`] at most, sooner when the rate and
//! the CPUs could fill a quarter of the ring faster, never more often than every
//! [`TICK`]), and looks for new threads every [`RESCAN`]. Every change to the session runs
//! on it, as a job sent through a channel, so no lock is shared with the signal handler or
//! held across a wait.

//!
//! This module is the thread and the calls into it; `state` is what the thread owns
//! (the [`Engine`]), `session` a running session's timers, readers and counts, `scan` how
//! it follows the process's threads and their stacks.

mod scan;
mod session;
mod state;

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use super::signal;
use super::{EngineError, Lease, Recorded, RecorderSettings, RecorderStatus, Refusal, Window};
use state::Engine;

/// How often the ring is drained at most (while a reader samples at a rate that could fill
/// a quarter of the ring faster than [`RESCAN`] on this machine's CPUs).
const TICK: Duration = Duration::from_millis(20);
/// How often it is drained while only the recorder samples (at most; a shorter bucket
/// drains at each bucket's end).
const RECORDER_TICK: Duration = Duration::from_millis(250);
/// How often `/proc/self/task` is listed for new threads (and exited ones).
const RESCAN: Duration = Duration::from_millis(100);
/// How often the executable mappings are re-read at most when a sample's leaf lies
/// outside every known one (a library loaded since).
const REMAP: Duration = Duration::from_secs(1);
/// How often they are re-read anyway while a reader samples (a library unloaded and
/// another loaded at its place, which no leaf reveals).
const REMAP_ANYWAY: Duration = Duration::from_secs(10);
/// How often threads are listed while only the recorder samples: at each drain (a new
/// thread's CPU before it is listed goes unrecorded).
const RECORDER_RESCAN: Duration = RECORDER_TICK;
/// How often the mappings are re-read anyway while only the recorder samples.
const RECORDER_REMAP: Duration = Duration::from_secs(10);
/// How long the ring is drained every [`TICK`] after new threads are found.
const EAGER: Duration = Duration::from_millis(200);
/// A rescan due this close to now is done now rather than after another wait.
const SLACK: Duration = Duration::from_millis(2);
/// Thread names remembered per session at most; later new names are counted under one.
const MAX_NAMES: usize = 4096;

type Job = Box<dyn FnOnce(&mut Engine) + Send>;

/// Installs diag's `SIGPROF` handler now (diag calls it when its routes are built), so
/// that a `SIGPROF` before the first profile is survived. Failures are logged; the first
/// profile tries again and reports them.
pub(crate) fn install_handler() {
    if let Err(e) = signal::ensure_installed() {
        tracing::warn!("diag: could not install the SIGPROF handler: {e}");
    }
}

fn submit(job: Job) -> bool {
    static QUEUE: OnceLock<Option<Mutex<Sender<Job>>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("diag-sampler".into())
            .spawn(move || run(rx))
            .ok()
            .map(|_| Mutex::new(tx))
    });
    match queue {
        Some(tx) => tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .is_ok(),
        None => false,
    }
}

fn run(rx: Receiver<Job>) {
    let mut engine = Engine::default();
    loop {
        let job = if let Some(every) = engine.tick_every() {
            match rx.recv_timeout(every) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        };
        if engine.session.is_some() {
            engine.tick();
        }
        if let Some(job) = job {
            // A job that panics loses its own answer, not the thread.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut engine)));
        }
        engine.publish_status();
    }
}

/// Runs `f` on the sampler thread and awaits its result.
async fn on_sampler<T: Send + 'static>(
    f: impl FnOnce(&mut Engine) -> T + Send + 'static,
) -> Result<T, EngineError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !submit(Box::new(move |e| {
        let _ = tx.send(f(e));
    })) {
        return Err(EngineError::Lost);
    }
    rx.await.map_err(|_| EngineError::Lost)
}

/// Runs `f` on the sampler thread and blocks until it is done (outside any runtime).
#[cfg_attr(not(any(feature = "criterion", feature = "bench")), allow(dead_code))]
fn on_sampler_blocking<T: Send + 'static>(
    f: impl FnOnce(&mut Engine) -> T + Send + 'static,
) -> Result<T, EngineError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    if !submit(Box::new(move |e| {
        let _ = tx.send(f(e));
    })) {
        return Err(EngineError::Lost);
    }
    rx.recv().map_err(|_| EngineError::Lost)
}

/// Joins the sampler at `frequency` (starting it if idle) for a window of about
/// `window`, which other readers are told on a conflict.
pub(crate) async fn join(frequency: u32, window: Duration) -> Result<Lease, EngineError> {
    let id = on_sampler(move |e| e.join(frequency, window)).await??;
    Ok(Lease {
        id,
        frequency,
        done: false,
    })
}

/// [`join`], blocking (for the criterion hook).
#[cfg_attr(not(any(feature = "criterion", feature = "bench")), allow(dead_code))]
pub(crate) fn join_blocking(frequency: u32, window: Duration) -> Result<Lease, EngineError> {
    let id = on_sampler_blocking(move |e| e.join(frequency, window))??;
    Ok(Lease {
        id,
        frequency,
        done: false,
    })
}

impl Lease {
    /// Ends this reader's window: its samples, and gives the share up.
    pub(crate) async fn finish(mut self) -> Result<Window, EngineError> {
        self.done = true;
        let id = self.id;
        on_sampler(move |e| e.finish(id)).await?
    }

    /// [`Lease::finish`], blocking.
    #[cfg_attr(not(feature = "criterion"), allow(dead_code))]
    pub(crate) fn finish_blocking(mut self) -> Result<Window, EngineError> {
        self.done = true;
        let id = self.id;
        on_sampler_blocking(move |e| e.finish(id))?
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.done {
            let id = self.id;
            submit(Box::new(move |e| {
                let _ = e.finish(id);
            }));
        }
    }
}

/// What the index page shows: `Some((highest frequency, readers, until))` while readers
/// sample. Never waits.
pub(crate) fn running() -> Option<(u32, usize, SystemTime)> {
    STATUS.try_lock().ok().and_then(|s| *s)
}

/// What the index page shows of the recorder, when it runs. Never waits.
pub(crate) fn recorder_status() -> Option<RecorderStatus> {
    RECORDER_STATUS.try_lock().ok().and_then(|s| *s)
}

static STATUS: Mutex<Option<(u32, usize, SystemTime)>> = Mutex::new(None);
static RECORDER_STATUS: Mutex<Option<RecorderStatus>> = Mutex::new(None);

/// Starts the recorder (replacing one that runs) with `settings`; it stops once
/// `stop_when` answers true (checked at each drain). Returns at once; a failure to start
/// the sampler is logged.
pub(crate) fn start_recorder(settings: RecorderSettings, stop_when: Box<dyn Fn() -> bool + Send>) {
    let sent = submit(Box::new(move |e| {
        if let Err(err) = e.start_recorder(settings, stop_when) {
            tracing::warn!("diag: the CPU recorder could not start: {err}");
        }
    }));
    if !sent {
        tracing::warn!("diag: the CPU recorder could not start: no sampler thread");
    }
}

/// The recorder's samples over `[from, to]` (`to`: now when `None`).
pub(crate) async fn recorded(
    from: SystemTime,
    to: Option<SystemTime>,
) -> Result<Result<Recorded, Refusal>, EngineError> {
    on_sampler(move |e| e.recorded(from, to)).await
}

/// For benchmarks: joins the sampler at 1 Hz (its timers almost never fire) and returns
/// a function that takes one sample of the calling thread, synchronously, each time it is
/// called, and a function that waits until the ring is drained. The lease ends the
/// session when dropped.
#[cfg(feature = "bench")]
pub(crate) fn bench_sample_here()
-> Result<(Lease, impl Fn() + use<>, impl Fn() + use<>), EngineError> {
    let lease = join_blocking(1, Duration::from_secs(3600))?;
    // Wait for the sampler to have found this thread.
    // SAFETY: gettid takes no arguments.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let slot = loop {
        let slot = on_sampler_blocking(move |e| {
            e.session
                .as_ref()
                .and_then(|s| s.threads.get(&tid).map(|t| t.slot))
        })?;
        if let Some(slot) = slot {
            break slot;
        }
        if std::time::Instant::now() > deadline {
            return Err(EngineError::Start("this thread was never listed".into()));
        }
        std::thread::sleep(RESCAN);
    };
    let sample = move || {
        let _ = signal::sample_this_thread(slot);
    };
    let drained = || {
        let _ = on_sampler_blocking(|e| e.tick());
    };
    Ok((lease, sample, drained))
}
