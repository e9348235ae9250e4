//! diag's `SIGPROF` handler: installed once and kept for the process's life.
//!
//! The handler samples only signals from diag's own timers (`si_code == SI_TIMER` and a
//! `si_value` carrying diag's marker); any other `SIGPROF` (`kill -PROF`, an
//! application's own `setitimer` or timer) goes to the action that was installed before
//! diag's, except that a default or ignored action is not taken: `SIGPROF`'s default
//! would end the process. See docs/internals.md, "The signal-handler audit", for every
//! call it makes.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::ring::{FLAG_IP_ONLY, Header, MAX_DEPTH, Ring};
use super::threads::{EXEC, THREADS};
pub(crate) use super::unwind::regs_of;
use super::unwind::{self, Regs};

/// The top 16 bits of the `si_value` of diag's timers.
const MARKER: u64 = 0xd1a6;
/// `si_code` of a POSIX timer's signal.
const SI_TIMER: libc::c_int = -2;

/// The process's sample ring (1 MiB, allocated zeroed before the handler is first
/// installed; the handler reads it with one atomic load).
static RING: OnceLock<Box<Ring>> = OnceLock::new();

/// The process's sample ring, once the handler has been installed.
pub(crate) fn ring() -> Option<&'static Ring> {
    RING.get().map(|r| &**r)
}

/// The latest rate generation (its low 16 bits go in each timer's value). Every start of
/// a session and every change of its rate takes a new one, and its timers are created
/// anew with it, so each signal says which period its timer had.
static GENERATION: AtomicU32 = AtomicU32::new(0);
/// The period of each recent generation, by its low 8 bits: `generation << 48 | period
/// in ns` (0: not a generation of the running session). A signal from a timer of an
/// earlier rate is weighed by that rate's period; one from an ended session, or from a
/// generation 256 changes old, finds no matching entry and is not counted.
static PERIODS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

static IP_ONLY: AtomicU64 = AtomicU64::new(0);
static STALE: AtomicU64 = AtomicU64::new(0);
static FORWARDED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The label set the thread is running under (0: none). Const-initialised and without
    /// a destructor, so reading it is a plain thread-local load, safe in the handler.
    static LABEL: AtomicU32 = const { AtomicU32::new(0) };
}

/// Sets the label-set id that this thread's samples carry from now on; returns the old.
/// Only the thread itself writes its id, and the handler runs on that thread, so a plain
/// load and store suffice (a `swap` is a locked `xchg`, about 4 ns, twice per poll).
#[inline]
pub(crate) fn set_label_id(id: u32) -> u32 {
    LABEL.with(|l| {
        let old = l.load(Ordering::Relaxed);
        l.store(id, Ordering::Relaxed);
        old
    })
}

/// The label-set id this thread's samples carry now.
#[inline]
pub(crate) fn label_id() -> u32 {
    LABEL.with(|l| l.load(Ordering::Relaxed))
}

/// Counters since the process started.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    /// Samples dropped because the ring was full.
    pub(crate) dropped: u64,
    /// Samples that kept only the interrupted address (stack range not known yet).
    pub(crate) ip_only: u64,
    /// Signals from a stopped session's timers, not counted.
    pub(crate) stale: u64,
    /// Signals not from diag's timers, passed to the previous action.
    pub(crate) forwarded: u64,
}

impl Counters {
    pub(crate) fn now() -> Self {
        Self {
            dropped: ring().map_or(0, Ring::dropped),
            ip_only: IP_ONLY.load(Ordering::Relaxed),
            stale: STALE.load(Ordering::Relaxed),
            forwarded: FORWARDED.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn since(self, start: Self) -> Self {
        Self {
            dropped: self.dropped.saturating_sub(start.dropped),
            ip_only: self.ip_only.saturating_sub(start.ip_only),
            stale: self.stale.saturating_sub(start.stale),
            forwarded: self.forwarded.saturating_sub(start.forwarded),
        }
    }
}

/// Starts a rate generation whose timers expire every `period_ns` (the first of a session
/// or a new rate within it); returns it.
pub(crate) fn begin_rate(period_ns: u64) -> u32 {
    let generation = GENERATION.fetch_add(1, Ordering::AcqRel).wrapping_add(1) & 0xffff;
    let entry = (u64::from(generation) << 48) | (period_ns & 0xffff_ffff_ffff);
    PERIODS[generation as usize & 0xff].store(entry, Ordering::Release);
    generation
}

/// Ends the session: signals of its timers still pending are not counted.
pub(crate) fn end_session() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    for p in &PERIODS {
        p.store(0, Ordering::Release);
    }
}

/// The period of `generation`'s timers, when it belongs to the running session.
/// Async-signal-safe.
#[inline]
fn period_of(generation: u32) -> Option<u64> {
    let entry = PERIODS[generation as usize & 0xff].load(Ordering::Acquire);
    let period = entry & 0xffff_ffff_ffff;
    (entry >> 48 == u64::from(generation) && period != 0).then_some(period)
}

/// The `si_value` of the timer of thread-table slot `slot` in session `generation`.
pub(crate) fn timer_value(generation: u32, slot: usize) -> u64 {
    (MARKER << 48) | (u64::from(generation & 0xffff) << 32) | (slot as u64 & 0xffff_ffff)
}

/// The start of a timer signal's `siginfo_t` on 64-bit Linux (`_sigfault`'s union member
/// `_timer`: timer id, overrun count, value).
#[repr(C)]
struct TimerInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    timer_id: libc::c_int,
    overrun: libc::c_int,
    value: u64,
}

/// The action before diag's, double-buffered: the installer writes the spare copy and
/// then flips the index, so the handler always reads a whole one.
struct Previous {
    actions: [std::cell::UnsafeCell<Option<libc::sigaction>>; 2],
    current: AtomicUsize,
}

// SAFETY: written only by the installer (under `INSTALL`), into the copy the index does
// not point at; the handler reads the copy the index points at.
unsafe impl Sync for Previous {}

static PREVIOUS: Previous = Previous {
    actions: [
        std::cell::UnsafeCell::new(None),
        std::cell::UnsafeCell::new(None),
    ],
    current: AtomicUsize::new(0),
};

static INSTALL: Mutex<bool> = Mutex::new(false);

fn set_previous(action: libc::sigaction) {
    let spare = 1 - PREVIOUS.current.load(Ordering::Acquire);
    // SAFETY: only the installer writes, under `INSTALL`; the handler reads the other copy.
    unsafe {
        *PREVIOUS.actions[spare].get() = Some(action);
    }
    PREVIOUS.current.store(spare, Ordering::Release);
}

fn handler_address() -> libc::sighandler_t {
    on_sigprof as *const () as libc::sighandler_t
}

/// What [`ensure_installed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Installed {
    /// diag's handler was already in place.
    Already,
    /// Installed now (the first time).
    Now,
    /// Someone replaced diag's handler since; it is back, passing their signals on.
    Again,
}

/// Installs diag's handler unless it is in place, keeping the current action as the one
/// foreign signals go to.
pub(crate) fn ensure_installed() -> io::Result<Installed> {
    let mut ever = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: std's atomics are valid when zeroed.
    RING.get_or_init(|| unsafe { Ring::boxed_zeroed() });
    // SAFETY: all-zero sigaction structs are valid; sigaction fills `current`.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    if unsafe { libc::sigaction(libc::SIGPROF, std::ptr::null(), &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if current.sa_sigaction == handler_address() {
        return Ok(Installed::Already);
    }
    set_previous(current);
    // SAFETY: as above; the handler is an `extern "C"` function of the SA_SIGINFO shape.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = handler_address();
    ours.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; the mask is emptied before use.
    unsafe {
        libc::sigemptyset(&mut ours.sa_mask);
        if libc::sigaction(libc::SIGPROF, &ours, &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if old.sa_sigaction != current.sa_sigaction {
        // Changed between the two calls: pass signals to the newer one.
        set_previous(old);
    }
    let first = !*ever;
    *ever = true;
    Ok(if first {
        Installed::Now
    } else {
        Installed::Again
    })
}

/// Passes a foreign signal to the previous action; a default or ignored action is not
/// taken (the default would end the process).
unsafe fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    FORWARDED.fetch_add(1, Ordering::Relaxed);
    let i = PREVIOUS.current.load(Ordering::Acquire);
    // SAFETY: the copy the index points at is never written while it is current.
    let Some(prev) = (unsafe { *PREVIOUS.actions[i].get() }) else {
        return;
    };
    // SAFETY: as this function's caller was called.
    unsafe { call_action(&prev, sig, info, ctx) };
}

/// Calls `action` for a signal as the kernel would, when it is a handler (nothing for
/// `SIG_DFL` and `SIG_IGN`): what diag's handlers do with the signals that are not theirs.
///
/// # Safety
/// From a signal handler, with the `sig`, `info` and `ctx` the kernel passed it.
pub(crate) unsafe fn call_action(
    action: &libc::sigaction,
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    let f = action.sa_sigaction;
    if f == libc::SIG_DFL || f == libc::SIG_IGN {
        return;
    }
    // SAFETY: a handler the application installed, called as the kernel would call it.
    unsafe {
        if action.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(f);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(f);
            f(sig);
        }
    }
}

/// Runs a signal handler's `body` with the interrupted code's `errno` saved before and
/// written back after, so that nothing the handler calls can change what the interrupted
/// code reads next. Shared by the CPU and the wall-time handlers.
#[inline(always)]
pub(crate) fn keeping_errno(body: impl FnOnce()) {
    // SAFETY: errno is this thread's own location; reading and writing it is
    // async-signal-safe.
    let errno = unsafe { *libc::__errno_location() };
    body();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

extern "C" fn on_sigprof(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext to an SA_SIGINFO handler.
    keeping_errno(|| unsafe { handle(sig, info, ctx) });
}

unsafe fn handle(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if info.is_null() || ctx.is_null() {
        return;
    }
    // SAFETY: a siginfo_t is at least as large as `TimerInfo`'s prefix.
    let ti = unsafe { &*(info as *const TimerInfo) };
    if ti.code != SI_TIMER || ti.value >> 48 != MARKER {
        // SAFETY: forwarded as received.
        unsafe { forward(sig, info, ctx) };
        return;
    }
    let generation = (ti.value >> 32) as u32 & 0xffff;
    let Some(period) = period_of(generation) else {
        STALE.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let slot = (ti.value & 0xffff_ffff) as usize;
    let expiries = 1 + u64::try_from(ti.overrun).unwrap_or(0);
    let weight = period.saturating_mul(expiries);
    // SAFETY: `ctx` is the interrupted thread's ucontext.
    let regs = unsafe { regs_of(ctx) };
    // SAFETY: as documented on `sample`.
    unsafe { sample(slot, weight, regs) };
}

/// Records one sample of the interrupted context into the ring.
///
/// # Safety
/// `regs` must be the interrupted context of the calling thread, whose thread-table slot
/// is `slot`.
unsafe fn sample(slot: usize, weight: u64, regs: Regs) {
    let Some(claim) = ring().and_then(Ring::claim) else {
        return;
    };
    let (tid, range) = THREADS.read(slot).unwrap_or((0, None));
    let label = LABEL.with(|l| l.load(Ordering::Relaxed));
    let (depth, flags) = match range {
        Some((lo, hi)) if regs.sp >= lo && regs.sp < hi => {
            // SAFETY: `[lo, hi)` is this thread's stack mapping, learned from
            // /proc/self/maps, and holds the stack pointer.
            let n =
                unsafe { unwind::walk(regs, lo, hi, &EXEC, MAX_DEPTH, |i, a| claim.frame(i, a)) };
            (n, 0)
        }
        _ => {
            IP_ONLY.fetch_add(1, Ordering::Relaxed);
            claim.frame(0, regs.ip.wrapping_add(1));
            (1, FLAG_IP_ONLY)
        }
    };
    claim.publish(
        Header {
            tid,
            thread_slot: slot as u32,
            label,
            flags,
            weight,
            sp: regs.sp,
        },
        depth,
    );
}

/// Sends this thread a `SIGPROF` that looks like an expiry of its diag timer in thread
/// slot `slot` (a process may queue any `si_code` to itself): one sample, taken before
/// this returns. For benchmarks and tests.
#[cfg_attr(not(any(test, feature = "bench")), allow(dead_code))]
pub(crate) fn sample_this_thread(slot: usize) -> io::Result<()> {
    queue_to_this_thread(timer_value(
        GENERATION.load(Ordering::Acquire) & 0xffff,
        slot,
    ))
}

/// Sends this thread a timer-shaped `SIGPROF` without diag's marker: the same delivery,
/// classified as foreign and passed to the previous action. The cost of the signal alone,
/// for benchmarks.
#[cfg_attr(not(any(test, feature = "bench")), allow(dead_code))]
pub(crate) fn foreign_signal_this_thread() -> io::Result<()> {
    queue_to_this_thread(0)
}

fn queue_to_this_thread(value: u64) -> io::Result<()> {
    // SAFETY: an all-zero siginfo is valid; the prefix written is `TimerInfo`'s layout.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    {
        // SAFETY: siginfo_t (128 bytes) holds the `TimerInfo` prefix.
        let ti = unsafe { &mut *(&mut info as *mut libc::siginfo_t as *mut TimerInfo) };
        ti.signo = libc::SIGPROF;
        ti.code = SI_TIMER;
        ti.value = value;
    }
    // SAFETY: getpid/gettid take no arguments; `info` is valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGPROF,
            &mut info as *mut libc::siginfo_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
