//! The registry of traced futures and the collector a dump gathers their reports in.
//!
//! Every [`Traced`](super::Traced) future holds an [`Entry`] shared with a slot of the
//! registry: a slab (a vector of slots and a free list) behind one mutex, so registering
//! and leaving are O(1). A dump takes a snapshot of the entries, marks each with its
//! generation and wakes it; each future then traces its own next poll and hands the
//! stacks to the [`Collector`]. Nothing here knows HTTP.

use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

/// The most futures traced at once; beyond it, new futures run untraced (counted, and the
/// dump says how many).
pub const MAX_TRACED_TASKS: usize = 100_000;

/// What a dump knows about one traced future, shared between it and the registry.
#[derive(Debug)]
pub(crate) struct Entry {
    /// diag's id of the future, unique in the process.
    pub(crate) id: u64,
    /// The name given at `spawn`/`Traced::new`, or `METHOD /path` for a request.
    pub(crate) name: Box<str>,
    /// Where the future was wrapped; `None` for a request wrapped by the layer.
    pub(crate) location: Option<&'static Location<'static>>,
    /// When it was wrapped (coarse monotonic nanoseconds, see [`coarse_now`]).
    pub(crate) started: u64,
    /// The waker of its last poll.
    pub(crate) waker: AtomicWaker,
    /// The generation of the dump that wants a report from it (0: none yet).
    pub(crate) want: AtomicU64,
    /// When its current poll began; 0 while it is not being polled.
    pub(crate) poll_started: AtomicU64,
    /// When its last poll ended; 0 before the first.
    pub(crate) last_polled: AtomicU64,
}

struct Slots {
    slots: Vec<Option<Arc<Entry>>>,
    free: Vec<usize>,
}

static SLOTS: Mutex<Slots> = Mutex::new(Slots {
    slots: Vec::new(),
    free: Vec::new(),
});
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Futures that ran untraced because the registry was full.
static UNTRACED: AtomicU64 = AtomicU64::new(0);

fn slots() -> MutexGuard<'static, Slots> {
    SLOTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A monotonic clock read cheaply (`CLOCK_MONOTONIC_COARSE`, a few ns, resolution of the
/// kernel tick): every poll of a traced future reads it twice.
pub(crate) fn coarse_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Registers a new future; `None` when the registry is full.
pub(crate) fn register(
    name: Box<str>,
    location: Option<&'static Location<'static>>,
) -> Option<(usize, Arc<Entry>)> {
    let entry = Arc::new(Entry {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        name,
        location,
        started: coarse_now(),
        waker: AtomicWaker::new(),
        want: AtomicU64::new(0),
        poll_started: AtomicU64::new(0),
        last_polled: AtomicU64::new(0),
    });
    let mut s = slots();
    let slot = match s.free.pop() {
        Some(slot) => slot,
        None if s.slots.len() < MAX_TRACED_TASKS => {
            s.slots.push(None);
            s.slots.len() - 1
        }
        None => {
            drop(s);
            UNTRACED.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    s.slots[slot] = Some(entry.clone());
    Some((slot, entry))
}

/// Frees a slot taken by [`register`].
pub(crate) fn unregister(slot: usize) {
    let mut s = slots();
    if let Some(e) = s.slots.get_mut(slot) {
        *e = None;
        s.free.push(slot);
    }
}

/// The live entries, but the one with id `except` (the dump's own request, when it is
/// traced), marked as wanted by generation `generation`, in one pass under the lock.
fn snapshot_and_mark(generation: u64, except: u64) -> Vec<Arc<Entry>> {
    let s = slots();
    let live = s.slots.len() - s.free.len();
    let mut out = Vec::with_capacity(live);
    for e in s.slots.iter().flatten() {
        if e.id != except {
            e.want.store(generation, Ordering::Release);
            out.push(e.clone());
        }
    }
    out
}

/// How many futures ran untraced because the registry was full, since the start.
pub(crate) fn untraced() -> u64 {
    UNTRACED.load(Ordering::Relaxed)
}

/// How a traced poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It awaits something: the stacks say what.
    Waiting,
    /// The poll completed the future (a real completion, inside the traced poll).
    Completed,
    /// The future was dropped before it could report.
    Dropped,
}

/// One future's answer to a dump.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) entry: Arc<Entry>,
    /// tokio's id of the task that polled it (for a request, its connection's task).
    pub(crate) tokio_id: Option<String>,
    /// How long it had waited since its previous poll.
    pub(crate) waited_ns: u64,
    /// One stack per tokio leaf future reached, leaf first, as return addresses from the
    /// frame walk (tokio's and diag's own frames above the leaf not yet trimmed).
    pub(crate) stacks: Vec<Vec<usize>>,
    /// The label-set id (`diag::labels`) the future's last leaf was reached under.
    pub(crate) label: u32,
    pub(crate) outcome: Outcome,
}

/// The reports of the dump in progress.
#[derive(Debug)]
struct Collector {
    generation: u64,
    pending: usize,
    reports: Vec<Report>,
}

static COLLECTOR: Mutex<Option<Collector>> = Mutex::new(None);
/// Signalled when the last expected report arrives or the dump is closed (for a dump that
/// waits on a thread).
static DONE_CV: Condvar = Condvar::new();
/// Signalled when the last expected report arrives (for a dump that waits asynchronously).
static DONE: Notify = Notify::const_new();
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn collector() -> MutexGuard<'static, Option<Collector>> {
    COLLECTOR.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands a report to the dump of generation `generation`, if it is still collecting.
pub(crate) fn deposit(generation: u64, report: Report) {
    let mut c = collector();
    let Some(c) = c.as_mut().filter(|c| c.generation == generation) else {
        return;
    };
    c.reports.push(report);
    c.pending = c.pending.saturating_sub(1);
    if c.pending == 0 {
        DONE.notify_one();
        DONE_CV.notify_all();
    }
}

/// A dump in progress: opened by [`open`], closed when dropped (whether it finished, timed
/// out, or its request went away), after which late reports are discarded.
#[derive(Debug)]
pub(crate) struct Open {
    generation: u64,
    /// The entries woken, in snapshot order.
    pub(crate) expected: Vec<Arc<Entry>>,
}

/// Opens a dump: snapshots the registry (but `except`), marks and wakes every entry.
pub(crate) fn open(except: u64) -> Open {
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
    // The collector first, so that no report of this generation finds it missing.
    *collector() = Some(Collector {
        generation,
        pending: usize::MAX,
        reports: Vec::new(),
    });
    let expected = snapshot_and_mark(generation, except);
    {
        let mut c = collector();
        if let Some(c) = c.as_mut().filter(|c| c.generation == generation) {
            // Reports may already have arrived between the snapshot and here.
            c.pending = expected.len().saturating_sub(c.reports.len());
            c.reports.reserve(expected.len());
            if c.pending == 0 {
                DONE.notify_one();
            }
        }
    }
    for e in &expected {
        e.waker.wake();
    }
    Open {
        generation,
        expected,
    }
}

impl Open {
    /// Whether every expected future has reported.
    pub(crate) fn complete(&self) -> bool {
        collector()
            .as_ref()
            .is_none_or(|c| c.generation != self.generation || c.pending == 0)
    }

    /// Waits asynchronously until every expected future reported (the caller bounds it
    /// with a timer).
    pub(crate) async fn all_reported(&self) {
        loop {
            let notified = DONE.notified();
            if self.complete() {
                return;
            }
            notified.await;
        }
    }

    /// Blocks this thread until every expected future reported, the dump is closed, or
    /// `timeout` passed.
    pub(crate) fn wait_blocking(generation: u64, timeout: std::time::Duration) {
        let c = collector();
        let _ = DONE_CV.wait_timeout_while(c, timeout, |c| {
            c.as_ref()
                .is_some_and(|c| c.generation == generation && c.pending > 0)
        });
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Ends the dump and hands over what was reported.
    pub(crate) fn close(self) -> (Vec<Arc<Entry>>, Vec<Report>) {
        let reports = take(self.generation);
        let expected = std::mem::take(&mut { self }.expected);
        (expected, reports)
    }
}

fn take(generation: u64) -> Vec<Report> {
    let mut c = collector();
    let reports = match c.take() {
        Some(mine) if mine.generation == generation => mine.reports,
        other => {
            *c = other;
            return Vec::new();
        }
    };
    drop(c);
    DONE_CV.notify_all();
    reports
}

impl Drop for Open {
    fn drop(&mut self) {
        // Closed already by `close`, or abandoned: either way no report is taken later.
        let _ = take(self.generation);
    }
}
