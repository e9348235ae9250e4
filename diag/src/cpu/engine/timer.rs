//! Per-thread CPU-time timers: `timer_create` on a thread's CPU clock with
//! `SIGEV_THREAD_ID`, so each thread gets `SIGPROF` after each period of its own CPU time
//! (what Go does since 1.18; a process-wide `setitimer` signal lands on whichever thread
//! the kernel picks and undercounts busy threads, golang/go#35057). The raw system calls
//! are used: libc's wrappers are not in the `libc` crate for every target, and the kernel
//! interface is the same.

use std::io;

/// `sigev_notify` value: deliver to the thread in `sigev_notify_thread_id`.
const SIGEV_THREAD_ID: libc::c_int = 4;

/// The CPU clock of thread `tid` (what glibc's `pthread_getcpuclockid` computes:
/// `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`).
fn thread_cpu_clock(tid: u32) -> libc::clockid_t {
    ((!(tid as libc::clockid_t)) << 3) | 4 | 2
}

/// A kernel timer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerId(libc::c_int);

/// Creates a timer on thread `tid`'s CPU clock that sends `SIGPROF` to that thread with
/// `value` in `si_value`. Not armed yet.
pub(crate) fn create(tid: u32, value: u64) -> io::Result<TimerId> {
    // SAFETY: an all-zero sigevent is valid; the fields set below are the ones the kernel
    // reads for SIGEV_THREAD_ID.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_value = libc::sigval {
        sival_ptr: value as usize as *mut libc::c_void,
    };
    sev.sigev_signo = libc::SIGPROF;
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_notify_thread_id = tid as libc::c_int;
    let mut id: libc::c_int = 0;
    // SAFETY: valid pointers to a sigevent and an int for the kernel to fill.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_timer_create,
            thread_cpu_clock(tid),
            &mut sev as *mut libc::sigevent,
            &mut id as *mut libc::c_int,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TimerId(id))
}

/// Arms `timer`: first expiry after `first_ns` of the thread's CPU time, then every
/// `period_ns`.
pub(crate) fn arm(timer: TimerId, first_ns: u64, period_ns: u64) -> io::Result<()> {
    let ts = |ns: u64| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: ts(period_ns),
        it_value: ts(first_ns.max(1)),
    };
    // SAFETY: a valid itimerspec; no old value asked for.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            timer.0,
            0,
            &spec as *const libc::itimerspec,
            std::ptr::null_mut::<libc::itimerspec>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The thread CPU time left until `timer`'s next expiry, in nanoseconds (0: disarmed).
pub(crate) fn remaining(timer: TimerId) -> io::Result<u64> {
    // SAFETY: all-zero itimerspec is valid; the kernel fills it.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_timer_gettime,
            timer.0,
            &mut spec as *mut libc::itimerspec,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let v = spec.it_value;
    Ok((v.tv_sec as u64).saturating_mul(1_000_000_000) + v.tv_nsec as u64)
}

/// Deletes `timer` (disarming it). Errors are ignored: the thread may have exited.
pub(crate) fn delete(timer: TimerId) {
    // SAFETY: deleting a timer id this module created; a stale id only fails.
    unsafe {
        libc::syscall(libc::SYS_timer_delete, timer.0);
    }
}

/// A small random number generator for first expiries (xorshift, seeded from the clock):
/// threads armed together must not all fire at once.
#[derive(Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        Self(seed | 1)
    }

    /// A number in `1..=max`.
    pub(crate) fn below(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % max.max(1) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_clock_matches_pthread_getcpuclockid() {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: this thread's own handle and a valid out pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        assert_eq!(rc, 0);
        // SAFETY: gettid takes no arguments.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        assert_eq!(thread_cpu_clock(tid), clock);
    }
}
