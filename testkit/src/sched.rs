//! What the kernel's scheduler counts for each thread (`/proc/PID/task/TID/schedstat`:
//! time on a CPU, time runnable but waiting for one), and the calling thread's own CPU
//! clock. Tests size their work in CPU time with these, so that a loaded machine that
//! gives a thread little of each second slows the test instead of failing it.

use std::time::Duration;

/// One thread of a process as the scheduler counts it.
#[derive(Debug, Clone)]
pub struct ThreadTimes {
    /// The thread's id.
    pub tid: u32,
    /// Its name (`comm`, at most 15 bytes).
    pub name: String,
    /// CPU time it has used.
    pub on_cpu: Duration,
    /// Time it has spent runnable, waiting for a CPU (its run delay).
    pub waited: Duration,
}

/// Every thread of process `pid` that could be read (one that ends meanwhile is left
/// out); empty when the process is gone.
pub fn threads(pid: u32) -> Vec<ThreadTimes> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            let mut fields = stat.split_whitespace().map(|v| v.parse::<u64>().ok());
            let on_cpu = fields.next()??;
            let waited = fields.next()??;
            Some(ThreadTimes {
                tid,
                name: name.trim_end().to_owned(),
                on_cpu: Duration::from_nanos(on_cpu),
                waited: Duration::from_nanos(waited),
            })
        })
        .collect()
}

/// The threads of process `pid` named `name`.
pub fn named(pid: u32, name: &str) -> Vec<ThreadTimes> {
    threads(pid)
        .into_iter()
        .filter(|t| t.name == name)
        .collect()
}

/// The CPU time the threads of process `pid` named `name` have used, summed.
pub fn named_cpu(pid: u32, name: &str) -> Duration {
    named(pid, name).iter().map(|t| t.on_cpu).sum()
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`): preemption by other
/// threads and processes is not in it.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
