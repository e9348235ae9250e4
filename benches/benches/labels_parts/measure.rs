//! Side-by-side cost of B over A per call, in this thread's CPU time.

use std::time::Duration;

/// This thread's CPU time: preemption by other processes is not in it, so on a loaded
/// machine it resolves what wall time cannot.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// B's cost over A's in this thread's CPU time (the runtime is current-thread, so a
/// request's whole work is on it): `rounds` alternations of `iters` calls each; prints
/// the median per-round ratio B/A [min, max], each side's median CPU per call, the
/// median per-call difference B − A [min, max].
pub(crate) fn cpu_ratio(
    name: &str,
    rounds: usize,
    iters: u32,
    mut a: impl FnMut(),
    mut b: impl FnMut(),
) {
    let time = |f: &mut dyn FnMut()| {
        let t = thread_cpu();
        for _ in 0..iters {
            f();
        }
        (thread_cpu() - t).as_secs_f64() * 1e9 / f64::from(iters)
    };
    time(&mut a);
    time(&mut b);
    let (mut ratios, mut diffs, mut ta, mut tb) = (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        let (x, y) = if r % 2 == 0 {
            let x = time(&mut a);
            (x, time(&mut b))
        } else {
            let y = time(&mut b);
            (time(&mut a), y)
        };
        ratios.push(y / x);
        diffs.push(y - x);
        ta.push(x);
        tb.push(y);
    }
    let (ratio, rmin, rmax) = median(&mut ratios);
    let (diff, dmin, dmax) = median(&mut diffs);
    println!(
        "cpu ratio {name}: {ratio:.3} [{rmin:.3}, {rmax:.3}] over {rounds} alternations of \
         {iters} calls; {:.0} -> {:.0} ns of thread CPU per call, B - A median {diff:.0} ns \
         [{dmin:.0}, {dmax:.0}]",
        median(&mut ta).0,
        median(&mut tb).0,
    );
}
