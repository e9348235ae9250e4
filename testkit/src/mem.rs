//! Memory of a process as the budget counts it: anonymous plus shared (memfd) pages,
//! sampled while something runs rather than read once afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// `RssAnon + RssShmem` of process `pid`, in MiB (what a cgroup's memory limit counts
/// besides the page cache).
pub fn anon_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kib("RssAnon:") + kib("RssShmem:")) as f64 / 1024.0
}

/// The threads of process `pid` (`/proc/PID/task`).
pub fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Samples [`anon_mib`] of a process every `every` on a thread of its own.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<f64>>>,
}

impl Sampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                seen.push(anon_mib(pid));
                std::thread::sleep(every);
            }
            seen.push(anon_mib(pid));
            seen
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns every reading, in order.
    pub fn finish(mut self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The largest of `readings` (0 when empty).
pub fn peak(readings: &[f64]) -> f64 {
    readings.iter().copied().fold(0.0, f64::max)
}

/// The resident memory of process `pid` in MiB (`VmRSS`).
pub fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        / 1024
}
