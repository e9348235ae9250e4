//! Sampling fidelity: the CPU time a profile accounts for over the CPU time the process
//! used, with N busy threads, for diag's engine (per-thread CPU timers) and for a
//! process-wide `setitimer(ITIMER_PROF)` counted by a plain handler (what pprof-rs uses).
//! One process per run, so the two never share signal state:
//!
//!     cargo run --release -p benches --example fidelity -- engine 4 5 99
//!     cargo run --release -p benches --example fidelity -- setitimer 4 5 99
//!     cargo run --release -p benches --example fidelity -- engine 4 5 99 late
//!
//! Arguments: mode, busy threads, seconds, Hz, and `late` to start the busy threads one
//! second into the window instead of before it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[inline(never)]
fn burn(n: u64) -> u64 {
    let mut x = std::hint::black_box(1u64);
    for i in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
    }
    x
}

fn burners(n: usize, on: &Arc<AtomicBool>) {
    for _ in 0..n {
        let on = on.clone();
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                std::hint::black_box(burn(100_000));
            }
        });
    }
}

/// The process's CPU time in nanoseconds, as the engine's figures are signed.
fn cpu_ns() -> i64 {
    benches::process_cpu_ns() as i64
}

static SIGNALS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("engine", String::as_str).to_owned();
    let threads: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let seconds: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5);
    let hz: u32 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(99);
    let late = args.get(5).is_some_and(|a| a == "late");
    let on = Arc::new(AtomicBool::new(true));
    if !late {
        burners(threads, &on);
        std::thread::sleep(Duration::from_millis(200));
    }
    let window = Duration::from_secs(seconds);
    let starter = late.then(|| {
        let on = on.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            burners(threads, &on);
        })
    });
    let (samples, sampled, used) = match mode.as_str() {
        "engine" => diag::bench::cpu_window(hz, window).unwrap(),
        "setitimer" => {
            let period_us = 1_000_000 / i64::from(hz);
            // SAFETY: a handler that only bumps an atomic; valid itimervals.
            unsafe {
                libc::signal(libc::SIGPROF, count as *const () as libc::sighandler_t);
            }
            let tv = |us: i64| libc::timeval {
                tv_sec: (us / 1_000_000) as libc::time_t,
                tv_usec: (us % 1_000_000) as libc::suseconds_t,
            };
            let it = libc::itimerval {
                it_interval: tv(period_us),
                it_value: tv(period_us),
            };
            let c0 = cpu_ns();
            unsafe { libc::setitimer(libc::ITIMER_PROF, &it, std::ptr::null_mut()) };
            std::thread::sleep(window);
            let off = libc::itimerval {
                it_interval: tv(0),
                it_value: tv(0),
            };
            unsafe { libc::setitimer(libc::ITIMER_PROF, &off, std::ptr::null_mut()) };
            let used = cpu_ns() - c0;
            let n = SIGNALS.load(Ordering::Relaxed) as i64;
            (n, n * period_us * 1000, used)
        }
        other => panic!("mode {other:?}: engine or setitimer"),
    };
    on.store(false, Ordering::Relaxed);
    if let Some(s) = starter {
        s.join().unwrap();
    }
    println!(
        "{mode} threads={threads}{} hz={hz}: {samples} samples, sampled {:.3} s of {:.3} s used: fidelity {:.3}",
        if late { " (started 1 s late)" } else { "" },
        sampled as f64 / 1e9,
        used as f64 / 1e9,
        sampled as f64 / used as f64
    );
}
