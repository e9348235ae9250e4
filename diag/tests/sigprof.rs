//! `SIGPROF`s that are not diag's: `kill -PROF` before any profile, after one, and with an
//! application's own handler installed before diag's (and after it). Signal actions are
//! process-global and the order matters, so each scenario runs in a process of its own:
//! this binary (no test harness) runs itself once per scenario and checks how each child
//! ended. The `control` scenario shows what the checks guard against: without diag, the
//! same `kill -PROF` ends the process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const SCENARIOS: &[&str] = &[
    "control",
    "before_any_profile",
    "after_a_profile",
    "app_handler_first",
    "app_handler_after_diag",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(scenario) = args.iter().find_map(|a| a.strip_prefix("scenario=")) {
        run(scenario);
        println!("alive after {scenario}");
        return;
    }
    // Under `cargo test`, the harness's arguments (filters, --nocapture...) are ignored.
    let exe = std::env::current_exe().unwrap();
    let mut failed = Vec::new();
    for scenario in SCENARIOS {
        let out = Command::new(&exe)
            .arg(format!("scenario={scenario}"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let alive = out.status.success() && stdout.contains(&format!("alive after {scenario}"));
        let ok = if *scenario == "control" {
            // Killed by SIGPROF's default action, as any process without a handler.
            use std::os::unix::process::ExitStatusExt;
            out.status.signal() == Some(libc::SIGPROF)
        } else {
            alive
        };
        println!(
            "sigprof {scenario}: {} ({:?})",
            if ok { "ok" } else { "FAILED" },
            out.status
        );
        if !ok {
            failed.push(format!("{scenario}: {:?}\n{stdout}\n{stderr}", out.status));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n---\n"));
}

/// `kill -PROF <this process>`, as a user would type it; returns once the signal has
/// landed: no longer pending for the process or any of its threads (a loaded machine may
/// take a while to run the thread it went to), and a moment more for its handler to end.
fn kill_prof() {
    let status = Command::new("kill")
        .args(["-PROF", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sigprof_pending() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGPROF still pending after 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// Whether a SIGPROF waits for delivery: the process's shared pending set (`ShdPnd`) or
/// a thread's own (`SigPnd`), from `/proc/self/task/*/status`.
fn sigprof_pending() -> bool {
    let bit = 1u64 << (libc::SIGPROF - 1);
    let has = |status: &str, key: &str| {
        status
            .lines()
            .filter_map(|l| l.strip_prefix(key))
            .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
            .any(|mask| mask & bit != 0)
    };
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .any(|st| has(&st, "ShdPnd:") || has(&st, "SigPnd:"))
}

/// Waits until the application's handler has run `n` times in all (it runs on the
/// thread the signal went to, which a loaded machine may schedule late).
fn app_signals_reach(n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while APP_SIGNALS.load(Ordering::Relaxed) < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

static APP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn app_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    APP_SIGNALS.fetch_add(1, Ordering::Relaxed);
}

fn install_app_handler() {
    // SAFETY: a plain SA_SIGINFO handler that only bumps an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = app_handler as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()), 0);
    }
}

#[inline(never)]
fn burn(n: u64) -> u64 {
    let mut x = std::hint::black_box(1u64);
    for i in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
    }
    x
}

/// A 1 s profile over HTTP while a thread burns; returns the folded text.
fn profile(rt: &tokio::runtime::Runtime, router: axum::Router) -> String {
    let on = Arc::new(AtomicBool::new(true));
    let burner = {
        let on = on.clone();
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                std::hint::black_box(burn(1_000_000));
            }
        })
    };
    let text = rt.block_on(async move {
        let addr = testkit::serve(router).await;
        let r = testkit::get(&format!(
            "http://{addr}/debug/pprof/profile?seconds=1&format=folded"
        ))
        .await;
        assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
        r.text()
    });
    on.store(false, Ordering::Relaxed);
    burner.join().unwrap();
    assert!(
        text.contains("burn"),
        "the profile lacks the burner:\n{text}"
    );
    text
}

fn run(scenario: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match scenario {
        "control" => kill_prof(),
        "before_any_profile" => {
            let _router: axum::Router = diag::router(diag::Config::default());
            kill_prof();
        }
        "after_a_profile" => {
            profile(&rt, diag::router(diag::Config::default()));
            kill_prof();
            kill_prof();
        }
        "app_handler_first" => {
            install_app_handler();
            let router = diag::router(diag::Config::default());
            kill_prof();
            app_signals_reach(1);
            assert_eq!(
                APP_SIGNALS.load(Ordering::Relaxed),
                1,
                "the app's handler ran"
            );
            profile(&rt, router);
            // diag's own timer signals are not passed to the application.
            assert_eq!(APP_SIGNALS.load(Ordering::Relaxed), 1);
            kill_prof();
            app_signals_reach(2);
            assert_eq!(APP_SIGNALS.load(Ordering::Relaxed), 2);
        }
        "app_handler_after_diag" => {
            let router = diag::router(diag::Config::default());
            // The application replaces diag's handler; the next profile puts diag's back
            // and passes the application's signals on.
            install_app_handler();
            kill_prof();
            app_signals_reach(1);
            assert_eq!(APP_SIGNALS.load(Ordering::Relaxed), 1);
            profile(&rt, router);
            kill_prof();
            app_signals_reach(2);
            assert_eq!(
                APP_SIGNALS.load(Ordering::Relaxed),
                2,
                "the app's handler ran"
            );
        }
        other => panic!("unknown scenario {other}"),
    }
}
