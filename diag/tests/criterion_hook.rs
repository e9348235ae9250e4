//! diag's criterion hook: in profile mode (`cargo bench -- --profile-time N`) criterion
//! calls it around each benchmark, and it writes a flamegraph that names the benchmarked
//! function and a profile.proto the real `go tool pprof` reads.
#![cfg(feature = "criterion")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;

/// The benchmarked work: a loop that stays on the CPU under this name.
#[inline(never)]
fn spin_for_the_hook(n: u64) -> u64 {
    let mut x = 0u64;
    for i in 0..n {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    x
}

#[test]
fn profile_mode_writes_a_flamegraph_and_a_profile_per_benchmark() {
    let out = testkit::temp_dir("criterion-hook");
    let mut c = Criterion::default()
        .output_directory(&out)
        .with_profiler(diag::criterion::Flamegraphs::new())
        .profile_time(Some(Duration::from_secs(2)));
    c.bench_function("spin", |b| b.iter(|| spin_for_the_hook(black_box(20_000))));
    c.bench_function("spin again", |b| {
        b.iter(|| spin_for_the_hook(black_box(10_000)))
    });

    // criterion names each benchmark's directory after its id.
    for bench in ["spin", "spin again"] {
        let dir = out.join(bench).join("profile");
        let svg = std::fs::read_to_string(dir.join("flamegraph.svg"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let frames = testkit::svg_titles(&svg);
        assert!(
            frames.iter().any(|t| t.contains("spin_for_the_hook")),
            "{bench}: no spin_for_the_hook frame among {} titles",
            frames.len()
        );
        assert!(
            svg.contains(bench.replace('_', " ").as_str()),
            "{bench}: title"
        );

        let top = testkit::go_pprof(&["-top", dir.join("profile.pb.gz").to_str().unwrap()]);
        let line = top
            .lines()
            .find(|l| l.contains("spin_for_the_hook"))
            .unwrap_or_else(|| panic!("{bench}: go tool pprof -top lacks the loop:\n{top}"));
        // The benchmark runs nothing but the loop: nearly all the samples are under it
        // (cum), whatever share the inlined arithmetic leaves to it as flat.
        let cum_pct: f64 = line
            .split_whitespace()
            .nth(4)
            .and_then(|p| p.trim_end_matches('%').parse().ok())
            .unwrap_or_else(|| panic!("unreadable line: {line}"));
        assert!(cum_pct >= 80.0, "{bench}: {line}");
    }
}
