//! Whether the runtime's async workers look stuck in one poll, read before a dump (a task
//! in such a poll cannot report, so the dump would wait its whole timeout).

use std::time::{Duration, Instant};

/// How long a worker must stay in one poll, while diag watches, to count as stuck. Long
/// enough for tokio's batched metrics to show a busy worker's progress on a loaded machine
/// (at 100 ms, a scraper's dump was refused under load: see docs/internals.md).
const STUCK_WINDOW: Duration = Duration::from_millis(500);
/// How often the poll counts and the threads' states are read within the window.
const STUCK_SAMPLE: Duration = Duration::from_millis(20);

/// Describes the async workers that look stuck in one poll, if any.
///
/// A worker is stuck when its poll count did not move over `STUCK_WINDOW` *and* as many
/// worker threads were out of the kernel's wait-for-work calls (futex or epoll) at every
/// reading. tokio's metrics alone cannot tell a parked worker from a blocked one: both
/// stop counting, and the counts are published in batches (on park, and every 61 polls),
/// so a busy, healthy worker on a loaded machine can look still for a while. The readings
/// stop early, usually after one, once every worker has moved or every thread waits. The
/// threads are tokio's first `num_workers` threads by id (the runtime starts its workers
/// before any blocking thread). A worker blocked on a lock also waits in futex and is not
/// seen here; the dump's timeout covers that case.
pub(crate) async fn stuck_workers(handle: &tokio::runtime::Handle) -> Option<String> {
    #[cfg(all(tokio_unstable, target_has_atomic = "64", target_os = "linux"))]
    {
        let m = handle.metrics();
        crate::offload::run(move || {
            let n = m.num_workers();
            let before: Vec<u64> = (0..n).map(|w| m.worker_poll_count(w)).collect();
            let mut moved = vec![false; n];
            let mut busy_always = n;
            let started = Instant::now();
            let still = loop {
                std::thread::sleep(STUCK_SAMPLE);
                for (w, moved) in moved.iter_mut().enumerate() {
                    *moved |= m.worker_poll_count(w) != before[w];
                }
                busy_always = busy_always.min(busy_worker_threads(n)?);
                let still = moved.iter().filter(|m| !**m).count();
                if still == 0 || busy_always == 0 || started.elapsed() >= STUCK_WINDOW {
                    break still;
                }
            };
            let stuck = still.min(busy_always);
            (stuck > 0).then(|| {
                format!(
                    "{stuck} of {n} async worker threads stayed in one poll for {} ms while \
                     diag watched (their poll counts did not move, and their threads are not \
                     waiting for work)",
                    STUCK_WINDOW.as_millis()
                )
            })
        })
        .await
        .ok()
        .flatten()
    }
    #[cfg(not(all(tokio_unstable, target_has_atomic = "64", target_os = "linux")))]
    {
        let _ = handle;
        None
    }
}

/// How many of the runtime's `workers` worker threads are not waiting for work in the
/// kernel; `None` when the threads cannot be found (renamed by the application) or read.
#[cfg(target_os = "linux")]
fn busy_worker_threads(workers: usize) -> Option<usize> {
    /// x86_64 system calls a parked worker waits in: futex, epoll_wait, epoll_pwait,
    /// epoll_pwait2.
    const IDLE: [&str; 4] = ["202", "232", "281", "441"];
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let mut tokio_threads: Vec<(u64, std::path::PathBuf)> = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = task.path();
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        // tokio names its threads `tokio-rt-worker` (older: `tokio-runtime-worker`); the
        // kernel keeps 15 bytes.
        if ["tokio-rt-worker", "tokio-runtime-w"].contains(&name.trim_end()) {
            let tid = task.file_name().to_str()?.parse().ok()?;
            tokio_threads.push((tid, dir));
        }
    }
    if tokio_threads.len() < workers {
        return None;
    }
    tokio_threads.sort();
    let mut busy = 0;
    for (_, dir) in tokio_threads.iter().take(workers) {
        let syscall = std::fs::read_to_string(dir.join("syscall")).ok()?;
        let nr = syscall.split_whitespace().next().unwrap_or("");
        if !IDLE.contains(&nr) {
            busy += 1;
        }
    }
    Some(busy)
}

/// A dump refused because workers look stuck (503 with `Retry-After: 1`, see
/// `tasks/http`): what [`stuck_workers`] saw.
#[derive(Debug)]
pub(crate) struct Stuck(pub(crate) String);

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not dumping: {}. A task inside a poll that does not return (a blocking lock, \
             sleep, file or network I/O, a long computation) cannot report where it is, so \
             the dump would wait its whole timeout for it. Look at a CPU profile to see what \
             the worker runs; add force=1 to dump anyway (the tasks that do not report are \
             listed with how long they have been in their poll)",
            self.0
        )
    }
}

impl std::error::Error for Stuck {}
