//! jemalloc's heap samples unwound by diag's frame-pointer walker instead of libgcc.
//!
//! jemalloc unwinds the stack of every allocation it samples through one function
//! pointer, `experimental.hooks.prof_backtrace` (jemalloc 5.3.1, prof_sys.c:524-532): by
//! default `prof_backtrace_impl`, a libgcc `_Unwind_Backtrace` (~5 µs a sample, which
//! is most of what heap profiling costs an allocation-heavy service). diag can set it to
//! [`frame_pointer_backtrace`]: the chain of frame records from the hook's own frame up
//! (`unwinder/walk.rs`), the walk the CPU engine's signal handler runs
//! (`cpu/engine/unwind.rs`) without its search for a frameless leaf's callers, which
//! finds nothing here.
//!
//! jemalloc calls the hook with none of its locks held and with the thread marked
//! reentrant, so allocations made inside it are not sampled (prof.c:220-233); the hook
//! allocates nothing anyway after a thread's first sample (which asks glibc for the
//! thread's stack range once). A `SIGPROF` may interrupt it: the two share no state.
//!
//! The walk is only as good as the frame pointers of every function between the
//! allocation and its callers, jemalloc's own C functions included (they keep them when
//! jemalloc is built with debug info, as cc then passes `-fno-omit-frame-pointer`). So it
//! is installed only after a probe: one allocation, sampled for sure, unwound by both
//! the hook found in place and diag's walk, must give the same frames from the
//! allocating function up. Otherwise jemalloc's own unwinder stays, and the reason is
//! kept for the profile's comment. [`crate::Config::with_heap_frame_pointers`] turns it
//! off, which writes the previous hook back.

mod probe;
mod walk;

use std::cell::Cell;
use std::ffi::{c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use tikv_jemalloc_ctl::raw;

use probe::{probe, probe_backtrace};
use walk::chain_from_caller;

/// jemalloc's `prof_backtrace_hook_t`: fill `vec` with at most `max_len` return
/// addresses, leaf first, and set `*len`.
type Hook = unsafe extern "C" fn(vec: *mut *mut c_void, len: *mut c_uint, max_len: c_uint);

const HOOK_CTL: &[u8] = b"experimental.hooks.prof_backtrace\0";

/// The hook in place before diag first wrote one (jemalloc's `prof_backtrace_impl`, or
/// the application's): diag's hook falls back to it, and turning diag's off restores it.
static PREVIOUS: AtomicUsize = AtomicUsize::new(0);
/// Serialises [`apply`] (and so the probe).
static APPLY: Mutex<()> = Mutex::new(());
/// The probe's verdict, once it could run: `Ok` says how the stacks compared.
static VERDICT: OnceLock<Result<String, String>> = OnceLock::new();
/// What the router built last asked for.
static WANTED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's stack `[lo, hi)`: `(0, 0)` not asked yet, `(1, 0)` unknown.
    static STACK: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Who unwinds jemalloc's samples now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unwinder {
    /// diag's frame-pointer walk; the probe's comparison.
    FramePointer(String),
    /// The hook jemalloc had (its own libgcc unwinder, or the application's); why.
    Jemalloc(String),
}

impl Unwinder {
    /// The `X-Diag-Heap-Unwinder` header's value.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::FramePointer(_) => "frame-pointer",
            Self::Jemalloc(_) => "jemalloc",
        }
    }

    /// One sentence for the profile's comment.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::FramePointer(how) => {
                format!("stacks unwound by diag's frame-pointer walker ({how})")
            }
            Self::Jemalloc(why) => format!("stacks unwound by jemalloc's own unwinder ({why})"),
        }
    }
}

fn read_hook() -> Result<Option<Hook>, String> {
    // SAFETY: experimental.hooks.prof_backtrace reads as a prof_backtrace_hook_t, a
    // nullable function pointer of this signature (jemalloc's ctl.c, prof_hook.h).
    unsafe { raw::read::<Option<Hook>>(HOOK_CTL) }
        .map_err(|e| format!("reading experimental.hooks.prof_backtrace: {e}"))
}

fn write_hook(hook: Hook) -> Result<(), String> {
    // SAFETY: as in `read_hook`; jemalloc stores it with release ordering and calls it
    // for every later sample, and it stays valid for the process's life.
    unsafe { raw::write::<Option<Hook>>(HOOK_CTL, Some(hook)) }
        .map_err(|e| format!("writing experimental.hooks.prof_backtrace: {e}"))
}

fn previous() -> Option<Hook> {
    let p = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: PREVIOUS only ever holds 0 or a `Hook` read from jemalloc.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, Hook>(p) })
}

fn is_ours(hook: Option<Hook>) -> bool {
    hook.is_some_and(|h| {
        std::ptr::fn_addr_eq(h, frame_pointer_backtrace as Hook)
            || std::ptr::fn_addr_eq(h, probe_backtrace as Hook)
    })
}

/// This thread's stack range, asked of glibc on the thread's first sample.
fn own_stack() -> Option<(usize, usize)> {
    let known = STACK.try_with(Cell::get).ok()?;
    match known {
        (0, 0) => {}
        (1, 0) => return None,
        range => return Some(range),
    }
    // SAFETY: `attr` is initialised by pthread_getattr_np before it is read and destroyed
    // once; pthread_attr_getstack writes the two out-pointers.
    let range = unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            None
        } else {
            let mut addr: *mut c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
            libc::pthread_attr_destroy(&mut attr);
            let lo = addr as usize;
            (rc == 0 && size > 0).then(|| (lo, lo.saturating_add(size)))
        }
    };
    let _ = STACK.try_with(|s| s.set(range.unwrap_or((1, 0))));
    range
}

/// diag's walk into `vec`, or 0 when this thread's stack is not known (or the hook runs
/// on another stack, such as a signal's alternate one).
///
/// # Safety
/// `vec` must have room for `max` pointers.
#[inline(always)]
unsafe fn frame_pointer_walk(vec: *mut *mut c_void, max: usize) -> usize {
    let Some((lo, hi)) = own_stack() else {
        return 0;
    };
    // SAFETY: `[lo, hi)` is this thread's stack as glibc reports it; `chain_from_caller`
    // checks that its own frame lies in it (not on an alternate signal stack), and reads
    // only from there up, the part in use. `vec` has room for `max`.
    unsafe { chain_from_caller(lo, hi, vec, max) }
}

/// The hook diag installs: the frame-pointer walk, or the previous hook when the walk
/// cannot run on this thread.
///
/// # Safety
/// Called by jemalloc only, with `vec` holding `max_len` pointers.
unsafe extern "C" fn frame_pointer_backtrace(
    vec: *mut *mut c_void,
    len: *mut c_uint,
    max_len: c_uint,
) {
    // SAFETY: jemalloc's `vec` holds `max_len` entries.
    let n = unsafe { frame_pointer_walk(vec, max_len as usize) };
    if n >= 2 {
        // SAFETY: jemalloc passes a valid `len`.
        unsafe { *len = n as c_uint };
    } else if let Some(prev) = previous() {
        // SAFETY: the previous hook, called as jemalloc would.
        unsafe { prev(vec, len, max_len) };
    } else {
        // SAFETY: as above.
        unsafe { *len = 0 };
    }
}

/// Installs diag's walker as jemalloc's unwinder (`on`) once the probe agrees, or puts
/// the previous one back (`!on`); called when a router is built, so the last one built
/// decides. Does nothing yet unless jemalloc can profile and is sampling now: then
/// [`refresh`] does it later.
pub(crate) fn apply(on: bool) {
    WANTED.store(on, Ordering::Relaxed);
    refresh();
}

/// Does what the router built last asked, if it could not be done then (jemalloc was
/// not sampling); called before each heap profile.
pub(crate) fn refresh() {
    let on = WANTED.load(Ordering::Relaxed);
    if super::jemalloc::profiling().is_err() {
        return;
    }
    let Ok(_guard) = APPLY.lock() else {
        return;
    };
    let Ok(current) = read_hook() else {
        return;
    };
    if !is_ours(current) {
        if let Some(h) = current {
            PREVIOUS.store(h as usize, Ordering::Release);
        }
    }
    let Some(prev) = previous() else {
        return;
    };
    if on {
        if is_ours(current) {
            return;
        }
        if VERDICT.get_or_init(|| probe(prev)).is_ok() {
            let _ = write_hook(frame_pointer_backtrace);
        }
    } else if is_ours(current) {
        let _ = write_hook(prev);
    }
}

/// Who unwinds jemalloc's samples now, and why.
pub(crate) fn current() -> Unwinder {
    match read_hook() {
        Ok(h) if is_ours(h) => Unwinder::FramePointer(
            VERDICT
                .get()
                .and_then(|v| v.clone().ok())
                .unwrap_or_default(),
        ),
        Ok(_) => Unwinder::Jemalloc(match VERDICT.get() {
            Some(Err(why)) => format!("diag's walker not installed: {why}"),
            Some(Ok(_)) => "diag's walker turned off by configuration".to_owned(),
            None => "diag's walker not probed: turned off, or jemalloc not sampling".to_owned(),
        }),
        Err(e) => Unwinder::Jemalloc(e),
    }
}
