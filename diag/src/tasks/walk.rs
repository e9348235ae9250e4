//! A frame-pointer walk of the current thread's stack, from the caller up to a frame the
#![cfg_attr(not(tokio_unstable), allow(dead_code))]
//! caller names: the cheap way to take a traced future's await stack (the workspace builds
//! with `-C force-frame-pointers=yes`, and Rust's std has frame pointers).
//!
//! Every frame read lies between this function's own frame and the stop frame on the same
//! thread's stack, both live, so the walk cannot fault whatever a frame holds: a function
//! without a frame pointer at worst ends the walk early or skips frames.

/// The most frames kept per stack.
pub(crate) const MAX_FRAMES: usize = 128;

/// The frame pointer of the function this is inlined into, 0 on platforms the walk
/// does not support.
pub(crate) use crate::fp::frame_pointer;

/// Appends the return addresses of the frames from this call up to the frame whose frame
/// pointer is `stop` (excluded: its own return address is its caller's), innermost first.
#[inline(never)]
pub(crate) fn walk(stop: usize, out: &mut Vec<usize>) {
    let start = frame_pointer();
    let mut fp = start;
    let word = std::mem::size_of::<usize>();
    while out.len() < MAX_FRAMES && fp != 0 && fp % word == 0 && fp >= start && fp < stop {
        // SAFETY: `start <= fp < stop`, word-aligned: the two words of the frame record
        // at `fp` lie on this thread's stack between this frame and the stop frame, whose
        // own record is live too (the caller is polling inside it).
        let (next, ret) = unsafe {
            (
                std::ptr::read_volatile(fp as *const usize),
                std::ptr::read_volatile((fp + word) as *const usize),
            )
        };
        if ret == 0 {
            break;
        }
        out.push(ret);
        if next <= fp {
            break;
        }
        fp = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn inner(stop: usize, out: &mut Vec<usize>) {
        walk(stop, out);
        std::hint::black_box(out);
    }

    #[inline(never)]
    fn middle(stop: usize, out: &mut Vec<usize>) {
        inner(stop, out);
        std::hint::black_box(out);
    }

    #[inline(never)]
    fn outer() -> (usize, Vec<usize>) {
        let stop = frame_pointer();
        let mut out = Vec::new();
        middle(stop, &mut out);
        (outer as *const () as usize, out)
    }

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn walks_up_to_the_stop_frame_and_no_further() {
        let (outer_fn, stack) = outer();
        // walk -> inner -> middle -> outer: three return addresses, the last inside outer.
        assert_eq!(stack.len(), 3, "{stack:x?}");
        let last = stack[2];
        assert!(
            last > outer_fn && last - outer_fn < 4096,
            "{stack:x?} {outer_fn:x}"
        );
        let middle_fn = middle as *const () as usize;
        assert!(stack[1] > middle_fn && stack[1] - middle_fn < 4096);
    }

    #[test]
    fn a_stop_below_the_caller_gives_nothing() {
        let mut out = Vec::new();
        walk(0, &mut out);
        assert!(out.is_empty());
    }
}
