//! The wall-time sampler: at each tick, every traced future's await stack (a traced dump,
//! `crate::tasks`), weighted by the time since the previous tick. No HTTP here.

mod symbolize;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::shutdown::Shutdown;
use crate::tasks::registry::{self, Outcome};

use super::threads;
#[cfg(test)]
pub(crate) use symbolize::WallStack;
pub(crate) use symbolize::{WallProfile, symbolize};

/// Samples per second unless `hz` says otherwise. Each sample costs the process ~2.4 µs
/// of CPU per traced future (measured on the demo, whose requests' stacks are deep): at
/// 20 Hz, 1,000 traced futures cost ~5 % of one core, and the rate lowers itself above
/// that so it stays there (docs/performance.md, "Wall-time profiles").
pub(crate) const DEFAULT_HZ: u32 = 20;
/// Threads sampled at one tick at most.
pub(crate) const MAX_THREADS_SAMPLED: usize = 512;
/// The highest `hz` accepted.
pub(crate) const MAX_HZ: u32 = 100;
/// Up to this many traced futures the rate asked is kept; above it each interval is
/// stretched in proportion (2,000 futures: half the rate), so a sample's cost per second
/// stays what 1,000 futures cost at the rate asked.
pub(crate) const FULL_RATE_TASKS: usize = 1000;
/// The longest a tick waits for the futures' reports; a future silent by then is counted
/// as inside a poll, or as woken and waiting for a worker.
const MAX_REPORT_WAIT: Duration = Duration::from_millis(200);

/// Where a traced future was at a sampling instant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Place {
    /// Awaiting a tokio leaf future: the frame-walk addresses, leaf first (untrimmed), and
    /// the label-set id the future ran under.
    Awaiting(Vec<usize>, u32),
    /// Awaiting, but not on a tokio leaf future (no stack to show).
    NoLeaf,
    /// Inside a poll that did not return before the tick ended: running, or blocking its
    /// worker.
    InPoll,
    /// Woken, but not polled before the tick ended: queued behind other work.
    Queued,
    /// A thread's stack (`crate::wall::threads`): its addresses leaf first, and the
    /// label-set id it ran under.
    Thread(Vec<usize>, u32),
}

/// Pseudo-frames for the places that have no stack, with the fake addresses that keep
/// them apart in profile.proto (each location is keyed by its address).
pub(crate) fn pseudo_frame(place: &Place) -> Option<(u64, &'static str)> {
    match place {
        Place::Awaiting(..) | Place::Thread(..) => None,
        Place::NoLeaf => Some((1, "[awaiting no tokio leaf future]")),
        Place::InPoll => Some((2, "[inside a poll: running, or blocking its worker]")),
        Place::Queued => Some((3, "[woken, waiting for a worker to poll it]")),
    }
}

/// What one profile asks for.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) window: Duration,
    pub(crate) hz: u32,
    /// diag's id of the traced future running the profile (left out), 0 for none.
    pub(crate) except: u64,
    /// Whether threads are sampled too (`threads=1`, the default).
    pub(crate) threads: bool,
    pub(crate) shutdown: Shutdown,
}

/// Weight of one (task name, place): samples and nanoseconds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Weight {
    pub(crate) count: i64,
    pub(crate) nanos: i64,
}

/// The samples of one window, before symbolization.
#[derive(Debug)]
pub(crate) struct Capture {
    pub(crate) names: Vec<Box<str>>,
    pub(crate) weights: HashMap<(u32, Place), Weight>,
    pub(crate) stats: Stats,
}

/// How the window went.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    pub(crate) started: Option<SystemTime>,
    pub(crate) duration: Duration,
    pub(crate) hz: u32,
    pub(crate) ticks: u64,
    /// Ticks taken at a rate lowered for the number of traced futures.
    pub(crate) lowered_ticks: u64,
    /// The lowest rate used (Hz), the rate asked when never lowered.
    pub(crate) lowest_hz: f64,
    /// The most traced futures seen at one tick.
    pub(crate) most_tasks: usize,
    /// Time spent from marking the futures to closing each tick's collection, summed.
    pub(crate) sampling: Duration,
    /// The longest such time for one tick.
    pub(crate) slowest_tick: Duration,
    /// Futures that ran untraced because the registry was full (since the start).
    pub(crate) untraced: u64,
    pub(crate) ended_early: bool,
    /// Whether threads were to be sampled.
    pub(crate) threads_asked: bool,
    /// The threads' samples.
    pub(crate) threads: ThreadStats,
    /// Thread samples left out as tokio waiting for work (parked workers, idle
    /// blocking-pool threads), and their time.
    pub(crate) idle_thread_samples: i64,
    pub(crate) idle_thread_nanos: i64,
}

/// One thread's sample at a tick.
#[derive(Debug)]
pub(crate) struct ThreadSample {
    pub(crate) name: String,
    /// Addresses, leaf first (the interrupted address plus one, then return addresses).
    pub(crate) frames: Vec<usize>,
    /// The label-set id the thread ran under.
    pub(crate) label: u32,
}

/// How the thread sampling went over a profile.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThreadStats {
    /// Why threads are not sampled at all (no free signal), if so.
    pub(crate) unavailable: Option<String>,
    /// The signal used.
    pub(crate) signal: i32,
    pub(crate) signals_sent: u64,
    pub(crate) samples: u64,
    /// Samples not kept: the interrupted address alone (the thread's stack was not known
    /// yet; it is for the next tick).
    pub(crate) ip_only: u64,
    /// Threads that did not run the handler in time, or had exited.
    pub(crate) missed: u64,
    /// Threads not signalled because they block diag's signal, summed over the ticks.
    pub(crate) blocking_signal: u64,
    /// Threads past [`MAX_THREADS_SAMPLED`] at a tick, summed.
    pub(crate) over_limit: u64,
    /// Time spent listing threads, sending the signals and collecting the samples.
    pub(crate) busy: Duration,
    /// Signals on diag's signal that were not diag's, during the profile.
    pub(crate) foreign: u64,
}

/// Samples until the window ends, `stop` is set (the request went away) or shutdown
/// begins. Blocks the calling thread, which must not be one of the application's workers.
pub(crate) fn run(opts: &Options, stop: &AtomicBool) -> Capture {
    let base = Duration::from_secs(1) / opts.hz.max(1);
    let started = Instant::now();
    let end = started + opts.window;
    let mut tally = Tally::default();
    let mut stats = Stats {
        started: Some(SystemTime::now()),
        hz: opts.hz,
        lowest_hz: f64::from(opts.hz),
        threads_asked: opts.threads,
        ..Stats::default()
    };
    let mut thread_sampler = thread_sampler(opts.threads, &mut stats);
    let mut previous: Option<Instant> = None;
    let mut interval = base;
    loop {
        let tick = Instant::now();
        if tick >= end || stop.load(Ordering::Relaxed) {
            break;
        }
        if opts.shutdown.is_triggered() {
            stats.ended_early = true;
            break;
        }
        // This tick stands for the time since the previous one.
        let weight = previous.map_or(interval, |p| tick.duration_since(p));
        previous = Some(tick);
        let nanos = i64::try_from(weight.as_nanos()).unwrap_or(i64::MAX);
        // The threads' signals first: their handlers run while the tasks report.
        if let Some(t) = thread_sampler.as_mut() {
            t.ask();
        }
        interval = sample_tasks(opts, base, tick, &mut stats, &mut tally, nanos);
        if let Some(t) = thread_sampler.as_mut() {
            for s in t.collect() {
                tally.add(&s.name, Place::Thread(s.frames, s.label), nanos);
            }
        }
        pause(tick + interval, end, opts, stop);
    }
    if let Some(t) = thread_sampler {
        stats.threads = t.stats;
    }
    stats.duration = started.elapsed();
    stats.untraced = registry::untraced();
    Capture {
        names: tally.names,
        weights: tally.weights,
        stats,
    }
}

/// The thread sampler when threads are to be sampled and a signal is free; otherwise
/// why not, in `stats`.
fn thread_sampler(wanted: bool, stats: &mut Stats) -> Option<threads::Sampler> {
    let sampler = if wanted {
        threads::Sampler::new()
    } else {
        Err("threads=0".to_owned())
    };
    match sampler {
        Ok(t) => Some(t),
        Err(e) => {
            stats.threads.unavailable = Some(e);
            None
        }
    }
}

/// The window's counts so far: each (task or thread name, place) weighed.
#[derive(Default)]
struct Tally {
    names: Vec<Box<str>>,
    name_ids: HashMap<Box<str>, u32>,
    weights: HashMap<(u32, Place), Weight>,
}

impl Tally {
    /// Counts one sample of `name` at `place`, standing for `nanos` nanoseconds.
    fn add(&mut self, name: &str, place: Place, nanos: i64) {
        let id = match self.name_ids.get(name) {
            Some(id) => *id,
            None => {
                let id = self.names.len() as u32;
                self.names.push(name.into());
                self.name_ids.insert(name.into(), id);
                id
            }
        };
        let w = self.weights.entry((id, place)).or_default();
        w.count += 1;
        w.nanos = w.nanos.saturating_add(nanos);
    }
}

/// The task samples of the tick that began at `tick`: every traced future's report
/// (waiting a little for them), the silent ones counted as inside a poll or queued.
/// Returns the interval to the next tick (stretched for many futures).
fn sample_tasks(
    opts: &Options,
    base: Duration,
    tick: Instant,
    stats: &mut Stats,
    tally: &mut Tally,
    nanos: i64,
) -> Duration {
    let open = registry::open(opts.except);
    let tasks = open.expected.len();
    let interval = stretched(base, tasks);
    if !open.complete() {
        registry::Open::wait_blocking(open.generation(), (interval * 3 / 4).min(MAX_REPORT_WAIT));
    }
    let (expected, reports) = open.close();
    let took = tick.elapsed();
    stats.ticks += 1;
    stats.sampling += took;
    stats.slowest_tick = stats.slowest_tick.max(took);
    stats.most_tasks = stats.most_tasks.max(tasks);
    if interval > base {
        stats.lowered_ticks += 1;
        stats.lowest_hz = stats.lowest_hz.min(1.0 / interval.as_secs_f64());
    }
    let mut reported = std::collections::HashSet::with_capacity(reports.len());
    for r in reports {
        reported.insert(r.entry.id);
        if r.outcome != Outcome::Waiting {
            // Completed or dropped during the tick: no longer waiting anywhere.
            continue;
        }
        // A future awaiting several leaves at once (`join!`, `select!`) is counted
        // once, at its deepest stack, as the goroutine profile counts it.
        let place = match r.stacks.into_iter().max_by_key(Vec::len) {
            Some(s) => Place::Awaiting(s, r.label),
            None => Place::NoLeaf,
        };
        tally.add(&r.entry.name, place, nanos);
    }
    for e in expected.iter().filter(|e| !reported.contains(&e.id)) {
        let place = if e.poll_started.load(Ordering::Relaxed) != 0 {
            Place::InPoll
        } else {
            Place::Queued
        };
        tally.add(&e.name, place, nanos);
    }
    interval
}

/// Sleeps until `next` (or the window's `end`), in short steps so that a departed client
/// or shutdown ends the profile soon.
fn pause(next: Instant, end: Instant, opts: &Options, stop: &AtomicBool) {
    let until = next.min(end);
    let mut now = Instant::now();
    while now < until && !stop.load(Ordering::Relaxed) && !opts.shutdown.is_triggered() {
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
        now = Instant::now();
    }
}

/// The interval for `tasks` traced futures: `base` up to [`FULL_RATE_TASKS`], longer in
/// proportion above it.
pub(crate) fn stretched(base: Duration, tasks: usize) -> Duration {
    if tasks <= FULL_RATE_TASKS {
        base
    } else {
        base.mul_f64(tasks as f64 / FULL_RATE_TASKS as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_stretches_above_the_task_limit() {
        let base = Duration::from_millis(50);
        assert_eq!(stretched(base, 0), base);
        assert_eq!(stretched(base, FULL_RATE_TASKS), base);
        assert_eq!(stretched(base, 2 * FULL_RATE_TASKS), base * 2);
        assert_eq!(stretched(base, 10 * FULL_RATE_TASKS), base * 10);
    }
}
