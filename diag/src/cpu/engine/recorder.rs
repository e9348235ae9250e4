//! The always-on CPU recorder's memory: the last minutes of samples as time buckets of
//! (stack id, thread, label) → (signals, CPU nanoseconds). Stacks live in the session's
//! shared table ([`Stacks`]); each bucket holds the stacks it names and lets them go when
//! it is dropped, so memory follows what is kept, not uptime.
//!
//! While a faster reader runs, the sampler runs at its rate; the recorder keeps a sample
//! of weight `w` with probability `min(1, w / period)` at weight `max(w, period)` (the
//! expectation is `w`), so it holds about as many samples as at its own rate.

use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime};

use super::signal::Counters;
use super::stacks::{FastMap, Stacks};
use super::timer::Jitter;
use super::{
    Losses, Mark, Recorded, RecorderSettings as Settings, RecorderStatus as Status, Refusal,
    Sample, Window,
};

/// Frames the recorder may make the stack table hold (5 MiB of addresses): past it, a
/// sample on a stack not yet known is counted as lost.
pub(crate) const MAX_FRAMES: usize = 5 * 1024 * 1024 / std::mem::size_of::<usize>();

/// One (stack, thread, label) of a closed bucket.
#[derive(Debug, Clone, Copy)]
struct Entry {
    stack: u32,
    thread: u32,
    label: u32,
    count: u32,
    weight_ns: u64,
}

#[derive(Debug)]
struct Bucket {
    start: Mark,
    end: Mark,
    counters: Counters,
    stacks_full: u64,
    entries: Box<[Entry]>,
}

pub(crate) struct Recorder {
    pub(crate) settings: Settings,
    period_ns: u64,
    pub(crate) stop_when: Box<dyn Fn() -> bool + Send>,
    buckets: VecDeque<Bucket>,
    start: Mark,
    counters: Counters,
    stacks_full: u64,
    counts: FastMap<(u32, u32, u32), (u32, u64)>,
    rng: Jitter,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("settings", &self.settings)
            .field("buckets", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub(crate) fn new(settings: Settings, stop_when: Box<dyn Fn() -> bool + Send>) -> Self {
        Self {
            period_ns: 1_000_000_000 / u64::from(settings.frequency.max(1)),
            settings,
            stop_when,
            buckets: VecDeque::new(),
            start: Mark::now(),
            counters: Counters::now(),
            stacks_full: 0,
            counts: FastMap::default(),
            rng: Jitter::new(),
        }
    }

    /// Whether a sample of weight `weight_ns` is kept, and at what weight.
    pub(crate) fn thin(&mut self, weight_ns: u64) -> Option<u64> {
        if weight_ns >= self.period_ns {
            return Some(weight_ns);
        }
        // Keep with probability weight / period: a draw in 1..=period at most weight.
        (self.rng.below(self.period_ns) <= weight_ns).then_some(self.period_ns)
    }

    /// Counts a kept sample on an interned stack (held here when new to the bucket).
    pub(crate) fn add(&mut self, stacks: &mut Stacks, key: (u32, u32, u32), weight_ns: u64) {
        let e = self.counts.entry(key).or_insert_with(|| {
            stacks.hold(key.0);
            (0, 0)
        });
        e.0 = e.0.saturating_add(1);
        e.1 = e.1.saturating_add(weight_ns);
    }

    /// A kept sample whose stack the table had no room for.
    pub(crate) fn lost_stack(&mut self) {
        self.stacks_full += 1;
    }

    /// Closes the current bucket when it is due and drops the buckets older than what is
    /// kept.
    pub(crate) fn tick(&mut self, stacks: &mut Stacks, now: Instant) {
        if now.duration_since(self.start.mono) >= self.settings.bucket {
            self.close(Mark::now());
        }
        while let Some(b) = self.buckets.front() {
            if now.duration_since(b.end.mono) <= self.settings.keep {
                break;
            }
            if let Some(b) = self.buckets.pop_front() {
                for e in b.entries.iter() {
                    stacks.release(e.stack);
                }
            }
        }
    }

    fn close(&mut self, end: Mark) {
        let mut entries: Vec<Entry> = self
            .counts
            .drain()
            .map(|((stack, thread, label), (count, weight_ns))| Entry {
                stack,
                thread,
                label,
                count,
                weight_ns,
            })
            .collect();
        entries.sort_unstable_by_key(|e| (e.stack, e.thread, e.label));
        let counters = Counters::now();
        self.buckets.push_back(Bucket {
            start: self.start,
            end,
            counters: counters.since(self.counters),
            stacks_full: self.stacks_full,
            entries: entries.into_boxed_slice(),
        });
        self.start = end;
        self.counters = counters;
        self.stacks_full = 0;
    }

    /// Lets go of every stack (the recorder stops).
    pub(crate) fn release_all(mut self, stacks: &mut Stacks) {
        for b in self.buckets.drain(..) {
            for e in b.entries.iter() {
                stacks.release(e.stack);
            }
        }
        for ((stack, _, _), _) in self.counts.drain() {
            stacks.release(stack);
        }
    }

    /// The start of the oldest sample kept.
    fn kept_from(&self) -> Mark {
        self.buckets.front().map_or(self.start, |b| b.start)
    }

    pub(crate) fn status(&self, stacks: &Stacks) -> Status {
        let entries: usize =
            self.buckets.iter().map(|b| b.entries.len()).sum::<usize>() + self.counts.len();
        let bytes = stacks.bytes()
            + entries * std::mem::size_of::<Entry>()
            + self.buckets.len() * std::mem::size_of::<Bucket>();
        Status {
            frequency: self.settings.frequency,
            keep: self.settings.keep,
            reaches_back: self.kept_from().mono.elapsed(),
            bytes,
            stacks: stacks.live(),
        }
    }

    /// The samples of the buckets that overlap `[from, to]` (wall clock), the current
    /// one included. `names` turns a thread id of the session's name table into a name.
    pub(crate) fn window(
        &mut self,
        from: SystemTime,
        to: SystemTime,
        stacks: &Stacks,
        names: &dyn Fn(u32) -> String,
    ) -> Result<Recorded, Refusal> {
        let now = Mark::now();
        let kept_from = self.kept_from();
        if to <= kept_from.wall {
            return Err(Refusal::Before {
                kept_from: kept_from.wall,
            });
        }
        let mut sum: HashMap<(u32, u32, u32), (i64, i64)> = HashMap::new();
        let mut start: Option<Mark> = None;
        let mut end = now;
        let mut losses = Losses::default();
        let mut add_losses = |c: Counters, stacks_full: u64| {
            losses.ring_full += c.dropped;
            losses.ip_only += c.ip_only;
            losses.foreign_signals += c.forwarded;
            losses.stacks_full += stacks_full;
        };
        for b in &self.buckets {
            if b.end.wall <= from || b.start.wall >= to {
                continue;
            }
            start.get_or_insert(b.start);
            end = b.end;
            add_losses(b.counters, b.stacks_full);
            for e in b.entries.iter() {
                let s = sum.entry((e.stack, e.thread, e.label)).or_default();
                s.0 += i64::from(e.count);
                s.1 =
                    s.1.saturating_add(i64::try_from(e.weight_ns).unwrap_or(i64::MAX));
            }
        }
        if self.start.wall < to {
            // The bucket being filled, up to now.
            start.get_or_insert(self.start);
            end = now;
            add_losses(Counters::now().since(self.counters), self.stacks_full);
            for (&key, &(count, weight_ns)) in &self.counts {
                let s = sum.entry(key).or_default();
                s.0 += i64::from(count);
                s.1 =
                    s.1.saturating_add(i64::try_from(weight_ns).unwrap_or(i64::MAX));
            }
        }
        let start = start.unwrap_or(now);
        let samples = sum
            .into_iter()
            .map(|((stack, thread, label), (count, weight_ns))| Sample {
                ips: stacks.frames(stack).to_vec(),
                thread: names(thread),
                label,
                count,
                weight_ns,
            })
            .filter(|s| !s.ips.is_empty())
            .collect();
        Ok(Recorded {
            window: Window {
                samples,
                start,
                end,
                frequency: self.settings.frequency,
                peak_frequency: self.settings.frequency,
                losses,
            },
            kept_from: kept_from.wall,
            short: from < kept_from.wall,
        })
    }
}
