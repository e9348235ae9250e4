//! The probe that decides whether diag's walk may unwind jemalloc's samples: one
//! allocation, sampled for sure, unwound by both the hook in place and diag's walk.

use std::alloc::Layout;
use std::cell::Cell;
use std::ffi::{c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tikv_jemalloc_ctl::raw;

use super::{Hook, frame_pointer_walk, own_stack, previous, write_hook};
use crate::cpu::engine::walk_own_stack;

thread_local! {
    /// Set on the probing thread while the probe hook is installed.
    static PROBING: Cell<bool> = const { Cell::new(false) };
}

/// Frames kept from each walker in the probe.
const PROBE_FRAMES: usize = 128;
/// What the probe hook saw on the probing thread: jemalloc's walk, then diag's.
static PROBE_PREV: [AtomicUsize; PROBE_FRAMES] = [const { AtomicUsize::new(0) }; PROBE_FRAMES];
static PROBE_OURS: [AtomicUsize; PROBE_FRAMES] = [const { AtomicUsize::new(0) }; PROBE_FRAMES];
static PROBE_LENS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];
static PROBE_FIRED: AtomicBool = AtomicBool::new(false);

/// The hook installed while probing: on the probing thread it unwinds with both walkers
/// and keeps both results (jemalloc records the previous hook's); elsewhere it is the
/// previous hook.
///
/// # Safety
/// Called by jemalloc only, with `vec` holding `max_len` pointers.
pub(super) unsafe extern "C" fn probe_backtrace(
    vec: *mut *mut c_void,
    len: *mut c_uint,
    max_len: c_uint,
) {
    let Some(prev) = previous() else {
        // SAFETY: jemalloc passes a valid `len`.
        unsafe { *len = 0 };
        return;
    };
    if !PROBING.try_with(Cell::get).unwrap_or(false) {
        // SAFETY: the previous hook, called as jemalloc would.
        unsafe { prev(vec, len, max_len) };
        return;
    }
    let max = (max_len as usize).min(PROBE_FRAMES);
    let mut ours = [std::ptr::null_mut::<c_void>(); PROBE_FRAMES];
    // SAFETY: `ours` holds PROBE_FRAMES ≥ max pointers.
    let n_ours = unsafe { frame_pointer_walk(ours.as_mut_ptr(), max) };
    // SAFETY: the previous hook, called as jemalloc would, into jemalloc's own `vec`.
    unsafe { prev(vec, len, max_len) };
    // SAFETY: the previous hook set `*len` entries of `vec`.
    let n_prev = (unsafe { *len } as usize).min(max);
    for (i, slot) in PROBE_PREV.iter().enumerate().take(n_prev) {
        // SAFETY: `i < *len ≤ max_len`.
        slot.store(unsafe { *vec.add(i) } as usize, Ordering::Relaxed);
    }
    for (slot, a) in PROBE_OURS.iter().zip(&ours[..n_ours]) {
        slot.store(*a as usize, Ordering::Relaxed);
    }
    PROBE_LENS[0].store(n_prev, Ordering::Relaxed);
    PROBE_LENS[1].store(n_ours, Ordering::Relaxed);
    PROBE_FIRED.store(true, Ordering::Release);
}

/// Allocates `size` bytes here (freed at once) after noting this function's callers:
/// returns the return address into this function's caller, which both walkers must find
/// above the allocation.
#[inline(never)]
fn probe_alloc(layout: Layout) -> Option<usize> {
    let mut own = [0usize; 4];
    let own_ptr = own.as_mut_ptr();
    let (lo, hi) = own_stack()?;
    // SAFETY: this thread's stack; every index is below the array's 4.
    let n = unsafe { walk_own_stack(lo, hi, own.len(), |i, a| *own_ptr.add(i) = a) };
    // SAFETY: `layout` has a non-zero size; the block is freed with it.
    let p = unsafe { std::alloc::alloc(layout) };
    if !p.is_null() {
        std::hint::black_box(p);
        // SAFETY: allocated just above with `layout`.
        unsafe { std::alloc::dealloc(p, layout) };
    }
    (n >= 2).then_some(own[1])
}

/// Runs the probe with the probe hook installed; the previous hook is back on return.
#[inline(never)]
pub(super) fn probe(prev: Hook) -> Result<String, String> {
    let lg: usize =
        // SAFETY: opt.lg_prof_sample reads as a size_t.
        unsafe { raw::read(b"opt.lg_prof_sample\0") }.map_err(|e| e.to_string())?;
    // Four sampling periods: sampled with chance 1 - e^-4 each time.
    let size = (4usize << lg.min(24)).max(4096);
    let layout = Layout::from_size_align(size, 16).map_err(|e| e.to_string())?;
    PROBE_FIRED.store(false, Ordering::Relaxed);
    write_hook(probe_backtrace)?;
    let _ = PROBING.try_with(|p| p.set(true));
    let mut anchor = None;
    for _ in 0..32 {
        anchor = probe_alloc(layout);
        if PROBE_FIRED.load(Ordering::Acquire) || anchor.is_none() {
            break;
        }
    }
    let _ = PROBING.try_with(|p| p.set(false));
    write_hook(prev)?;
    let anchor = anchor.ok_or("this thread's stack range is unknown")?;
    if !PROBE_FIRED.load(Ordering::Acquire) {
        return Err(format!(
            "32 probe allocations of {size} bytes, none sampled by jemalloc"
        ));
    }
    let load = |a: &[AtomicUsize], n: usize| -> Vec<usize> {
        a[..n.min(PROBE_FRAMES)]
            .iter()
            .map(|x| x.load(Ordering::Relaxed))
            .collect()
    };
    let theirs = load(&PROBE_PREV, PROBE_LENS[0].load(Ordering::Relaxed));
    let ours = load(&PROBE_OURS, PROBE_LENS[1].load(Ordering::Relaxed));
    compare(&theirs, &ours, anchor)
}

/// Whether two stacks of the probe allocation agree where a heap profile shows them:
/// from the allocating function (the frame just below `anchor`, the return address into
/// its caller) up to the root, as far as both reach. Says how they compared.
fn compare(theirs: &[usize], ours: &[usize], anchor: usize) -> Result<String, String> {
    let ia = theirs.iter().position(|&a| a == anchor);
    let ib = ours.iter().position(|&a| a == anchor);
    let (Some(ia), Some(ib)) = (ia, ib) else {
        return Err(format!(
            "on a probe allocation, {} did not reach the probe's caller \
             ({} frames from jemalloc's unwinder, {} from diag's)",
            match (ia, ib) {
                (None, Some(_)) => "jemalloc's unwinder",
                (Some(_), None) => "diag's frame-pointer walk",
                _ => "neither unwinder",
            },
            theirs.len(),
            ours.len()
        ));
    };
    if ia == 0 || ib == 0 {
        return Err("on a probe allocation, no frame below the probe's caller".to_owned());
    }
    let (t, o) = (&theirs[ia - 1..], &ours[ib - 1..]);
    let shared = t.len().min(o.len());
    if let Some(k) = (0..shared).find(|&k| t[k] != o[k]) {
        return Err(format!(
            "on a probe allocation, the two unwinders disagree {k} frames above the \
             allocating function"
        ));
    }
    if o.len() > t.len() && theirs.len() < PROBE_FRAMES {
        return Err(format!(
            "on a probe allocation, diag's walk gave {} frames past the root jemalloc's \
             unwinder found",
            o.len() - t.len()
        ));
    }
    // Below the allocating function: jemalloc's frames and the allocator shims, which
    // profiles drop. Count how many of them agree too.
    let inner = theirs[..ia - 1]
        .iter()
        .rev()
        .zip(ours[..ib - 1].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    Ok(format!(
        "a probe allocation gave the same {shared} frames from the allocating function up as \
         jemalloc's unwinder{}, and {inner} of the allocator's frames below it",
        match t.len() - shared {
            0 => String::new(),
            n => format!(", which adds {n} at the root"),
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_compare_from_the_allocating_function_up() {
        // jemalloc's frames differ below the allocating function (7); 9 is the anchor.
        let theirs = [1, 2, 3, 7, 9, 10, 11, 12];
        let ours = [5, 3, 7, 9, 10, 11];
        let ok = compare(&theirs, &ours, 9).unwrap();
        assert!(ok.contains("same 4 frames"), "{ok}");
        assert!(ok.contains("adds 1 at the root"), "{ok}");
        assert!(ok.contains("1 of the allocator's frames"), "{ok}");
        // A frame lost above the allocating function.
        let e = compare(&theirs, &[5, 3, 7, 9, 11], 9).unwrap_err();
        assert!(e.contains("disagree 2 frames above"), "{e}");
        // The allocating function itself differs.
        let e = compare(&theirs, &[5, 3, 8, 9, 10], 9).unwrap_err();
        assert!(e.contains("disagree 0 frames above"), "{e}");
        // diag's walk stops short of the probe's caller.
        let e = compare(&theirs, &[5, 3], 9).unwrap_err();
        assert!(e.contains("diag's frame-pointer walk did not reach"), "{e}");
        // diag's walk runs past the root.
        let e = compare(&theirs, &[7, 9, 10, 11, 12, 13], 9).unwrap_err();
        assert!(e.contains("1 frames past the root"), "{e}");
    }
}
