//! The `diag-sampler` thread: it owns the session (the timers, the thread table, the
//! readers' windows), drains the ring every [`TICK`], and looks for new threads every
//! [`RESCAN`]. Every change to the session runs on it, as a job sent through a channel,
//! so no lock is shared with the signal handler or held across a wait.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::ring::FLAG_IP_ONLY;
use super::signal::{self, Counters};
use super::threads::{self, Slots, THREADS};
use super::timer::{self, Jitter, TimerId};
use super::{EngineError, Lease, Losses, Mark, Sample, Window};

/// How often the ring is drained while a session runs.
const TICK: Duration = Duration::from_millis(20);
/// How often `/proc/self/task` is listed for new threads (and exited ones).
const RESCAN: Duration = Duration::from_millis(100);
/// How often the executable mappings are re-read (libraries loaded since).
const REMAP: Duration = Duration::from_secs(1);
/// Distinct stacks kept per session at most (~300 bytes each at 30 frames): beyond it,
/// new stacks are counted as lost rather than kept.
const MAX_STACKS: usize = 16_384;

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
        let job = if engine.session.is_some() {
            match rx.recv_timeout(TICK) {
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

/// What the index page shows: `Some((frequency, readers, until))` while readers sample.
/// Never waits.
pub(crate) fn running() -> Option<(u32, usize, SystemTime)> {
    STATUS.try_lock().ok().and_then(|s| *s)
}

static STATUS: Mutex<Option<(u32, usize, SystemTime)>> = Mutex::new(None);

#[derive(Default)]
struct Engine {
    session: Option<Session>,
    /// The ring's read position.
    tail: usize,
    next_reader: u64,
}

struct Session {
    frequency: u32,
    period_ns: u64,
    generation: u32,
    until: SystemTime,
    readers: HashMap<u64, Reader>,
    threads: HashMap<u32, Tracked>,
    slots: Slots,
    jitter: Jitter,
    last_scan: Instant,
    last_remap: Instant,
    stacks: HashMap<Arc<[usize]>, u32>,
    stack_list: Vec<Arc<[usize]>>,
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
    timer: TimerId,
    name: u32,
    /// Found by the latest scan: its name is read again at the next one (a new thread
    /// may name itself just after it starts).
    fresh: bool,
}

struct Reader {
    /// (stack, thread name, label) → (signals, CPU nanoseconds).
    counts: HashMap<(u32, u32, u32), (i64, i64)>,
    start: Mark,
    counters: Counters,
    stacks_full: u64,
    threads_unsampled: u64,
}

impl Engine {
    fn publish_status(&self) {
        let status = self.session.as_ref().and_then(|s| {
            (!s.readers.is_empty()).then_some((s.frequency, s.readers.len(), s.until))
        });
        *STATUS.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    fn join(&mut self, frequency: u32, window: Duration) -> Result<u64, EngineError> {
        let until = SystemTime::now() + window;
        match &mut self.session {
            Some(s) if s.frequency != frequency => {
                return Err(EngineError::OtherFrequency {
                    running: s.frequency,
                    until: s.until,
                });
            }
            Some(s) => s.until = s.until.max(until),
            None => {
                let s = Session::start(frequency, until, &mut self.tail)?;
                self.session = Some(s);
            }
        }
        // Samples taken before this reader joined are not its own.
        self.tick();
        let id = self.next_reader;
        self.next_reader += 1;
        if let Some(s) = &mut self.session {
            s.readers.insert(
                id,
                Reader {
                    counts: HashMap::new(),
                    start: Mark::now(),
                    counters: Counters::now(),
                    stacks_full: s.stacks_full,
                    threads_unsampled: s.unsampled.len() as u64,
                },
            );
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
        if s.readers.is_empty() {
            if let Some(s) = self.session.take() {
                s.stop(&mut self.tail);
            }
            release_free_memory();
        }
        Ok(window)
    }

    /// Drains the ring into the readers' windows; lists threads when due.
    fn tick(&mut self) {
        let Some(s) = &mut self.session else {
            return;
        };
        if let Some(ring) = signal::ring() {
            ring.drain(&mut self.tail, |sample| s.add(sample));
        }
        s.learn_stacks();
        let now = Instant::now();
        if now.duration_since(s.last_remap) >= REMAP {
            s.last_remap = now;
            threads::publish_exec(&threads::read_maps());
        }
        if now.duration_since(s.last_scan) >= RESCAN {
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
        let period_ns = 1_000_000_000 / u64::from(frequency.max(1));
        let generation = signal::begin_session(period_ns);
        threads::publish_exec(&threads::read_maps());
        let now = Instant::now();
        let mut s = Session {
            frequency,
            period_ns,
            generation,
            until,
            readers: HashMap::new(),
            threads: HashMap::new(),
            slots: Slots::default(),
            jitter: Jitter::new(),
            last_scan: now,
            last_remap: now,
            stacks: HashMap::new(),
            stack_list: Vec::new(),
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

    /// Arms timers for new threads and deletes those of exited ones. Returns the last
    /// timer error, if any.
    fn scan(&mut self) -> Option<std::io::Error> {
        let tids = threads::list_tids();
        let alive: HashSet<u32> = tids.iter().copied().collect();
        let gone: Vec<u32> = self
            .threads
            .keys()
            .filter(|t| !alive.contains(t))
            .copied()
            .collect();
        for tid in gone {
            if let Some(t) = self.threads.remove(&tid) {
                timer::delete(t.timer);
                self.slots.give_back(t.slot);
            }
        }
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
        let mut error = None;
        for tid in tids {
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
                            timer,
                            name,
                            fresh: true,
                        },
                    );
                }
                Err(e) => {
                    // Most often the thread exited since the listing.
                    self.slots.give_back(slot);
                    error = Some(e);
                }
            }
        }
        error
    }

    fn intern_name(&mut self, name: String) -> u32 {
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
        if self.readers.is_empty() || sample.frames.is_empty() {
            return;
        }
        let stack = match self.stacks.get(sample.frames) {
            Some(id) => *id,
            None if self.stack_list.len() >= MAX_STACKS => {
                self.stacks_full += 1;
                return;
            }
            None => {
                let id = self.stack_list.len() as u32;
                let frames: Arc<[usize]> = sample.frames.into();
                self.stack_list.push(frames.clone());
                self.stacks.insert(frames, id);
                id
            }
        };
        let name = match self.threads.get(&h.tid) {
            Some(t) => t.name,
            None => self.intern_name(format!("thread {}", h.tid)),
        };
        let weight = i64::try_from(h.weight).unwrap_or(i64::MAX);
        for r in self.readers.values_mut() {
            let e = r.counts.entry((stack, name, h.label)).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.saturating_add(weight);
        }
    }

    /// Publishes the stack ranges of threads whose samples lacked one.
    fn learn_stacks(&mut self) {
        if self.to_learn.is_empty() {
            return;
        }
        let maps = threads::read_maps();
        for (slot, (tid, sp)) in self.to_learn.drain() {
            let tracked = self.threads.get(&tid).is_some_and(|t| t.slot == slot);
            if tracked {
                if let Some(range) = threads::stack_range(&maps, sp) {
                    THREADS.set(slot, tid, Some(range));
                }
            }
        }
    }

    fn window(&self, reader: Reader, end: Mark) -> Window {
        let counters = Counters::now().since(reader.counters);
        let samples = reader
            .counts
            .into_iter()
            .map(|((stack, name, label), (count, weight_ns))| Sample {
                ips: self.stack_list[stack as usize].to_vec(),
                thread: self.name_list[name as usize].to_string(),
                label,
                count,
                weight_ns,
            })
            .collect();
        Window {
            samples,
            start: reader.start,
            end,
            frequency: self.frequency,
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
