//! Wall-time profiles over a real sidecar: a std thread blocked on a lock shows with its
//! stack and its wall time; tokio's parked workers and idle blocking-pool threads do not;
//! and so it does while a CPU profile runs.
#![cfg(all(feature = "taskdump", feature = "cpu", target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use testkit::{folded, get, go_pprof_async};

/// Waits for `lock`: a function of its own, so the profile names it.
#[inline(never)]
fn waits_for_the_lock(lock: &Mutex<()>) {
    let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
}

/// Waits until this process's thread named `name` is asleep in the kernel (state `S` in
/// its `/proc/self/task/TID/stat`): a thread just spawned may not have run yet on a loaded
/// machine.
fn waits_in_the_kernel(name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let asleep = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
            })
            .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .any(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('S'))
            });
        if asleep {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never slept in the kernel"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An application runtime with two workers and diag's sidecar serving it.
fn runtime_and_sidecar() -> (tokio::runtime::Runtime, diag::server::Sidecar) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sidecar = rt.block_on(async {
        let cfg = diag::Config::default().with_min_dump_interval(Duration::ZERO);
        diag::serve(cfg, "127.0.0.1:0").await.unwrap()
    });
    (rt, sidecar)
}

/// A thread named `app-waiter` waiting for `lock` (held by the caller), returned once
/// it sleeps on it: a profile's window opens then (the kernel says so).
fn blocked_waiter(lock: &Arc<Mutex<()>>) -> std::thread::JoinHandle<()> {
    let lock = lock.clone();
    let waiter = std::thread::Builder::new()
        .name("app-waiter".into())
        .spawn(move || waits_for_the_lock(&lock))
        .unwrap();
    waits_in_the_kernel("app-waiter");
    waiter
}

/// The waiter was blocked the whole 3 s window (one tick's weight either way).
fn assert_waited_the_window(stacks: &[(String, i64)], folded_text: &str) {
    let waiting: i64 = stacks
        .iter()
        .filter(|(s, _)| s.starts_with("thread app-waiter;") && s.contains("waits_for_the_lock"))
        .map(|(_, v)| v)
        .sum();
    let secs = waiting as f64 / 1e9;
    assert!((2.7..=3.2).contains(&secs), "{secs} s\n{folded_text}");
}

/// One wall profile at a time in this process: the tests take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn a_thread_blocked_on_a_lock_shows_with_its_wall_time_and_parked_workers_do_not() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (rt, sidecar) = runtime_and_sidecar();
    // A blocking-pool thread that ran a closure and is idle now, kept alive by tokio.
    rt.block_on(rt.spawn_blocking(|| ())).unwrap();

    let lock = Arc::new(Mutex::new(()));
    let held = lock.lock().unwrap();
    let waiter = blocked_waiter(&lock);
    let url = format!("http://{}/debug/pprof/wall?seconds=3", sidecar.local_addr());
    let (folded_text, top) = rt.block_on(async {
        let f = get(&format!("{url}&format=folded")).await;
        assert_eq!(f.status, StatusCode::OK, "{}", f.text());
        let top = go_pprof_async(vec![
            "-timeout=120".into(),
            "-top".into(),
            "-cum".into(),
            "-tagfocus".into(),
            "thread=app-waiter".into(),
            url.clone(),
        ])
        .await;
        (f.text(), top)
    });
    drop(held);
    waiter.join().unwrap();

    let stacks = folded(&folded_text);
    assert_waited_the_window(&stacks, &folded_text);
    // Idle workers, the idle blocking-pool thread and this thread parked in the
    // runtime's `block_on` are not in the profile: no thread stack holds tokio's
    // runtime (no thread here runs a closure or a poll).
    for (s, _) in &stacks {
        assert!(
            !(s.starts_with("thread ") && s.contains("tokio::runtime::")),
            "tokio waiting for work in the profile: {s}"
        );
    }
    // The real go tool pprof reads it: the wait under the waiter's thread label.
    assert!(top.contains("Type: wall"), "{top}");
    assert!(top.contains("waits_for_the_lock"), "{top}");
    assert!(top.contains("left out as tokio waiting for work"), "{top}");
    rt.shutdown_background();
}

/// Spins until `stop`: the thread a CPU profile's signals land on.
#[inline(never)]
fn burns_until(stop: &AtomicBool) -> u64 {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i ^ (x >> 3));
        }
        x = std::hint::black_box(x);
    }
    x
}

/// A wall profile taken while a 1000 Hz CPU profile samples a burning thread: the
/// blocked thread still shows with its whole wall time (threads were once not signalled
/// at all while a CPU profile ran), both answers come, and the process lives (the two
/// handlers share the threads' small alternate signal stacks).
#[test]
fn a_wall_profile_during_a_cpu_profile_still_samples_threads() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (rt, sidecar) = runtime_and_sidecar();
    let stop = Arc::new(AtomicBool::new(false));
    let burner = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("app-burner".into())
            .spawn(move || burns_until(&stop))
            .unwrap()
    };
    let lock = Arc::new(Mutex::new(()));
    let held = lock.lock().unwrap();
    let waiter = blocked_waiter(&lock);
    let base = format!("http://{}/debug/pprof", sidecar.local_addr());
    let (folded_text, cpu) = rt.block_on(async {
        // A CPU window long enough to span the wall window and its answer.
        let cpu = testkit::profile_running(
            &format!("{base}/profile?seconds=12&frequency=1000&format=folded"),
            &format!("{base}/"),
        )
        .await;
        let wall = get(&format!("{base}/wall?seconds=3&format=folded")).await;
        assert_eq!(wall.status, StatusCode::OK, "{}", wall.text());
        assert!(
            !cpu.is_finished(),
            "the CPU profile ended before the wall profile answered: no overlap shown"
        );
        (wall.text(), cpu.await.unwrap())
    });
    stop.store(true, Ordering::Relaxed);
    drop(held);
    burner.join().unwrap();
    waiter.join().unwrap();

    assert_eq!(cpu.status, StatusCode::OK, "{}", cpu.text());
    assert!(cpu.text().contains("burns_until"), "{}", cpu.text());
    assert_waited_the_window(&folded(&folded_text), &folded_text);
    rt.shutdown_background();
}
