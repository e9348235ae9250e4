//! One pprof-rs sampler shared by every reader.
//!
//! pprof-rs has one global profiler, one process-wide timer, and counts that clear only
//! when it stops. So diag runs at most one [`ProfilerGuard`] and lets any number of
//! requests read from it at once: each reader takes an unresolved snapshot (a read lock,
//! no symbolization) at the start and at the end of its own window and keeps the
//! difference. The sampler starts with the first reader and stops (clearing its counts)
//! when the last one leaves, so memory does not grow under continuous scraping.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use pprof::{ProfilerGuard, ProfilerGuardBuilder};

/// Counts per stack and thread at one instant; `None` before the sampler has counted.
pub(crate) type Counts = Option<pprof::UnresolvedReport>;

/// One sampled stack: code addresses leaf first, the thread, and how often it was seen.
#[derive(Debug)]
pub(crate) struct Stack {
    pub(crate) ips: Vec<usize>,
    pub(crate) thread: String,
    pub(crate) count: i64,
}

struct Running {
    guard: ProfilerGuard<'static>,
    frequency: u32,
    /// Readers holding a [`Lease`]; at zero the sampler thread stops the sampler.
    readers: usize,
    /// The latest end among the readers' windows.
    until: SystemTime,
}

/// The sampler's state. Every operation that takes this lock runs on one dedicated
/// thread, `diag-sampler` (see [`on_sampler_thread`]): starting, snapshotting and stopping
/// may take long (pprof-rs allocates and initialises a ~65 MB collector in 4096 pieces on
/// every stop), so never on an async worker; and always on the same thread, so that the
/// allocator reuses the same arena for every collector instead of keeping a freed one in
/// each blocking thread's arena. Holding the lock while stopping also orders stop before
/// start: an old guard's timer teardown can never switch off a new guard's timer.
static SAMPLER: Mutex<Option<Running>> = Mutex::new(None);

fn sampler() -> MutexGuard<'static, Option<Running>> {
    // A panic while holding this lock leaves nothing half-done that matters more than
    // refusing every later profile would, so recover from poisoning.
    SAMPLER.lock().unwrap_or_else(|e| e.into_inner())
}

type Job = Box<dyn FnOnce() + Send>;

/// Queues `job` on the `diag-sampler` thread (started on first use); runs it here if the
/// thread cannot be started.
fn submit(job: Job) {
    static QUEUE: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("diag-sampler".into())
            .spawn(move || {
                for job in rx {
                    // A job that panics loses its own answer, not the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .ok()
            .map(|_| tx)
    });
    match queue {
        Some(tx) => {
            if let Err(returned) = tx.send(job) {
                (returned.0)();
            }
        }
        None => job(),
    }
}

/// Runs `f` on the `diag-sampler` thread and waits for its result without blocking the
/// async worker. `None` if the job was lost (it panicked).
pub(crate) async fn on_sampler_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(Box::new(move || {
        let _ = tx.send(f());
    }));
    rx.await.ok()
}

/// Runs `f` on the `diag-sampler` thread and blocks this thread until it is done, for
/// callers outside any runtime (the criterion hook). `None` if the job was lost.
#[cfg(feature = "criterion")]
pub(crate) fn on_sampler_thread_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    submit(Box::new(move || {
        let _ = tx.send(f());
    }));
    rx.recv().ok()
}

/// Why a reader could not join the sampler.
#[derive(Debug)]
pub(crate) enum JoinError {
    /// The sampler runs at another frequency.
    OtherFrequency { running: u32, until: SystemTime },
    /// pprof-rs could not start (its message).
    Start(String),
}

/// A reader's share of the running sampler. Dropping it gives the share up at once; the
/// last share to go has the sampler stopped (and its counts cleared) on the sampler thread.
#[derive(Debug)]
pub(crate) struct Lease {
    frequency: u32,
}

/// What the index page shows: `Some((frequency, readers, until))` while readers sample,
/// `None` when idle. Never waits: while the sampler starts or stops, answers `None`.
pub(crate) fn running() -> Option<(u32, usize, SystemTime)> {
    let state = SAMPLER.try_lock().ok()?;
    state
        .as_ref()
        .filter(|r| r.readers > 0)
        .map(|r| (r.frequency, r.readers, r.until))
}

impl Lease {
    /// Joins the running sampler, or starts it at `frequency`, and takes the reader's
    /// start snapshot. `window` is how long this reader intends to read, for the message
    /// other readers get on a conflict. Blocking: call it on the sampler thread.
    pub(crate) fn join(frequency: u32, window: Duration) -> Result<(Lease, Counts), JoinError> {
        let mut state = sampler();
        let until = SystemTime::now() + window;
        if let Some(idle) = state.as_ref().filter(|r| r.readers == 0) {
            if idle.frequency != frequency {
                // Left running by its last reader, not stopped yet: stop it here.
                drop(state.take());
            }
        }
        match state.as_mut() {
            Some(running) if running.frequency != frequency => Err(JoinError::OtherFrequency {
                running: running.frequency,
                until: running.until,
            }),
            Some(running) => {
                running.readers += 1;
                running.until = if running.readers == 1 {
                    until
                } else {
                    running.until.max(until)
                };
                let start = snapshot(&running.guard);
                Ok((Lease { frequency }, start))
            }
            None => {
                let guard = ProfilerGuardBuilder::default()
                    .frequency(frequency as i32)
                    .build()
                    .map_err(|e| JoinError::Start(e.to_string()))?;
                *state = Some(Running {
                    guard,
                    frequency,
                    readers: 1,
                    until,
                });
                Ok((Lease { frequency }, None))
            }
        }
    }

    /// The frequency this reader samples at.
    pub(crate) fn frequency(&self) -> u32 {
        self.frequency
    }

    /// The counts now. Blocking: call it on the sampler thread.
    pub(crate) fn snapshot(&self) -> Counts {
        sampler().as_ref().and_then(|r| snapshot(&r.guard))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let last = {
            let mut state = sampler();
            match state.as_mut() {
                Some(running) => {
                    running.readers = running.readers.saturating_sub(1);
                    running.readers == 0
                }
                None => false,
            }
        };
        if last {
            submit(Box::new(stop_if_idle));
        }
    }
}

/// Stops the sampler unless a reader joined since the last one left.
fn stop_if_idle() {
    let mut state = sampler();
    if state.as_ref().is_some_and(|r| r.readers == 0) {
        // Dropping the guard stops the timer and clears pprof-rs's counts, under the lock.
        drop(state.take());
        drop(state);
        release_free_memory();
    }
}

/// Hands the old collector's freed pages back to the system: glibc keeps them otherwise,
/// and jemalloc, when it is the allocator, keeps them dirty for its decay time (10 s by
/// default), so that back-to-back profiles would swing resident memory by hundreds of MiB.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
    #[cfg(feature = "heap")]
    crate::heap::purge();
}

fn snapshot(guard: &ProfilerGuard<'static>) -> Counts {
    // `build_unresolved` takes pprof-rs's read lock and copies the counts; it does not
    // symbolize. Samples that land while it copies are dropped by the signal handler's
    // try-lock, so keep this short.
    guard.report().build_unresolved().ok()
}

/// The samples gained between two snapshots of the same running sampler.
pub(crate) fn delta(start: &Counts, end: Counts) -> Vec<Stack> {
    let Some(end) = end else { return Vec::new() };
    end.data
        .into_iter()
        .filter_map(|(frames, n)| {
            let before = start
                .as_ref()
                .and_then(|s| s.data.get(&frames).copied())
                .unwrap_or(0);
            let gained = n - before;
            (gained > 0).then(|| {
                let len = frames.thread_name_length.min(frames.thread_name.len());
                let name = String::from_utf8_lossy(&frames.thread_name[..len]);
                Stack {
                    // The unwinder ends some stacks with a null return address.
                    ips: frames
                        .frames
                        .iter()
                        .map(|f| f.ip() as usize)
                        .filter(|ip| *ip >= 4096)
                        .collect(),
                    thread: if name.is_empty() {
                        format!("thread {}", frames.thread_id)
                    } else {
                        name.into_owned()
                    },
                    count: gained as i64,
                }
            })
        })
        .collect()
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
