//! A running session: the timers of every thread, the readers' windows and what they
//! count, the recorder; started by the first reader, stopped by the last.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::{RECORDER_RESCAN, RECORDER_TICK, RESCAN, TICK};
use crate::cpu::engine::recorder::{self, Recorder};
use crate::cpu::engine::ring::{FLAG_IP_ONLY, SLOTS};
use crate::cpu::engine::signal::{self, Counters};
use crate::cpu::engine::stacks::{FastMap, Stacks};
use crate::cpu::engine::threads::{EXEC, Maps, Slots, Tasks};
use crate::cpu::engine::timer::{self, Jitter, TimerId};
use crate::cpu::engine::{EngineError, Losses, Mark, Sample, Window};

pub(super) struct Session {
    /// The rate the timers run at: the highest any reader or the recorder asks.
    pub(super) frequency: u32,
    pub(super) period_ns: u64,
    pub(super) generation: u32,
    pub(super) until: SystemTime,
    pub(super) readers: HashMap<u64, Reader>,
    pub(super) recorder: Option<Recorder>,
    pub(super) threads: FastMap<u32, Tracked>,
    pub(super) slots: Slots,
    pub(super) jitter: Jitter,
    pub(super) last_scan: Instant,
    pub(super) last_remap: Instant,
    pub(super) last_drain: Instant,
    pub(super) last_maps_read: Instant,
    /// Until then the ring is drained every [`TICK`]: threads were just found, and their
    /// first samples (ip only, their stack ranges unknown) are learned from sooner.
    pub(super) eager_until: Instant,
    /// A drained sample's leaf lay outside every known executable mapping.
    pub(super) remap_wanted: bool,
    /// `/proc/self/maps`, read when needed into a buffer kept for the session.
    pub(super) maps: Maps,
    /// `/proc/self/task`, listed into a buffer kept for the session.
    pub(super) tasks: Tasks,
    /// The sorted thread ids of the last scan that armed every timer it tried; a scan
    /// that lists the same ids (and has no name to read again) has nothing to do.
    pub(super) known_tids: Vec<u32>,
    /// Threads found by the latest scan, whose names are read again at the next one.
    pub(super) renames_pending: bool,
    /// Listings of `/proc/self/task` so far.
    pub(super) listings: u64,
    /// The number of listings when `/proc/self/maps` was last read: its stack mappings
    /// hold every thread listed until then (a thread's stack is mapped before it runs
    /// and stays while it lives), and may miss those listed since.
    pub(super) maps_listings: u64,
    pub(super) stacks: Stacks,
    pub(super) names: HashMap<Arc<str>, u32>,
    pub(super) name_list: Vec<Arc<str>>,
    pub(super) stacks_full: u64,
    /// Threads seen but not sampled because the thread table was full.
    pub(super) unsampled: HashSet<u32>,
    /// Thread slots whose samples asked for a stack range, with a stack pointer each.
    pub(super) to_learn: HashMap<usize, (u32, usize)>,
}

pub(super) struct Tracked {
    pub(super) slot: usize,
    /// The listing that found it (see `Session::maps_listings`).
    pub(super) listed: u64,
    pub(super) timer: TimerId,
    pub(super) name: u32,
    /// Found by the latest scan: its name is read again at the next one (a new thread
    /// may name itself just after it starts).
    pub(super) fresh: bool,
}

pub(super) struct Reader {
    pub(super) frequency: u32,
    /// The highest rate the sampler ran at during this window.
    pub(super) peak_frequency: u32,
    /// (stack, thread name, label) → (signals, CPU nanoseconds).
    pub(super) counts: FastMap<(u32, u32, u32), (i64, i64)>,
    pub(super) start: Mark,
    pub(super) counters: Counters,
    pub(super) stacks_full: u64,
    pub(super) threads_unsampled: u64,
}

impl Session {
    pub(super) fn start(
        frequency: u32,
        until: SystemTime,
        tail: &mut usize,
    ) -> Result<Session, EngineError> {
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
    pub(super) fn stop(mut self, tail: &mut usize) {
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
    pub(super) fn retune(&mut self) {
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
    pub(super) fn set_rate(&mut self, frequency: u32) {
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
    pub(super) fn intervals(&self) -> (Duration, Duration) {
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

    pub(super) fn add(&mut self, sample: crate::cpu::engine::ring::Sample<'_>) {
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

    /// The reader's finished window; the stacks it held are let go.
    pub(super) fn window(&mut self, reader: Reader, end: Mark) -> Window {
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
pub(super) fn ring_quarter(frequency: u32) -> Duration {
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
pub(super) fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
    #[cfg(feature = "heap")]
    crate::heap::purge();
}
