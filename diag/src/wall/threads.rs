//! Per-thread wall-clock samples: where the process's threads are blocked (or running)
//! outside tokio's polling, at the wall profile's ticks.
//!
//! At each tick the `diag-wall` thread lists the process's threads and queues each one a
//! real-time signal (`rt_tgsigqueueinfo`, diag's marker in its value); the handler, on
//! the target thread, walks its stack with the CPU engine's frame-pointer walk
//! (`unwind::walk`) into that thread's preallocated slot, every field an atomic. One
//! sender for all threads, rather than a timer per thread: the sender already ticks, it
//! knows which threads exist (no timers to create and delete as threads come and go), and
//! all samples of a tick stand for the same instant as the task samples.
//!
//! Which threads: every thread of the process but diag's own (named `diag-*`); the
//! stacks that are a tokio worker parked, an idle blocking-pool thread or a runtime's
//! `block_on` waiting are left out after symbolization ([`idle`]): a parked worker's
//! tasks are in the task samples. Kept: blocking-pool threads running a closure, std
//! threads (blocked or running), and a worker inside a poll (running, or blocking the
//! runtime: the stack shows where).
//!
//! The signal: the highest real-time signal with no handler when diag first needs one
//! (`SIGRTMAX` down to `SIGRTMIN + 1`), kept for the process's life, `SA_RESTART`. A
//! signal on it that is not diag's is passed to the action before diag's if that was a
//! handler (it never is when chosen; a default action, which would end the process, is
//! not taken). Like any signal, it makes an interrupted `epoll_wait`, `nanosleep`,
//! `futex` wait with a timeout or read with a timeout return `EINTR` despite
//! `SA_RESTART`, and wakes a parked worker (docs/performance.md, "Wall-time profiles").

mod signal;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cpu::engine::threads as engine_threads;

use super::sampler::{ThreadSample, ThreadStats};
use signal::{EXEC, FOREIGN, GENERATION, QueueInfo, SLOTS, Slot, ensure_installed};

/// Threads sampled at one tick at most (the rest are counted as not sampled).
const MAX_THREADS: usize = super::sampler::MAX_THREADS_SAMPLED;
/// Frames kept per thread sample.
const DEPTH: usize = 128;
/// The top 16 bits of the signal's value (the CPU engine's timers use `0xd1a6`).
const MARKER: u64 = 0xd1a7;
/// `si_code` of a queued signal.
const SI_QUEUE: libc::c_int = -1;
/// How long a tick waits for the handlers at most; a thread that has not run its handler
/// by then (stopped, in an uninterruptible sleep, blocking the signal) is counted missed.
const MAX_HANDLER_WAIT: Duration = Duration::from_millis(20);

const IDLE: u32 = 0;
const ASKED: u32 = 1;
const WRITING: u32 = 2;
const DONE: u32 = 3;

/// The sender: the threads known, their names and stack ranges.
pub(crate) struct Sampler {
    signo: libc::c_int,
    pid: libc::pid_t,
    own: u32,
    /// Each thread's name, and whether it blocks diag's signal (read once per thread).
    names: HashMap<u32, (String, bool)>,
    ranges: HashMap<u32, (usize, usize)>,
    /// Slots whose handler was still writing when given up on: not reused.
    stuck: Vec<bool>,
    asked: Vec<(usize, u32)>,
    foreign_at_start: u64,
    /// `/proc/self/maps` and `/proc/self/task`, read through the engine's buffers.
    maps: engine_threads::Maps,
    tasks: engine_threads::Tasks,
    pub(crate) stats: ThreadStats,
}

impl Sampler {
    /// Installs the handler if needed; `None` (and why, in the stats) when no signal is
    /// free.
    pub(crate) fn new() -> Result<Self, String> {
        let signo = ensure_installed().map_err(|e| e.to_string())?;
        let mut maps = engine_threads::Maps::default();
        maps.read();
        publish_exec(&mut maps);
        Ok(Self {
            signo,
            // SAFETY: getpid/gettid take no arguments.
            pid: unsafe { libc::getpid() },
            own: unsafe { libc::syscall(libc::SYS_gettid) } as u32,
            names: HashMap::new(),
            ranges: HashMap::new(),
            stuck: vec![false; MAX_THREADS],
            asked: Vec::new(),
            foreign_at_start: FOREIGN.load(Ordering::Relaxed),
            maps,
            tasks: engine_threads::Tasks::default(),
            stats: ThreadStats {
                signal: signo,
                ..ThreadStats::default()
            },
        })
    }

    /// Sends this tick's signals: one to every thread but diag's own.
    pub(crate) fn ask(&mut self) {
        self.asked.clear();
        // A CPU profile may run meanwhile: its SIGPROF handler is held off while this
        // signal's runs, and this one returns at once when it interrupts that one on the
        // alternate signal stack (signal.rs), so no walk nests in another handler.
        let began = Instant::now();
        let Some(slots) = SLOTS.get() else {
            return;
        };
        let tids = self.tasks.list().to_vec();
        self.names.retain(|t, _| tids.contains(t));
        self.ranges.retain(|t, _| tids.contains(t));
        // A new thread blocked in a system call tells its stack pointer in
        // /proc/self/task/TID/syscall: its range is known before its first sample.
        let new: Vec<(u32, usize)> = tids
            .iter()
            .filter(|t| **t != self.own && !self.ranges.contains_key(t))
            .filter_map(|t| Some((*t, blocked_sp(*t)?)))
            .collect();
        if !new.is_empty() {
            self.maps.read();
            for (tid, sp) in new {
                if let Some(range) = self.maps.stack_range(sp) {
                    self.ranges.insert(tid, range);
                }
            }
        }
        let generation = GENERATION.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        self.asked.clear();
        let mut slot = 0;
        for tid in tids {
            if tid == self.own {
                continue;
            }
            let signo = self.signo;
            let (name, blocks) = self
                .names
                .entry(tid)
                .or_insert_with(|| (engine_threads::thread_name(tid), blocks_signal(tid, signo)));
            if name.starts_with("diag-") {
                continue;
            }
            if *blocks {
                // jemalloc's background threads, for one, block every signal.
                self.stats.blocking_signal += 1;
                continue;
            }
            while slot < MAX_THREADS && self.stuck[slot] {
                slot += 1;
            }
            let Some(s) = slots.get(slot) else {
                self.stats.over_limit += 1;
                continue;
            };
            let (lo, hi) = self.ranges.get(&tid).copied().unwrap_or((0, 0));
            s.tid.store(tid, Ordering::Relaxed);
            s.lo.store(lo, Ordering::Relaxed);
            s.hi.store(hi, Ordering::Relaxed);
            s.depth.store(0, Ordering::Relaxed);
            s.state.store(ASKED, Ordering::Release);
            let value = (MARKER << 48) | (u64::from(generation & 0xffff) << 32) | slot as u64;
            if queue(self.pid, tid, self.signo, value).is_ok() {
                self.stats.signals_sent += 1;
                self.asked.push((slot, tid));
            } else {
                // Exited since the listing.
                s.state.store(IDLE, Ordering::Release);
            }
            slot += 1;
        }
        self.stats.busy += began.elapsed();
    }

    /// Collects the samples asked at this tick (waiting for the handlers a little).
    pub(crate) fn collect(&mut self) -> Vec<ThreadSample> {
        let began = Instant::now();
        let mut out = Vec::with_capacity(self.asked.len());
        let Some(slots) = SLOTS.get() else {
            return out;
        };
        self.wait_for_handlers(slots);
        let mut to_learn = Vec::new();
        for &(i, tid) in &self.asked {
            let Some(s) = slots.get(i) else { continue };
            // Give up on a handler that has not started; one writing is waited for a
            // moment more, and its slot set aside if it still is.
            if s.state
                .compare_exchange(ASKED, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.stats.missed += 1;
                continue;
            }
            let mut spins = 0;
            while s.state.load(Ordering::Acquire) == WRITING && spins < 100 {
                std::thread::sleep(Duration::from_micros(100));
                spins += 1;
            }
            if s.state.load(Ordering::Acquire) != DONE {
                self.stuck[i] = true;
                self.stats.missed += 1;
                continue;
            }
            let depth = s.depth.load(Ordering::Relaxed).min(DEPTH);
            s.state.store(IDLE, Ordering::Release);
            if depth == 0 {
                self.stats.missed += 1;
                continue;
            }
            let (lo, hi) = (s.lo.load(Ordering::Relaxed), s.hi.load(Ordering::Relaxed));
            let sp = s.sp.load(Ordering::Relaxed);
            if !(lo < hi && sp >= lo && sp < hi) {
                // The interrupted address alone: the stack is learned for the next tick,
                // and this sample, which would show a leaf without its callers, is not
                // kept.
                self.stats.ip_only += 1;
                to_learn.push((tid, sp));
                continue;
            }
            self.stats.samples += 1;
            out.push(ThreadSample {
                name: self
                    .names
                    .get(&tid)
                    .map(|(n, _)| n.clone())
                    .unwrap_or_default(),
                frames: s.frames[..depth]
                    .iter()
                    .map(|f| f.load(Ordering::Relaxed))
                    .collect(),
                label: s.label.load(Ordering::Relaxed),
            });
        }
        self.learn_stacks(to_learn);
        self.stats.foreign = FOREIGN
            .load(Ordering::Relaxed)
            .saturating_sub(self.foreign_at_start);
        self.stats.busy += began.elapsed();
        out
    }

    /// Waits up to [`MAX_HANDLER_WAIT`] for every handler asked at this tick to be done.
    fn wait_for_handlers(&self, slots: &[Slot]) {
        let deadline = Instant::now() + MAX_HANDLER_WAIT;
        while Instant::now() < deadline
            && self.asked.iter().any(|(i, _)| {
                slots
                    .get(*i)
                    .is_some_and(|s| s.state.load(Ordering::Acquire) != DONE)
            })
        {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Learns the stack ranges of threads (id, stack pointer) whose samples lacked one,
    /// from one reading of `/proc/self/maps` (which also refreshes the executable
    /// mappings).
    fn learn_stacks(&mut self, to_learn: Vec<(u32, usize)>) {
        if to_learn.is_empty() {
            return;
        }
        self.maps.read();
        for (tid, sp) in to_learn {
            if let Some(range) = self.maps.stack_range(sp) {
                self.ranges.insert(tid, range);
            }
        }
        publish_exec(&mut self.maps);
    }
}

/// The stack pointer of thread `tid` if it is blocked in a system call (the next to last
/// field of `/proc/self/task/TID/syscall`; `running` otherwise).
fn blocked_sp(tid: u32) -> Option<usize> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let fields: Vec<&str> = text.split_ascii_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let sp = fields[fields.len() - 2].trim_start_matches("0x");
    usize::from_str_radix(sp, 16).ok()
}

/// Whether thread `tid` blocks `signo` (its `SigBlk` in /proc/self/task/TID/status).
fn blocks_signal(tid: u32, signo: libc::c_int) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
        return false;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| signo >= 1 && mask & (1u64 << (signo - 1)) != 0)
}

/// Queues `signo` to thread `tid` of this process with `value`.
fn queue(pid: libc::pid_t, tid: u32, signo: libc::c_int, value: u64) -> io::Result<()> {
    // SAFETY: an all-zero siginfo is valid; the prefix written is `QueueInfo`'s layout.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    {
        // SAFETY: siginfo_t (128 bytes) holds the `QueueInfo` prefix.
        let qi = unsafe { &mut *(&mut info as *mut libc::siginfo_t as *mut QueueInfo) };
        qi.signo = signo;
        qi.code = SI_QUEUE;
        qi.pid = pid;
        // SAFETY: getuid takes no arguments.
        qi.uid = unsafe { libc::getuid() };
        qi.value = value;
    }
    // SAFETY: `info` is valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid,
            tid as libc::pid_t,
            signo,
            &mut info as *mut libc::siginfo_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Publishes the executable mappings of `maps` into this module's table.
fn publish_exec(maps: &mut engine_threads::Maps) {
    maps.publish_exec_into(&EXEC);
}
