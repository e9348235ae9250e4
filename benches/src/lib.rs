//! criterion benchmarks live in `benches/`, measurement programs in `examples/`; this
//! library holds what more than one of them reads or computes.

/// CPU time the whole process has used (`CLOCK_PROCESS_CPUTIME_ID`), in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The median of `v` (the mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[m],
        _ => (s[m - 1] + s[m]) / 2.0,
    }
}

/// A 95 % bootstrap interval of the median of `v`: 4000 resamples drawn by a fixed
/// generator, so reruns on the same figures agree (scripts/churn_ab.py does the same).
pub fn median_interval(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut meds: Vec<f64> = (0..4000)
        .map(|_| {
            let pick: Vec<f64> = (0..v.len())
                .map(|_| v[(rng.next_u64() % v.len() as u64) as usize])
                .collect();
            median(&pick)
        })
        .collect();
    meds.sort_by(f64::total_cmp);
    (meds[100], meds[3899])
}

/// A small deterministic generator (xorshift64): the same seed draws the same numbers.
#[derive(Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The next number (the seed must not be zero).
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_interval_holds_the_median_and_repeats() {
        let v: Vec<f64> = (0..101).map(|i| 1.0 + f64::from(i) / 1000.0).collect();
        let (lo, hi) = median_interval(&v);
        assert!(lo < median(&v) && median(&v) < hi, "{lo} {hi}");
        assert!(lo >= 1.0 && hi <= 1.1);
        assert_eq!(median_interval(&v), (lo, hi));
    }

    #[test]
    fn process_cpu_time_grows_with_work() {
        let a = process_cpu_ns();
        let mut x = 1u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        let b = process_cpu_ns();
        assert!(b > a, "{a} then {b} after 20 million multiplications ({x})");
    }
}
