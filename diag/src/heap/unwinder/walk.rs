//! The walk diag's hook runs for each of jemalloc's samples: the chain of frame records
//! from the hook's own frame up, every read bounded by the thread's stack.
//!
//! It gives the same addresses as the CPU engine's `walk_own_stack` started from the
//! same place, without that walk's search for the callers of a frameless leaf: the hook
//! is never such a leaf (it is diag's own function, built with frame pointers, called
//! by jemalloc, whose functions keep theirs), so that search finds nothing here. It is
//! not free: it looks candidate words up in the engine's table of executable mappings,
//! cold lines on a path run once per 512 KiB allocated, and on `/churn` it cost as much
//! as the walk itself (perf, docs/performance.md).

use std::ffi::c_void;

/// Reads a word of the stack.
///
/// # Safety
/// `[addr, addr + 8)` must lie within the calling thread's stack, mapped and readable.
#[inline(always)]
unsafe fn read_word(addr: usize) -> usize {
    // SAFETY: as the caller guarantees; the stack is this thread's own, in use below
    // the caller, so it stays mapped for the call.
    unsafe { std::ptr::read_volatile(addr as *const usize) }
}

/// Fills `vec` with the return addresses of the frames above the caller of this
/// function, leaf first, at most `max`: the return address into the caller, then the one
/// of each frame record up the chain, while each record lies in `[lo, hi)` above the
/// last. Returns how many it put; 0 when this function's own record is not in
/// `[lo, hi)` (another stack, such as a signal's alternate one).
///
/// # Safety
/// `[lo, hi)` must be the calling thread's stack, mapped and readable; `vec` must have
/// room for `max` pointers.
#[inline(never)]
pub(super) unsafe fn chain_from_caller(
    lo: usize,
    hi: usize,
    vec: *mut *mut c_void,
    max: usize,
) -> usize {
    // This function's own frame record, read after its prologue.
    let fp = crate::fp::frame_pointer();
    const WORD: usize = core::mem::size_of::<usize>();
    let in_stack = |fp: usize, floor: usize| {
        fp >= floor && fp % WORD == 0 && fp.checked_add(2 * WORD).is_some_and(|e| e <= hi)
    };
    if max == 0 || !in_stack(fp, lo) {
        return 0;
    }
    // SAFETY: `[fp, fp + 16)` lies in `[lo, hi)`, the caller's readable stack.
    let (mut next, ret) = unsafe { (read_word(fp), read_word(fp + WORD)) };
    if next <= fp {
        return 0;
    }
    // SAFETY: index 0 is below `max`, for which `vec` has room.
    unsafe { *vec = ret as *mut c_void };
    let mut n = 1;
    // The records above: each must lie above the last one read.
    let mut floor = fp + 2 * WORD;
    while n < max && in_stack(next, floor) {
        let at = next;
        // SAFETY: `[at, at + 16)` lies in `[floor, hi)` ⊆ `[lo, hi)`.
        let ret;
        (next, ret) = unsafe { (read_word(at), read_word(at + WORD)) };
        if ret == 0 {
            break;
        }
        // SAFETY: `n < max`.
        unsafe { *vec.add(n) = ret as *mut c_void };
        n += 1;
        if next <= at {
            break;
        }
        floor = at + 2 * WORD;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::engine::walk_own_stack;

    const MAX: usize = 64;

    /// Both walks from one function: the engine's `walk_own_stack` and the hook's.
    #[inline(never)]
    fn both(lo: usize, hi: usize) -> (Vec<usize>, Vec<usize>) {
        let mut engine = [0usize; MAX];
        let e = engine.as_mut_ptr();
        // SAFETY: this thread's stack; every index is below MAX.
        let n_engine = unsafe { walk_own_stack(lo, hi, MAX, |i, a| *e.add(i) = a) };
        let mut hook = [std::ptr::null_mut::<c_void>(); MAX];
        // SAFETY: this thread's stack; `hook` has room for MAX.
        let n_hook = unsafe { chain_from_caller(lo, hi, hook.as_mut_ptr(), MAX) };
        let hook = hook[..n_hook].iter().map(|&a| a as usize).collect();
        (engine[..n_engine].to_vec(), hook)
    }

    #[test]
    fn the_hooks_walk_gives_the_engines_addresses() {
        let (lo, hi) = super::super::own_stack().expect("this thread's stack range");
        let (engine, hook) = std::hint::black_box(both(lo, hi));
        assert!(engine.len() >= 3, "{engine:x?}");
        // Each starts with the return address into `both`, at its own call; above that,
        // the same frames (the test harness's, up to the thread's start).
        assert_ne!(engine[0], hook[0]);
        assert_eq!(engine[1..], hook[1..], "engine {engine:x?}\nhook {hook:x?}");
    }

    #[test]
    fn the_hooks_walk_stays_in_its_bounds() {
        let (lo, hi) = super::super::own_stack().expect("this thread's stack range");
        let mut out = [std::ptr::null_mut::<c_void>(); MAX];
        // A range that does not hold this frame: nothing.
        // SAFETY: reads only inside the range given, which is not read at all here.
        assert_eq!(
            unsafe { chain_from_caller(hi, hi, out.as_mut_ptr(), MAX) },
            0
        );
        // No room: nothing.
        // SAFETY: as above; `max` is 0.
        assert_eq!(unsafe { chain_from_caller(lo, hi, out.as_mut_ptr(), 0) }, 0);
        // At most `max`.
        // SAFETY: this thread's stack; `out` has room for 2.
        assert_eq!(unsafe { chain_from_caller(lo, hi, out.as_mut_ptr(), 2) }, 2);
    }
}
