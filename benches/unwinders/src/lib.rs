//! A stack of known depth to sample: `descend(n)` recurses `n` times, then runs the
//! leaf, `at_the_bottom`, which raises `SIGPROF` on its own thread so that pprof-rs's
//! handler records exactly that stack.

use std::hint::black_box;

/// Recurses `depth` times, then calls `leaf` at the bottom.
#[inline(never)]
pub fn descend(depth: usize, leaf: &mut dyn FnMut()) -> usize {
    if depth == 0 {
        at_the_bottom(leaf);
        return 0;
    }
    // Work after the call keeps it from becoming a tail call.
    black_box(descend(black_box(depth - 1), leaf)) + 1
}

/// The leaf frame every sample should end in.
#[inline(never)]
pub fn at_the_bottom(leaf: &mut dyn FnMut()) {
    leaf();
    black_box(());
}

/// Sends `SIGPROF` to the calling thread; the handler runs before this returns.
pub fn sample_here() {
    // SAFETY: raise(3) with a valid signal number.
    unsafe {
        libc::raise(libc::SIGPROF);
    }
}

extern "C" fn empty_handler(_: libc::c_int) {}

/// Installs a handler for `SIGPROF` that does nothing: the cost of the signal alone.
pub fn install_empty_handler() {
    // SAFETY: the handler is async-signal-safe (it does nothing).
    unsafe {
        libc::signal(
            libc::SIGPROF,
            empty_handler as *const () as libc::sighandler_t,
        );
    }
}
