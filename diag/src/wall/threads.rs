//! Per-thread wall-clock samples: where the process's threads are blocked (or running)
//! outside tokio's polling, at the wall profile's ticks.
//!
//! At each tick the `diag-wall` thread lists the process's threads and queues each one a
//! real-time signal (`rt_tgsigqueueinfo`, diag's marker in its value); the handler, on
//! the target thread, walks its stack with the CPU engine's frame-pointer walk
//! ([`unwind::walk`]) into that thread's preallocated slot, every field an atomic. One
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

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cpu::engine::signal::regs_of;
use crate::cpu::engine::threads::{self as engine_threads, ExecTable};
use crate::cpu::engine::unwind;

use super::sampler::{ThreadSample, ThreadStats};

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

/// One thread's sample, written by the handler on that thread.
struct Slot {
    state: AtomicU32,
    tid: AtomicU32,
    /// The stack range the walk may read, `[lo, hi)` (0, 0: not known yet).
    lo: AtomicUsize,
    hi: AtomicUsize,
    /// The interrupted stack pointer (to learn the range when it was not known).
    sp: AtomicUsize,
    /// The engine's label-set id the thread ran under.
    label: AtomicU32,
    depth: AtomicUsize,
    frames: [AtomicUsize; DEPTH],
}

impl Slot {
    fn new() -> Self {
        Self {
            state: AtomicU32::new(IDLE),
            tid: AtomicU32::new(0),
            lo: AtomicUsize::new(0),
            hi: AtomicUsize::new(0),
            sp: AtomicUsize::new(0),
            label: AtomicU32::new(0),
            depth: AtomicUsize::new(0),
            frames: [const { AtomicUsize::new(0) }; DEPTH],
        }
    }
}

/// The slots, allocated before the handler is first installed (the handler reads them
/// with one atomic load).
static SLOTS: OnceLock<Box<[Slot]>> = OnceLock::new();
/// The current tick's generation (low 16 bits in each signal's value): a signal still
/// pending from an earlier tick is not counted.
static GENERATION: AtomicU32 = AtomicU32::new(0);
/// The signal diag's handler is installed on (0: none yet).
static SIGNO: AtomicI32 = AtomicI32::new(0);
/// Executable mappings, for the walk's frameless-leaf search; written only by the one
/// wall profile that runs at a time (the dump guard), so it has a single writer.
static EXEC: ExecTable = ExecTable::new();
/// Signals on diag's signal that were not diag's.
static FOREIGN: AtomicU64 = AtomicU64::new(0);

/// The action before diag's on its signal, for foreign signals: written once, before the
/// handler is installed.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Mutex<()> = Mutex::new(());

/// The start of a queued signal's `siginfo_t` on 64-bit Linux (`_rt`: pid, uid, value).
#[repr(C)]
struct QueueInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    pid: libc::pid_t,
    uid: libc::uid_t,
    value: u64,
}

fn handler_address() -> libc::sighandler_t {
    on_signal as *const () as libc::sighandler_t
}

/// The signal diag samples threads with, installing the handler on the first call (or
/// again on another free signal if someone replaced it).
fn ensure_installed() -> io::Result<libc::c_int> {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    SLOTS.get_or_init(|| (0..MAX_THREADS).map(|_| Slot::new()).collect());
    let current = SIGNO.load(Ordering::Acquire);
    if current != 0 {
        // SAFETY: all-zero sigaction structs are valid; sigaction fills `now`.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a valid signal number and pointer.
        if unsafe { libc::sigaction(current, std::ptr::null(), &mut now) } == 0
            && now.sa_sigaction == handler_address()
        {
            return Ok(current);
        }
    }
    let (lo, hi) = (libc::SIGRTMIN() + 1, libc::SIGRTMAX());
    for sig in (lo..=hi).rev() {
        // SAFETY: as above.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a valid signal number and pointer.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut now) } != 0 {
            continue;
        }
        if now.sa_sigaction != libc::SIG_DFL {
            continue; // someone's: not ours to take
        }
        let _ = PREVIOUS.set(now);
        // SAFETY: as above; the handler is an `extern "C"` function of the SA_SIGINFO shape.
        let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
        ours.sa_sigaction = handler_address();
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        // SAFETY: valid pointers; the mask is emptied before use.
        // SIGPROF is held off while this handler runs: the CPU engine's handler must not
        // nest into it on the small alternate signal stack.
        let rc = unsafe {
            libc::sigemptyset(&mut ours.sa_mask);
            libc::sigaddset(&mut ours.sa_mask, libc::SIGPROF);
            libc::sigaction(sig, &ours, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        SIGNO.store(sig, Ordering::Release);
        return Ok(sig);
    }
    Err(io::Error::other(
        "every real-time signal has a handler: none is free to sample threads with",
    ))
}

/// Passes a foreign signal to the previous action when it was a handler.
unsafe fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    FOREIGN.fetch_add(1, Ordering::Relaxed);
    let Some(prev) = PREVIOUS.get() else {
        return;
    };
    // SAFETY: called from this handler with what the kernel passed it.
    unsafe { crate::cpu::engine::signal::call_action(prev, sig, info, ctx) };
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is this thread's; saved and restored around everything below.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo and ucontext to an SA_SIGINFO handler.
    unsafe { handle(sig, info, ctx) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The handler's work: only atomics, `getpid`/`gettid` and the engine's bounded walk.
unsafe fn handle(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if info.is_null() || ctx.is_null() {
        return;
    }
    // SAFETY: a siginfo_t is at least as large as `QueueInfo`'s prefix.
    let qi = unsafe { &*(info as *const QueueInfo) };
    // SAFETY: getpid takes no arguments and is async-signal-safe.
    if qi.code != SI_QUEUE || qi.value >> 48 != MARKER || qi.pid != unsafe { libc::getpid() } {
        // SAFETY: forwarded as received.
        unsafe { forward(sig, info, ctx) };
        return;
    }
    if (qi.value >> 32) as u32 & 0xffff != GENERATION.load(Ordering::Acquire) & 0xffff {
        return; // an earlier tick's
    }
    // Interrupting another handler on the alternate signal stack (the CPU engine's):
    // no walk there, whose frames could overflow that small stack. The sample is missed.
    // SAFETY: `ctx` is this thread's interrupted ucontext.
    let interrupted_sp = unsafe { regs_of(ctx) }.sp;
    // SAFETY: an all-zero stack_t is valid; sigaltstack only reads into `alt`.
    let mut alt: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sigaltstack(std::ptr::null(), &mut alt) } != 0 {
        return;
    }
    let alt_lo = alt.ss_sp as usize;
    if alt.ss_flags & libc::SS_DISABLE == 0
        && interrupted_sp >= alt_lo
        && interrupted_sp < alt_lo.saturating_add(alt.ss_size)
    {
        return;
    }
    let Some(slot) = SLOTS
        .get()
        .and_then(|s| s.get((qi.value & 0xffff_ffff) as usize))
    else {
        return;
    };
    if slot
        .state
        .compare_exchange(ASKED, WRITING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return; // given up on by the sender
    }
    // SAFETY: gettid takes no arguments and is async-signal-safe.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    if tid != slot.tid.load(Ordering::Relaxed) {
        slot.depth.store(0, Ordering::Relaxed);
        slot.state.store(DONE, Ordering::Release);
        return;
    }
    // SAFETY: `ctx` is this thread's interrupted ucontext.
    let regs = unsafe { regs_of(ctx) };
    let (lo, hi) = (
        slot.lo.load(Ordering::Relaxed),
        slot.hi.load(Ordering::Relaxed),
    );
    slot.sp.store(regs.sp, Ordering::Relaxed);
    slot.label
        .store(crate::cpu::engine::label_id(), Ordering::Relaxed);
    let depth = if lo < hi && regs.sp >= lo && regs.sp < hi {
        // SAFETY: `[lo, hi)` is this thread's stack mapping (learned from
        // /proc/self/maps for this thread id) and holds the stack pointer; `EXEC` holds
        // executable mappings.
        unsafe {
            unwind::walk(regs, lo, hi, &EXEC, DEPTH, |i, a| {
                if let Some(f) = slot.frames.get(i) {
                    f.store(a, Ordering::Relaxed);
                }
            })
        }
    } else {
        slot.frames[0].store(regs.ip.wrapping_add(1), Ordering::Relaxed);
        1
    };
    slot.depth.store(depth, Ordering::Relaxed);
    slot.state.store(DONE, Ordering::Release);
}

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
        // While a CPU profile runs, its SIGPROF handler runs on the threads' small
        // alternate signal stacks; no thread is signalled then (the tick is counted).
        if crate::cpu::engine::running().is_some() {
            self.stats.paused_ticks += 1;
            return;
        }
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
        if !to_learn.is_empty() {
            self.maps.read();
            for (tid, sp) in to_learn {
                if let Some(range) = self.maps.stack_range(sp) {
                    self.ranges.insert(tid, range);
                }
            }
            publish_exec(&mut self.maps);
        }
        self.stats.foreign = FOREIGN
            .load(Ordering::Relaxed)
            .saturating_sub(self.foreign_at_start);
        self.stats.busy += began.elapsed();
        out
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
