//! The HTTP side of task dumps: `/goroutine` and `/tasks`, their guards (one dump at a
//! time, a minimum interval between dumps with the last one served again meanwhile, a
//! check for stuck workers, a timeout) and their formats (Go's goroutine profile as
//! profile.proto, its `debug=1` grouped text, its `debug=2` per-task text).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use super::dump::{self, Frame, Silence, TaskDump, Wait};
use super::registry::{MAX_TRACED_TASKS, Outcome};
use crate::error::ApiError;
use crate::maps::ProcMapping;
use crate::params::Params;
use crate::proto::{self, ProfileBuilder};
use crate::state::Diag;
use crate::util::{unix_nanos, utc};

/// How long a dump may take unless `timeout` says otherwise.
pub(crate) const DEFAULT_TIMEOUT_S: u64 = 5;
/// The longest `timeout` accepted.
pub(crate) const MAX_TIMEOUT_S: u64 = 60;
/// How long a worker must stay in one poll, while diag watches, to count as stuck. Long
/// enough for tokio's batched metrics to show a busy worker's progress on a loaded machine
/// (at 100 ms, a scraper's dump was refused under load: see docs/internals.md).
const STUCK_WINDOW: Duration = Duration::from_millis(500);
/// How often the poll counts and the threads' states are read within the window.
const STUCK_SAMPLE: Duration = Duration::from_millis(20);

static LAST: Mutex<Option<Arc<TaskDump>>> = Mutex::new(None);
/// Held by whatever wakes traced futures for reports (a dump, a wall-time profile): the
/// registry collects for one of them at a time.
static IN_FLIGHT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// What holds [`IN_FLIGHT`], for the refusal's message.
static HOLDER: Mutex<String> = Mutex::new(String::new());

/// The right to wake traced futures for reports, held by one dump or wall-time profile at
/// a time; `Send`, so a sampling thread can own it.
#[derive(Debug)]
pub(crate) struct DumpGuard {
    _lock: tokio::sync::MutexGuard<'static, ()>,
}

impl DumpGuard {
    /// Takes the guard for `what` ("a wall-time profile until 10:00:05 UTC"), or a 503
    /// that says what holds it.
    pub(crate) fn take(what: String) -> Result<DumpGuard, ApiError> {
        let lock = IN_FLIGHT.try_lock().map_err(|_| {
            let holder = HOLDER.lock().unwrap_or_else(|e| e.into_inner()).clone();
            ApiError::Unavailable {
                message: format!(
                    "a task dump is already in progress (one at a time, with wall-time \
                     profiles too): {holder}; retry in a moment"
                ),
                retry_after: Some(Duration::from_secs(1)),
            }
        })?;
        *HOLDER.lock().unwrap_or_else(|e| e.into_inner()) = what;
        Ok(DumpGuard { _lock: lock })
    }
}

/// `GET /goroutine?debug=0|1|2&timeout=S&force=1`.
pub(crate) async fn goroutine(State(d): State<Diag>, RawQuery(q): RawQuery) -> Response {
    respond(d, Params::parse(q.as_deref()), "0").await
}

/// `GET /tasks`: the readable alias, `debug=1` unless told otherwise.
pub(crate) async fn tasks(State(d): State<Diag>, RawQuery(q): RawQuery) -> Response {
    respond(d, Params::parse(q.as_deref()), "1").await
}

async fn respond(d: Diag, params: Params, default_debug: &'static str) -> Response {
    match run(&d, &params, default_debug).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(d: &Diag, params: &Params, default_debug: &'static str) -> Result<Response, ApiError> {
    let debug = params.choice("debug", default_debug, &["0", "1", "2"])?;
    let timeout = params.int_in("timeout", DEFAULT_TIMEOUT_S, 1, MAX_TIMEOUT_S)?;
    let force = params.choice("force", "0", &["0", "1"])? == "1";
    available().map_err(ApiError::NotImplemented)?;
    let min_interval = d.cfg().min_dump_interval;
    if let Some(last) = recent(min_interval) {
        return Ok(render(&last, debug, min_interval, false));
    }
    let _flight = DumpGuard::take("a task dump".to_owned())?;
    // Another request may have dumped while this one waited for the lock.
    if let Some(last) = recent(min_interval) {
        return Ok(render(&last, debug, min_interval, false));
    }
    let _permit = d.heavy()?;
    let current = tokio::runtime::Handle::current();
    let app = d.cfg().app_runtime.clone();
    // Mounted in the application (no runtime of its own), diag runs on the app's workers,
    // whose timer a blocked worker can hold up: wait on a blocking thread then.
    let wait = match &app {
        Some(app) if app.id() != current.id() => Wait::Timer,
        _ => Wait::BlockingThread,
    };
    if !force {
        if let Some(stuck) = stuck_workers(app.as_ref().unwrap_or(&current)).await {
            return Err(ApiError::Unavailable {
                message: format!(
                    "not dumping: {stuck}. A task inside a poll that does not return (a \
                     blocking lock, sleep, file or network I/O, a long computation) cannot \
                     report where it is, so the dump would wait its whole timeout for it. \
                     Look at a CPU profile to see what the worker runs; add force=1 to dump \
                     anyway (the tasks that do not report are listed with how long they have \
                     been in their poll)"
                ),
                retry_after: Some(Duration::from_secs(1)),
            });
        }
    }
    let raw = dump::collect(Duration::from_secs(timeout), wait).await;
    // Resolving addresses reads debug info: off the async workers.
    let dump = tokio::task::spawn_blocking(move || dump::symbolize(raw))
        .await
        .map_err(|e| ApiError::Internal(format!("resolving the task dump failed: {e}")))?;
    let dump = Arc::new(dump);
    *LAST.lock().unwrap_or_else(|e| e.into_inner()) = Some(dump.clone());
    Ok(render(&dump, debug, min_interval, true))
}

/// Whether this build can dump tasks, or how to make it.
pub(crate) fn available() -> Result<(), String> {
    if cfg!(all(
        tokio_unstable,
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        Ok(())
    } else {
        Err(NOT_BUILT.to_owned())
    }
}

pub(crate) const NOT_BUILT: &str = "this build has no task dumps: they need diag's `taskdump` feature \
     (which turns on tokio's \"taskdump\" feature), RUSTFLAGS=\"--cfg tokio_unstable\" (set \
     in .cargo/config.toml), and Linux on x86_64 or aarch64";

fn recent(min_interval: Duration) -> Option<Arc<TaskDump>> {
    let last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    last.as_ref()
        .filter(|l| l.at.elapsed() < min_interval)
        .cloned()
}

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
async fn stuck_workers(handle: &tokio::runtime::Handle) -> Option<String> {
    #[cfg(all(tokio_unstable, target_has_atomic = "64", target_os = "linux"))]
    {
        let m = handle.metrics();
        tokio::task::spawn_blocking(move || {
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

/// Stacks grouped: each distinct stack with its frames and how many tasks wait there.
/// Each task counts once, so the counts add up to the tasks, as Go's goroutine counts
/// do: a task awaiting several leaf futures at once (`select!`, `join!`) is counted at
/// its deepest stack; `debug=2` shows all of them.
fn grouped(dump: &TaskDump) -> Vec<(usize, &[Frame])> {
    let mut groups: BTreeMap<Vec<u64>, (usize, &[Frame])> = BTreeMap::new();
    for t in &dump.tasks {
        let s: &[Frame] = t.stacks.iter().max_by_key(|s| s.len()).map_or(&[], |s| s);
        let key: Vec<u64> = s.iter().map(|f| f.ip).collect();
        groups.entry(key).or_insert((0, s)).0 += 1;
    }
    let mut out: Vec<_> = groups.into_values().collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.0));
    out
}

fn render(dump: &TaskDump, debug: &str, min_interval: Duration, fresh: bool) -> Response {
    let age = dump.at.elapsed();
    let mut header_line = format!(
        "tokio task dump: {} tasks, taken {} ({} s ago; dumps at most every {} s), took {} ms",
        dump.tasks.len(),
        utc(dump.taken),
        age.as_secs(),
        min_interval.as_secs(),
        dump.took.as_millis()
    );
    if !dump.missing.is_empty() {
        let _ = write!(
            header_line,
            "; {} traced tasks did not report within timeout={} s (listed at the end)",
            dump.missing.len(),
            dump.timeout.as_secs()
        );
    }
    let mut res = match debug {
        "0" => match to_proto(dump, &header_line, crate::maps::current()) {
            Ok(body) => (
                [
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"goroutine\"",
                    ),
                ],
                body,
            )
                .into_response(),
            Err(e) => {
                return ApiError::Internal(format!("encoding the task dump failed: {e}"))
                    .into_response();
            }
        },
        "1" => text(to_grouped_text(dump, &header_line)),
        _ => text(to_per_task_text(dump, &header_line)),
    };
    let h = res.headers_mut();
    h.insert("x-diag-dump-age-seconds", age.as_secs().into());
    h.insert("x-diag-tasks", dump.tasks.len().into());
    h.insert("x-diag-tasks-missing", dump.missing.len().into());
    if !fresh {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "the last dump, {} s old (min interval {} s)",
            age.as_secs(),
            min_interval.as_secs()
        )) {
            h.insert("x-diag-dump-reused", v);
        }
    }
    res
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// The dump as a gzipped goroutine profile, its locations attributed to `mappings`.
pub(crate) fn to_proto(
    dump: &TaskDump,
    comment: &str,
    mappings: Vec<ProcMapping>,
) -> std::io::Result<Vec<u8>> {
    let mut b = ProfileBuilder::new(
        &[("goroutine", "count")],
        ("goroutine", "count"),
        1,
        mappings,
    );
    b.time(unix_nanos(dump.taken), dump.took.as_nanos() as i64);
    b.comment(comment);
    for (count, frames) in grouped(dump) {
        if frames.is_empty() {
            continue;
        }
        let locations = frames.iter().map(|f| b.location(f.ip, &f.lines)).collect();
        b.sample(locations, vec![count as i64], &[]);
    }
    proto::gzip(&b.encode())
}

fn push_frame(out: &mut String, f: &Frame) {
    // Inlined calls first (innermost), as Go lists them.
    for l in f.lines.iter() {
        out.push_str(&format!(
            "#\t{:#x}\t{}\t{}:{}\n",
            f.ip, l.function, l.file, l.line
        ));
    }
    if f.lines.is_empty() {
        out.push_str(&format!("#\t{:#x}\n", f.ip));
    }
}

/// Go's `debug=1`: stacks grouped, most common first, `COUNT @ ADDRS` then the frames.
pub(crate) fn to_grouped_text(dump: &TaskDump, header_line: &str) -> String {
    let groups = grouped(dump);
    let mut out = format!(
        "{header_line}\ngoroutine profile: total {}\n",
        dump.tasks.len()
    );
    for (count, frames) in groups {
        out.push('\n');
        out.push_str(&count.to_string());
        out.push_str(" @");
        for f in frames {
            out.push_str(&format!(" {:#x}", f.ip));
        }
        out.push('\n');
        for f in frames {
            push_frame(&mut out, f);
        }
    }
    push_missing(&mut out, dump);
    out
}

/// The traced tasks that did not report, and the futures left untraced, as `#` lines.
fn push_missing(out: &mut String, dump: &TaskDump) {
    if !dump.missing.is_empty() {
        let _ = writeln!(
            out,
            "\n# {} traced tasks did not report within timeout={} s:",
            dump.missing.len(),
            dump.timeout.as_secs()
        );
        for m in &dump.missing {
            let _ = writeln!(
                out,
                "#\ttask {} {:?} (age {}, {}): {}",
                m.id,
                &*m.name,
                secs(m.age),
                m.location,
                match m.why {
                    Silence::InPoll(d) => format!(
                        "inside one poll for {} (blocking, or computing without yielding)",
                        secs(d)
                    ),
                    Silence::NotPolled(d) => format!(
                        "woken but not polled; last poll ended {} ago (its worker is busy or \
                         blocked, or the runtime is stopping)",
                        secs(d)
                    ),
                }
            );
        }
    }
    if dump.untraced > 0 {
        let _ = writeln!(
            out,
            "\n# {} futures ran untraced since the start: the registry holds at most {} \
             at once",
            dump.untraced, MAX_TRACED_TASKS
        );
    }
}

/// A duration as seconds with two decimals, `1.25 s`.
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Go's `debug=2`: every task on its own, with its id, name, state and age, as Go's
/// `goroutine 7 [chan receive, 2 minutes]:`.
pub(crate) fn to_per_task_text(dump: &TaskDump, header_line: &str) -> String {
    let mut out = format!("{header_line}\n");
    for t in &dump.tasks {
        let state = match t.outcome {
            Outcome::Waiting => format!("waiting {}", secs(t.waited)),
            Outcome::Completed => "completed during the dump".to_owned(),
            Outcome::Dropped => "dropped during the dump".to_owned(),
        };
        let _ = write!(
            out,
            "\ntask {} {:?} [{state}, age {}",
            t.id,
            &*t.name,
            secs(t.age)
        );
        if let Some(id) = &t.tokio_id {
            let _ = write!(out, ", tokio task {id}");
        }
        let _ = writeln!(out, "] {}:", t.location);
        if t.stacks.is_empty() && t.outcome == Outcome::Waiting {
            out.push_str("\t(no trace: the task was not waiting on a tokio leaf future)\n");
        }
        for (i, s) in t.stacks.iter().enumerate() {
            if t.stacks.len() > 1 {
                let _ = writeln!(out, "  waiting on leaf future {}:", i + 1);
            }
            for f in s {
                for l in f.lines.iter() {
                    let _ = writeln!(out, "{}\n\t{}:{}", l.function, l.file, l.line);
                }
            }
        }
    }
    push_missing(&mut out, dump);
    out
}
