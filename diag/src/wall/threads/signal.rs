//! The wall signal's handler and its installation: each thread's sample is written by
//! the handler, on that thread, into its preallocated slot (every field an atomic); the
//! sender in `super` asks for them and collects them.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::cpu::engine::signal::regs_of;
use crate::cpu::engine::threads::ExecTable;
use crate::cpu::engine::unwind;

use super::{ASKED, DEPTH, DONE, IDLE, MARKER, MAX_THREADS, SI_QUEUE, WRITING};

/// One thread's sample, written by the handler on that thread.
pub(super) struct Slot {
    pub(super) state: AtomicU32,
    pub(super) tid: AtomicU32,
    /// The stack range the walk may read, `[lo, hi)` (0, 0: not known yet).
    pub(super) lo: AtomicUsize,
    pub(super) hi: AtomicUsize,
    /// The interrupted stack pointer (to learn the range when it was not known).
    pub(super) sp: AtomicUsize,
    /// The engine's label-set id the thread ran under.
    pub(super) label: AtomicU32,
    pub(super) depth: AtomicUsize,
    pub(super) frames: [AtomicUsize; DEPTH],
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
pub(super) static SLOTS: OnceLock<Box<[Slot]>> = OnceLock::new();
/// The current tick's generation (low 16 bits in each signal's value): a signal still
/// pending from an earlier tick is not counted.
pub(super) static GENERATION: AtomicU32 = AtomicU32::new(0);
/// The signal diag's handler is installed on (0: none yet).
static SIGNO: AtomicI32 = AtomicI32::new(0);
/// Executable mappings, for the walk's frameless-leaf search; written only by the one
/// wall profile that runs at a time (the dump guard), so it has a single writer.
pub(super) static EXEC: ExecTable = ExecTable::new();
/// Signals on diag's signal that were not diag's.
pub(super) static FOREIGN: AtomicU64 = AtomicU64::new(0);

/// The action before diag's on its signal, for foreign signals: written once, before the
/// handler is installed.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Mutex<()> = Mutex::new(());

/// The start of a queued signal's `siginfo_t` on 64-bit Linux (`_rt`: pid, uid, value).
#[repr(C)]
pub(super) struct QueueInfo {
    pub(super) signo: libc::c_int,
    pub(super) errno: libc::c_int,
    pub(super) code: libc::c_int,
    pub(super) _pad: libc::c_int,
    pub(super) pid: libc::pid_t,
    pub(super) uid: libc::uid_t,
    pub(super) value: u64,
}

fn handler_address() -> libc::sighandler_t {
    on_signal as *const () as libc::sighandler_t
}

/// The signal diag samples threads with, installing the handler on the first call (or
/// again on another free signal if someone replaced it).
pub(super) fn ensure_installed() -> io::Result<libc::c_int> {
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
    // SAFETY: the kernel passes a valid siginfo and ucontext to an SA_SIGINFO handler.
    crate::cpu::engine::signal::keeping_errno(|| unsafe { handle(sig, info, ctx) });
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
