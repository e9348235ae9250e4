//! The wall-time sampler: at each tick, every traced future's await stack (a traced dump,
//! `crate::tasks`), weighted by the time since the previous tick. No HTTP here.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::shutdown::Shutdown;
use crate::symbols::{self, Resolved};
use crate::tasks::dump::{self, Frame};
use crate::tasks::registry::{self, Outcome};

use super::idle::idle;
use super::threads;

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
    /// Ticks without thread samples because a CPU profile was running.
    pub(crate) paused_ticks: u64,
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
    let mut names: Vec<Box<str>> = Vec::new();
    let mut name_ids: HashMap<Box<str>, u32> = HashMap::new();
    let mut weights: HashMap<(u32, Place), Weight> = HashMap::new();
    let mut stats = Stats {
        started: Some(SystemTime::now()),
        hz: opts.hz,
        lowest_hz: f64::from(opts.hz),
        ..Stats::default()
    };
    stats.threads_asked = opts.threads;
    let sampler = if opts.threads {
        threads::Sampler::new()
    } else {
        Err("threads=0".to_owned())
    };
    let mut thread_sampler = match sampler {
        Ok(t) => Some(t),
        Err(e) => {
            stats.threads.unavailable = Some(e);
            None
        }
    };
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
        // The threads' signals first: their handlers run while the tasks report.
        if let Some(t) = thread_sampler.as_mut() {
            t.ask();
        }
        let open = registry::open(opts.except);
        let tasks = open.expected.len();
        interval = stretched(base, tasks);
        if !open.complete() {
            registry::Open::wait_blocking(
                open.generation(),
                (interval * 3 / 4).min(MAX_REPORT_WAIT),
            );
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
        let nanos = i64::try_from(weight.as_nanos()).unwrap_or(i64::MAX);
        let mut add = |name: &str, place: Place| {
            let id = match name_ids.get(name) {
                Some(id) => *id,
                None => {
                    let id = names.len() as u32;
                    names.push(name.into());
                    name_ids.insert(name.into(), id);
                    id
                }
            };
            let w = weights.entry((id, place)).or_default();
            w.count += 1;
            w.nanos = w.nanos.saturating_add(nanos);
        };
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
            add(&r.entry.name, place);
        }
        for e in expected.iter().filter(|e| !reported.contains(&e.id)) {
            let place = if e.poll_started.load(Ordering::Relaxed) != 0 {
                Place::InPoll
            } else {
                Place::Queued
            };
            add(&e.name, place);
        }
        drop(expected);
        if let Some(t) = thread_sampler.as_mut() {
            for s in t.collect() {
                add(&s.name, Place::Thread(s.frames, s.label));
            }
        }
        let next = tick + interval;
        let now = Instant::now();
        if next > now {
            let until = next.min(end);
            // Sleep in short steps so a departed client or shutdown ends the profile soon.
            let mut now = now;
            while now < until && !stop.load(Ordering::Relaxed) && !opts.shutdown.is_triggered() {
                std::thread::sleep((until - now).min(Duration::from_millis(50)));
                now = Instant::now();
            }
        }
    }
    if let Some(t) = thread_sampler {
        stats.threads = t.stats;
    }
    stats.duration = started.elapsed();
    stats.untraced = registry::untraced();
    Capture {
        names,
        weights,
        stats,
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

/// One symbolized stack of the profile: the task's name, its frames leaf first (or a
/// pseudo-frame), and its weight.
#[derive(Debug)]
pub(crate) struct WallStack {
    /// The task's name, or the thread's for a thread's stack.
    pub(crate) task: Arc<str>,
    /// Whether this is a thread's stack (`task` is then the thread's name).
    pub(crate) thread: bool,
    /// The label-set id (`diag::labels`) the task or thread ran under, 0 for none.
    pub(crate) label: u32,
    pub(crate) frames: Vec<Frame>,
    pub(crate) weight: Weight,
}

/// A symbolized wall-time profile.
#[derive(Debug)]
pub(crate) struct WallProfile {
    pub(crate) stacks: Vec<WallStack>,
    pub(crate) stats: Stats,
}

/// Resolves the addresses (diag's symbolizer; slow, call it on a blocking thread), trims
/// the dump machinery off each stack and merges the stacks that trim to the same frames.
pub(crate) fn symbolize(capture: Capture) -> WallProfile {
    let resolved: HashMap<usize, Resolved> =
        symbols::resolve_all(capture.weights.keys().flat_map(|(_, p)| match p {
            Place::Awaiting(s, _) | Place::Thread(s, _) => s.clone(),
            _ => Vec::new(),
        }));
    let names: Vec<Arc<str>> = capture.names.iter().map(|n| Arc::from(&**n)).collect();
    let mut stats = capture.stats;
    let mut merged: HashMap<(u32, Vec<u64>, bool, u32), WallStack> = HashMap::new();
    for ((name, place), w) in capture.weights {
        let thread = matches!(place, Place::Thread(..));
        let label = match &place {
            Place::Thread(_, label) | Place::Awaiting(_, label) => *label,
            _ => 0,
        };
        let frames = match &place {
            Place::Thread(s, _) => s
                .iter()
                .map(|ip| Frame {
                    ip: *ip as u64,
                    lines: resolved.get(ip).cloned().unwrap_or_default(),
                })
                .collect(),
            Place::Awaiting(s, _) => dump::trim(
                s.iter()
                    .map(|ip| Frame {
                        ip: *ip as u64,
                        lines: resolved.get(ip).cloned().unwrap_or_default(),
                    })
                    .collect(),
            ),
            other => match pseudo_frame(other) {
                Some((ip, function)) => vec![Frame {
                    ip,
                    lines: Arc::from(vec![crate::proto::Line {
                        function: function.to_owned(),
                        file: String::new(),
                        line: 0,
                    }]),
                }],
                None => Vec::new(),
            },
        };
        if thread
            && idle(
                frames
                    .iter()
                    .flat_map(|f| f.lines.iter().map(|l| l.function.as_str())),
            )
        {
            stats.idle_thread_samples += w.count;
            stats.idle_thread_nanos = stats.idle_thread_nanos.saturating_add(w.nanos);
            continue;
        }
        let key = (name, frames.iter().map(|f| f.ip).collect(), thread, label);
        let task = names
            .get(name as usize)
            .cloned()
            .unwrap_or_else(|| "?".into());
        let s = merged.entry(key).or_insert_with(|| WallStack {
            task,
            thread,
            label,
            frames,
            weight: Weight::default(),
        });
        s.weight.count += w.count;
        s.weight.nanos = s.weight.nanos.saturating_add(w.nanos);
    }
    let mut stacks: Vec<WallStack> = merged.into_values().collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s.weight.nanos));
    WallProfile { stacks, stats }
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
