//! The `diag-sampler` thread: it owns the session (the timers, the thread table, the
//! readers' windows), drains the ring (every [`RESCAN`] at most, sooner when the rate and
//! the CPUs could fill a quarter of the ring faster, never more often than every
//! [`TICK`]), and looks for new threads every [`RESCAN`]. Every change to the session runs
//! on it, as a job sent through a channel, so no lock is shared with the signal handler or
//! held across a wait.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::recorder::{self, Recorder};
use super::ring::{FLAG_IP_ONLY, SLOTS};
use super::signal::{self, Counters};
use super::stacks::{FastMap, Stacks};
use super::threads::{self, EXEC, Maps, Slots, THREADS, Tasks};
use super::timer::{self, Jitter, TimerId};
use super::{
    EngineError, Lease, Losses, Mark, Recorded, RecorderSettings, RecorderStatus, Refusal, Sample,
    Window,
};

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

#[derive(Default)]
struct Engine {
    session: Option<Session>,
    /// The ring's read position.
    tail: usize,
    next_reader: u64,
}

struct Session {
    /// The rate the timers run at: the highest any reader or the recorder asks.
    frequency: u32,
    period_ns: u64,
    generation: u32,
    until: SystemTime,
    readers: HashMap<u64, Reader>,
    recorder: Option<Recorder>,
    threads: FastMap<u32, Tracked>,
    slots: Slots,
    jitter: Jitter,
    last_scan: Instant,
    last_remap: Instant,
    last_drain: Instant,
    last_maps_read: Instant,
    /// Until then the ring is drained every [`TICK`]: threads were just found, and their
    /// first samples (ip only, their stack ranges unknown) are learned from sooner.
    eager_until: Instant,
    /// A drained sample's leaf lay outside every known executable mapping.
    remap_wanted: bool,
    /// `/proc/self/maps`, read when needed into a buffer kept for the session.
    maps: Maps,
    /// `/proc/self/task`, listed into a buffer kept for the session.
    tasks: Tasks,
    /// The sorted thread ids of the last scan that armed every timer it tried; a scan
    /// that lists the same ids (and has no name to read again) has nothing to do.
    known_tids: Vec<u32>,
    /// Threads found by the latest scan, whose names are read again at the next one.
    renames_pending: bool,
    /// Listings of `/proc/self/task` so far.
    listings: u64,
    /// The number of listings when `/proc/self/maps` was last read: its stack mappings
    /// hold every thread listed until then (a thread's stack is mapped before it runs
    /// and stays while it lives), and may miss those listed since.
    maps_listings: u64,
    stacks: Stacks,
    names: HashMap<Arc<str>, u32>,
    name_list: Vec<Arc<str>>,
    stacks_full: u64,
    /// Threads seen but not sampled because the thread table was full.
    unsampled: HashSet<u32>,
    /// Thread slots whose samples asked for a stack range, with a stack pointer each.
    to_learn: HashMap<usize, (u32, usize)>,
}

struct Tracked {
    slot: usize,
    /// The listing that found it (see `Session::maps_listings`).
    listed: u64,
    timer: TimerId,
    name: u32,
    /// Found by the latest scan: its name is read again at the next one (a new thread
    /// may name itself just after it starts).
    fresh: bool,
}

struct Reader {
    frequency: u32,
    /// The highest rate the sampler ran at during this window.
    peak_frequency: u32,
    /// (stack, thread name, label) → (signals, CPU nanoseconds).
    counts: FastMap<(u32, u32, u32), (i64, i64)>,
    start: Mark,
    counters: Counters,
    stacks_full: u64,
    threads_unsampled: u64,
}

impl Engine {
    fn publish_status(&self) {
        let status = self.session.as_ref().and_then(|s| {
            let top = s.readers.values().map(|r| r.frequency).max()?;
            Some((top, s.readers.len(), s.until))
        });
        *STATUS.lock().unwrap_or_else(|e| e.into_inner()) = status;
        let rec = self
            .session
            .as_ref()
            .and_then(|s| s.recorder.as_ref().map(|r| r.status(&s.stacks)));
        *RECORDER_STATUS.lock().unwrap_or_else(|e| e.into_inner()) = rec;
    }

    /// How long the loop may wait for a job before draining or rescanning: `None` when
    /// nothing samples.
    fn tick_every(&self) -> Option<Duration> {
        let s = self.session.as_ref()?;
        let (drain, rescan) = s.intervals();
        let next = (s.last_drain + drain).min(s.last_scan + rescan);
        Some(next.saturating_duration_since(Instant::now()))
    }

    /// Starts a session at `frequency` unless one runs.
    fn ensure_session(&mut self, frequency: u32, until: SystemTime) -> Result<(), EngineError> {
        if self.session.is_none() {
            self.session = Some(Session::start(frequency, until, &mut self.tail)?);
        }
        Ok(())
    }

    fn join(&mut self, frequency: u32, window: Duration) -> Result<u64, EngineError> {
        let until = SystemTime::now() + window;
        self.ensure_session(frequency, until)?;
        // Samples taken before this reader joined are not its own.
        self.tick();
        let id = self.next_reader;
        self.next_reader += 1;
        if let Some(s) = &mut self.session {
            s.until = s.until.max(until);
            s.readers.insert(
                id,
                Reader {
                    frequency,
                    peak_frequency: frequency,
                    counts: FastMap::default(),
                    start: Mark::now(),
                    counters: Counters::now(),
                    stacks_full: s.stacks_full,
                    threads_unsampled: s.unsampled.len() as u64,
                },
            );
            s.retune();
        }
        Ok(id)
    }

    fn finish(&mut self, id: u64) -> Result<Window, EngineError> {
        self.tick();
        let Some(s) = &mut self.session else {
            return Err(EngineError::Lost);
        };
        let reader = s.readers.remove(&id).ok_or(EngineError::Lost)?;
        let end = Mark::now();
        let window = s.window(reader, end);
        self.end_if_idle();
        Ok(window)
    }

    /// Stops the session when no reader and no recorder is left; else sets the rate to
    /// what those left ask.
    fn end_if_idle(&mut self) {
        let idle = self
            .session
            .as_ref()
            .is_some_and(|s| s.readers.is_empty() && s.recorder.is_none());
        if idle {
            if let Some(s) = self.session.take() {
                s.stop(&mut self.tail);
            }
            release_free_memory();
        } else if let Some(s) = &mut self.session {
            s.retune();
        }
    }

    fn start_recorder(
        &mut self,
        settings: RecorderSettings,
        stop_when: Box<dyn Fn() -> bool + Send>,
    ) -> Result<(), EngineError> {
        self.ensure_session(settings.frequency, SystemTime::now())?;
        self.tick();
        if let Some(s) = &mut self.session {
            if let Some(old) = s.recorder.take() {
                old.release_all(&mut s.stacks);
            }
            s.recorder = Some(Recorder::new(settings, stop_when));
            s.retune();
        }
        Ok(())
    }

    fn recorded(&mut self, from: SystemTime, to: Option<SystemTime>) -> Result<Recorded, Refusal> {
        self.tick();
        let Some(s) = &mut self.session else {
            return Err(Refusal::Off);
        };
        let Some(r) = &mut s.recorder else {
            return Err(Refusal::Off);
        };
        let to = to.unwrap_or_else(SystemTime::now);
        let names = &s.name_list;
        let name = |id: u32| {
            names
                .get(id as usize)
                .map_or_else(|| "(unknown)".to_owned(), |n| n.to_string())
        };
        r.window(from, to, &s.stacks, &name)
    }

    /// Drains the ring into the readers' windows and the recorder; lists threads when due.
    fn tick(&mut self) {
        let Some(s) = &mut self.session else {
            return;
        };
        if let Some(ring) = signal::ring() {
            ring.drain(&mut self.tail, |sample| s.add(sample));
        }
        let now = Instant::now();
        s.last_drain = now;
        s.refresh_maps(now);
        let mut stopped = false;
        if let Some(r) = &mut s.recorder {
            if (r.stop_when)() {
                if let Some(r) = s.recorder.take() {
                    r.release_all(&mut s.stacks);
                }
                stopped = true;
            } else {
                r.tick(&mut s.stacks, now);
            }
        }
        if stopped {
            self.end_if_idle();
            return;
        }
        let (_, rescan) = s.intervals();
        if now.duration_since(s.last_scan) + SLACK >= rescan {
            s.last_scan = now;
            s.scan();
        }
    }
}

impl Session {
    fn start(frequency: u32, until: SystemTime, tail: &mut usize) -> Result<Session, EngineError> {
        signal::ensure_installed().map_err(|e| {
            EngineError::Start(format!("installing the SIGPROF handler failed: {e}"))
        })?;
        let period_ns = period_of(frequency);
        let generation = signal::begin_rate(period_ns);
        let mut maps = Maps::default();
        // Read before the first listing: the first stacks wanted read it again.
        maps.read();
        maps.publish_exec();
        let now = Instant::now();
        let mut s = Session {
            frequency,
            period_ns,
            generation,
            until,
            readers: HashMap::new(),
            recorder: None,
            threads: FastMap::default(),
            slots: Slots::default(),
            jitter: Jitter::new(),
            last_scan: now,
            last_remap: now,
            last_drain: now,
            last_maps_read: now,
            eager_until: now,
            remap_wanted: false,
            maps,
            tasks: Tasks::default(),
            known_tids: Vec::new(),
            renames_pending: false,
            listings: 0,
            maps_listings: 0,
            stacks: Stacks::default(),
            names: HashMap::new(),
            name_list: Vec::new(),
            stacks_full: 0,
            unsampled: HashSet::new(),
            to_learn: HashMap::new(),
        };
        if let Some(e) = s.scan() {
            if s.threads.is_empty() {
                s.stop(tail);
                return Err(EngineError::Start(format!(
                    "creating a per-thread CPU timer (timer_create) failed: {e}"
                )));
            }
        }
        Ok(s)
    }

    /// Disarms and deletes every timer and forgets the threads; pending signals of this
    /// session are not counted.
    fn stop(mut self, tail: &mut usize) {
        for (_, t) in self.threads.drain() {
            timer::delete(t.timer);
            self.slots.give_back(t.slot);
        }
        signal::end_session();
        // Whatever was published meanwhile belongs to no reader.
        if let Some(ring) = signal::ring() {
            ring.drain(tail, |_| {});
        }
    }

    /// Runs the timers at the highest rate asked by a reader or the recorder.
    fn retune(&mut self) {
        let wanted = self
            .readers
            .values()
            .map(|r| r.frequency)
            .chain(self.recorder.as_ref().map(|r| r.settings.frequency))
            .max();
        if let Some(hz) = wanted {
            if hz != self.frequency {
                self.set_rate(hz);
            }
        }
        for r in self.readers.values_mut() {
            r.peak_frequency = r.peak_frequency.max(self.frequency);
        }
    }

    /// Replaces every thread's timer by one at `frequency` carrying a new generation, so
    /// that a signal of an old timer still pending is weighed by its own period. The new
    /// timer's first expiry comes when the old period's elapsed part plus it make one new
    /// period: nothing is lost when the rate falls; when it rises, a thread loses what its
    /// old timer had counted beyond one new period (less than one old period).
    fn set_rate(&mut self, frequency: u32) {
        let old_period = self.period_ns;
        self.frequency = frequency;
        self.period_ns = period_of(frequency);
        self.generation = signal::begin_rate(self.period_ns);
        let mut gone = Vec::new();
        for (tid, t) in &mut self.threads {
            let left = timer::remaining(t.timer).unwrap_or(old_period);
            let elapsed = old_period.saturating_sub(left);
            let first = self.period_ns.saturating_sub(elapsed).max(1);
            let value = signal::timer_value(self.generation, t.slot);
            let new = timer::create(*tid, value).and_then(|id| {
                match timer::arm(id, first, self.period_ns) {
                    Ok(()) => Ok(id),
                    Err(e) => {
                        timer::delete(id);
                        Err(e)
                    }
                }
            });
            timer::delete(t.timer);
            match new {
                Ok(id) => t.timer = id,
                // The thread exited since the last scan.
                Err(_) => gone.push(*tid),
            }
        }
        for tid in gone {
            if let Some(t) = self.threads.remove(&tid) {
                self.slots.give_back(t.slot);
            }
        }
    }

    /// How often to drain the ring and how often to list threads.
    fn intervals(&self) -> (Duration, Duration) {
        // The recorder's buckets close at a drain.
        let bucket = self
            .recorder
            .as_ref()
            .map_or(Duration::MAX, |r| r.settings.bucket);
        let (drain, rescan) = if self.readers.is_empty() {
            (bucket.min(RECORDER_TICK), RECORDER_RESCAN)
        } else {
            (bucket.min(RESCAN), RESCAN)
        };
        let drain = if Instant::now() < self.eager_until {
            drain.min(TICK)
        } else {
            drain
        };
        (drain.min(ring_quarter(self.frequency).max(TICK)), rescan)
    }

    /// Reads `/proc/self/maps` when a thread's stack range is wanted or the executable
    /// mappings are due again, once for both.
    fn refresh_maps(&mut self, now: Instant) {
        let since = now.duration_since(self.last_remap);
        let anyway = if self.readers.is_empty() {
            RECORDER_REMAP
        } else {
            REMAP_ANYWAY
        };
        let remap = (self.remap_wanted && since >= REMAP) || since >= anyway;
        // A thread listed after the last reading may have a stack that reading lacks.
        let stale = self.to_learn.values().any(|(tid, _)| {
            self.threads
                .get(tid)
                .is_some_and(|t| t.listed > self.maps_listings)
        });
        // A stack pointer in no mapping of the reading (a stack mapped since, such as a
        // coroutine's): read again, once per REMAP at most.
        let missing = now.duration_since(self.last_maps_read) >= REMAP
            && self
                .to_learn
                .values()
                .any(|(_, sp)| self.maps.stack_range(*sp).is_none());
        if remap || stale || missing {
            self.maps.read();
            self.maps_listings = self.listings;
            self.last_maps_read = now;
        }
        if remap {
            self.last_remap = now;
            self.remap_wanted = false;
            self.maps.publish_exec();
        }
        self.learn_stacks();
    }

    /// Arms timers for new threads and deletes those of exited ones. Returns the last
    /// timer error, if any.
    fn scan(&mut self) -> Option<std::io::Error> {
        let mut tasks = std::mem::take(&mut self.tasks);
        let tids = tasks.list();
        self.listings += 1;
        let error = self.scan_tids(tids);
        self.tasks = tasks;
        error
    }

    /// [`Session::scan`] of the sorted thread ids `tids`.
    fn scan_tids(&mut self, tids: &[u32]) -> Option<std::io::Error> {
        if !self.renames_pending && tids == self.known_tids.as_slice() {
            return None;
        }
        let alive = |t: u32| tids.binary_search(&t).is_ok();
        let gone: Vec<u32> = self
            .threads
            .keys()
            .filter(|t| !alive(**t))
            .copied()
            .collect();
        for tid in gone {
            if let Some(t) = self.threads.remove(&tid) {
                timer::delete(t.timer);
                self.slots.give_back(t.slot);
            }
        }
        self.unsampled.retain(|t| alive(*t));
        if self.renames_pending {
            self.renames_pending = false;
            let mut renamed = Vec::new();
            for (tid, t) in &mut self.threads {
                if t.fresh {
                    t.fresh = false;
                    renamed.push(*tid);
                }
            }
            for tid in renamed {
                let name = self.intern_name(threads::thread_name(tid));
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.name = name;
                }
            }
        }
        let mut error = None;
        for &tid in tids {
            if self.threads.contains_key(&tid) {
                continue;
            }
            let Some(slot) = self.slots.take(tid) else {
                self.unsampled.insert(tid);
                continue;
            };
            THREADS.set(slot, tid, None);
            let armed =
                timer::create(tid, signal::timer_value(self.generation, slot)).and_then(|id| {
                    let first = self.jitter.below(self.period_ns);
                    match timer::arm(id, first, self.period_ns) {
                        Ok(()) => Ok(id),
                        Err(e) => {
                            timer::delete(id);
                            Err(e)
                        }
                    }
                });
            match armed {
                Ok(timer) => {
                    let name = self.intern_name(threads::thread_name(tid));
                    self.threads.insert(
                        tid,
                        Tracked {
                            slot,
                            listed: self.listings,
                            timer,
                            name,
                            fresh: true,
                        },
                    );
                    self.renames_pending = true;
                    self.eager_until = Instant::now() + EAGER;
                }
                Err(e) => {
                    // Most often the thread exited since the listing.
                    self.slots.give_back(slot);
                    error = Some(e);
                }
            }
        }
        // A listing whose timers all armed is the one the next scan compares with; after
        // an error the next scan does everything again (and retries the thread).
        self.known_tids.clear();
        if error.is_none() {
            self.known_tids.extend_from_slice(tids);
        }
        error
    }

    fn intern_name(&mut self, name: String) -> u32 {
        if let Some(id) = self.names.get(name.as_str()) {
            return *id;
        }
        // A process that keeps starting threads of new names (or unnamed ones, named by
        // their id) must not grow the table for as long as the recorder runs.
        let name = if self.name_list.len() >= MAX_NAMES {
            "(other threads)".to_owned()
        } else {
            name
        };
        if let Some(id) = self.names.get(name.as_str()) {
            return *id;
        }
        let id = self.name_list.len() as u32;
        let name: Arc<str> = name.into();
        self.name_list.push(name.clone());
        self.names.insert(name, id);
        id
    }

    fn add(&mut self, sample: super::ring::Sample<'_>) {
        let h = sample.header;
        if h.flags & FLAG_IP_ONLY != 0 {
            self.to_learn.insert(h.thread_slot as usize, (h.tid, h.sp));
        }
        let Some(&leaf) = sample.frames.first() else {
            return;
        };
        // The leaf is stored as the interrupted address + 1, as return addresses are.
        if !self.remap_wanted && EXEC.containing(leaf.wrapping_sub(1)).is_none() {
            self.remap_wanted = true;
        }
        let recorded = self.recorder.as_mut().and_then(|r| r.thin(h.weight));
        if self.readers.is_empty() && recorded.is_none() {
            return;
        }
        // The recorder may fill the table up to its own share; readers up to the cap.
        let limit = if self.readers.is_empty() {
            recorder::MAX_FRAMES
        } else {
            usize::MAX
        };
        let live_before = self.stacks.live();
        let Some(stack) = self.stacks.intern(sample.frames, limit) else {
            if !self.readers.is_empty() {
                self.stacks_full += 1;
            }
            if let (Some(r), Some(_)) = (&mut self.recorder, recorded) {
                r.lost_stack();
            }
            return;
        };
        let name = match self.threads.get(&h.tid) {
            Some(t) => t.name,
            None => self.intern_name(format!("thread {}", h.tid)),
        };
        let key = (stack, name, h.label);
        if let (Some(r), Some(weight)) = (&mut self.recorder, recorded) {
            // A stack new to the table counts against the recorder's share even when a
            // reader's cap let it in.
            let new = self.stacks.live() > live_before;
            if !new || self.stacks.frames_held() <= recorder::MAX_FRAMES {
                r.add(&mut self.stacks, key, weight);
            } else {
                r.lost_stack();
            }
        }
        let weight = i64::try_from(h.weight).unwrap_or(i64::MAX);
        for r in self.readers.values_mut() {
            let e = r.counts.entry(key).or_insert_with(|| {
                self.stacks.hold(stack);
                (0, 0)
            });
            e.0 += 1;
            e.1 = e.1.saturating_add(weight);
        }
    }

    /// Publishes the stack ranges of threads whose samples lacked one.
    fn learn_stacks(&mut self) {
        if self.to_learn.is_empty() {
            return;
        }
        for (slot, (tid, sp)) in self.to_learn.drain() {
            let tracked = self.threads.get(&tid).is_some_and(|t| t.slot == slot);
            if tracked {
                if let Some(range) = self.maps.stack_range(sp) {
                    THREADS.set(slot, tid, Some(range));
                }
            }
        }
    }

    /// The reader's finished window; the stacks it held are let go.
    fn window(&mut self, reader: Reader, end: Mark) -> Window {
        let counters = Counters::now().since(reader.counters);
        let mut samples = Vec::with_capacity(reader.counts.len());
        for ((stack, name, label), (count, weight_ns)) in reader.counts {
            samples.push(Sample {
                ips: self.stacks.frames(stack).to_vec(),
                thread: self
                    .name_list
                    .get(name as usize)
                    .map_or_else(|| "(unknown)".to_owned(), |n| n.to_string()),
                label,
                count,
                weight_ns,
            });
            self.stacks.release(stack);
        }
        Window {
            samples,
            start: reader.start,
            end,
            frequency: reader.frequency,
            peak_frequency: reader.peak_frequency,
            losses: Losses {
                ring_full: counters.dropped,
                ip_only: counters.ip_only,
                stacks_full: self.stacks_full.saturating_sub(reader.stacks_full),
                threads_unsampled: (self.unsampled.len() as u64)
                    .saturating_sub(reader.threads_unsampled),
                foreign_signals: counters.forwarded,
            },
        }
    }
}

/// How long the timers at `frequency` on every CPU of the machine take to fill a quarter of
/// the ring (each busy CPU gives at most `frequency` signals per second).
fn ring_quarter(frequency: u32) -> Duration {
    static CPUS: OnceLock<u64> = OnceLock::new();
    let cpus =
        *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
    let per_second = u64::from(frequency.max(1)).saturating_mul(cpus);
    Duration::from_nanos((SLOTS as u64 / 4).saturating_mul(1_000_000_000) / per_second)
}

/// Nanoseconds of thread CPU time between two expiries at `frequency`.
fn period_of(frequency: u32) -> u64 {
    1_000_000_000 / u64::from(frequency.max(1))
}

/// Hands freed pages back to the system after a session: glibc keeps them otherwise, and
/// jemalloc, when it is the allocator, keeps them dirty for its decay time.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
    #[cfg(feature = "heap")]
    crate::heap::purge();
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
    let deadline = Instant::now() + Duration::from_secs(5);
    let slot = loop {
        let slot = on_sampler_blocking(move |e| {
            e.session
                .as_ref()
                .and_then(|s| s.threads.get(&tid).map(|t| t.slot))
        })?;
        if let Some(slot) = slot {
            break slot;
        }
        if Instant::now() > deadline {
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
