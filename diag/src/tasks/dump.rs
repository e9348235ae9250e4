//! Taking a dump: wake every traced future, wait (bounded) for their reports, symbolize.
//! No HTTP here; the handler in `http.rs` maps the result to an answer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::registry::{self, Entry, Outcome};
use super::traced;
use crate::symbols;

/// One frame of a task's stack: its return address and source lines (innermost first).
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) ip: u64,
    pub(crate) lines: symbols::Resolved,
}

/// One traced future that reported.
#[derive(Debug)]
pub(crate) struct TaskTrace {
    pub(crate) id: u64,
    pub(crate) tokio_id: Option<String>,
    pub(crate) name: Box<str>,
    pub(crate) location: String,
    pub(crate) age: Duration,
    /// How long it had waited since its previous poll when the dump woke it.
    pub(crate) waited: Duration,
    /// One stack per tokio leaf future it awaits, leaf first.
    pub(crate) stacks: Vec<Vec<Frame>>,
    pub(crate) outcome: Outcome,
}

/// Why a traced future did not report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Silence {
    /// Inside one poll for this long when the dump ended: blocking, or computing without
    /// yielding.
    InPoll(Duration),
    /// Woken, but not polled since its last poll ended this long ago: its worker is busy
    /// (or blocked), or the runtime is shutting down.
    NotPolled(Duration),
}

/// A traced future that did not report within the timeout.
#[derive(Debug)]
pub(crate) struct Missing {
    pub(crate) id: u64,
    pub(crate) name: Box<str>,
    pub(crate) location: String,
    pub(crate) age: Duration,
    pub(crate) why: Silence,
}

/// A dump, symbolized.
#[derive(Debug)]
pub(crate) struct TaskDump {
    pub(crate) taken: SystemTime,
    pub(crate) at: Instant,
    pub(crate) took: Duration,
    pub(crate) timeout: Duration,
    pub(crate) tasks: Vec<TaskTrace>,
    pub(crate) missing: Vec<Missing>,
    /// Futures that ran untraced since the start because the registry was full.
    pub(crate) untraced: u64,
}

/// How the dump waits for the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// On the current runtime's timer: right when the dump runs on a runtime of its own
    /// (the sidecar's), whose timer no application worker can hold up.
    Timer,
    /// On a thread of diag's own (`offload::run`, not the runtime's blocking pool, which
    /// a service in trouble may have filled), on a condition variable with a timeout:
    /// when the dump runs on the application's own runtime, whose timer a blocked worker
    /// can delay. The thread returns as soon as the dump ends, is abandoned, or times out.
    OffloadThread,
}

/// The reports of one dump, before symbolization.
#[derive(Debug)]
pub(crate) struct Raw {
    taken: SystemTime,
    at: Instant,
    took: Duration,
    timeout: Duration,
    expected: Vec<Arc<Entry>>,
    reports: Vec<registry::Report>,
    ended: u64,
}

/// Wakes every traced future (but the one running this dump) and waits until each has
/// reported or `timeout` passed. If the caller drops this future, the dump is abandoned:
/// late reports are discarded and nothing it started runs on.
pub(crate) async fn collect(timeout: Duration, wait: Wait) -> Raw {
    let taken = SystemTime::now();
    let at = Instant::now();
    let open = registry::open(traced::current());
    if !open.complete() {
        match wait {
            Wait::Timer => {
                let _ = tokio::time::timeout(timeout, open.all_reported()).await;
            }
            Wait::OffloadThread => {
                let generation = open.generation();
                let waited = crate::offload::run(move || {
                    registry::Open::wait_blocking(generation, timeout);
                })
                .await;
                if waited.is_err() {
                    // No thread to wait on: the timer, which a blocked worker may delay,
                    // rather than no wait at all.
                    let _ = tokio::time::timeout(timeout, open.all_reported()).await;
                }
            }
        }
    }
    let took = at.elapsed();
    let (expected, reports) = open.close();
    Raw {
        taken,
        at,
        took,
        timeout,
        expected,
        reports,
        ended: registry::coarse_now(),
    }
}

/// The name of the function in tokio that calls each leaf's callback; the frames up to
/// and including it are the dump's own machinery.
const TRACE_LEAF: &str = "tokio::runtime::task::trace::trace_leaf";

/// Resolves the addresses (through diag's symbolizer) and trims each stack to what lies
/// between the leaf future and the traced future's poll. Slow (debug info): call it off the
/// async workers (`offload::run`).
pub(crate) fn symbolize(raw: Raw) -> TaskDump {
    let ips = raw
        .reports
        .iter()
        .flat_map(|r| r.stacks.iter().flatten().copied());
    let resolved = symbols::resolve_all(ips);
    let frame = |ip: usize| Frame {
        ip: ip as u64,
        lines: resolved.get(&ip).cloned().unwrap_or_default(),
    };
    let ended = raw.ended;
    let since = |t: u64| Duration::from_nanos(ended.saturating_sub(t));
    let reported: HashSet<u64> = raw.reports.iter().map(|r| r.entry.id).collect();
    let tasks = raw
        .reports
        .into_iter()
        .map(|r| TaskTrace {
            id: r.entry.id,
            tokio_id: r.tokio_id,
            name: r.entry.name.clone(),
            location: location(&r.entry),
            age: since(r.entry.started),
            waited: Duration::from_nanos(r.waited_ns),
            stacks: r
                .stacks
                .iter()
                .map(|s| trim(s.iter().map(|ip| frame(*ip)).collect()))
                .collect(),
            outcome: r.outcome,
        })
        .collect();
    let missing = raw
        .expected
        .iter()
        .filter(|e| !reported.contains(&e.id))
        .map(|e| {
            let in_poll = e.poll_started.load(std::sync::atomic::Ordering::Relaxed);
            let last = e.last_polled.load(std::sync::atomic::Ordering::Relaxed);
            Missing {
                id: e.id,
                name: e.name.clone(),
                location: location(e),
                age: since(e.started),
                why: if in_poll != 0 {
                    Silence::InPoll(since(in_poll))
                } else {
                    Silence::NotPolled(since(if last == 0 { e.started } else { last }))
                },
            }
        })
        .collect();
    TaskDump {
        taken: raw.taken,
        at: raw.at,
        took: raw.took,
        timeout: raw.timeout,
        tasks,
        missing,
        untraced: registry::untraced(),
    }
}

/// Where the future was wrapped, as `from FILE:LINE`, or what wrapped it.
fn location(e: &Entry) -> String {
    match e.location {
        Some(l) => format!("from {}:{}", l.file(), l.line()),
        None => "a request, traced by TracedLayer".to_owned(),
    }
}

/// Drops the dump's own machinery from a stack: the frames from the walk's start up to
/// tokio's `trace_leaf` (the last one naming it: its closures come first), leaving the leaf
/// future's frame first; and at the other end the frames that are only diag's wrapper and
/// tokio's `trace_with` (a frame where the task's own code was inlined is kept). A stack
/// without `trace_leaf` (a symbolizer that cannot name it) keeps its start.
pub(crate) fn trim(mut stack: Vec<Frame>) -> Vec<Frame> {
    let leaf = stack
        .iter()
        .rposition(|f| f.lines.iter().any(|l| l.function.contains(TRACE_LEAF)));
    if let Some(i) = leaf {
        stack.drain(..=i);
    }
    while stack
        .last()
        .is_some_and(|f| !f.lines.is_empty() && f.lines.iter().all(|l| is_machinery(&l.function)))
    {
        stack.pop();
    }
    stack
}

/// diag's wrapper and tokio's tracing entry point, as the symbolizer names them.
fn is_machinery(function: &str) -> bool {
    const OURS: [&str; 4] = [
        "diag::tasks::",
        "<diag::tasks::",
        "tokio::runtime::task::trace::trace_with",
        "<tokio::runtime::task::trace::",
    ];
    OURS.iter().any(|p| function.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Line;

    fn frame(ip: u64, function: &str) -> Frame {
        Frame {
            ip,
            lines: Arc::from(vec![Line {
                function: function.to_owned(),
                file: String::new(),
                line: 0,
            }]),
        }
    }

    #[test]
    fn stacks_start_at_the_leaf() {
        let stack = vec![
            frame(1, "diag::tasks::walk::walk"),
            frame(2, "tokio::runtime::task::trace::trace_leaf::{{closure}}"),
            frame(3, "tokio::runtime::task::trace::Context::try_with_current"),
            frame(4, "tokio::runtime::task::trace::trace_leaf"),
            frame(
                5,
                "<tokio::time::sleep::Sleep as core::future::future::Future>::poll",
            ),
            frame(6, "app::handler::{{closure}}"),
            frame(7, "diag::tasks::traced::traced_poll::{{closure}}"),
            frame(8, "tokio::runtime::task::trace::trace_with"),
            frame(
                9,
                "<diag::tasks::traced::Traced<F> as core::future::future::Future>::poll",
            ),
        ];
        let trimmed = trim(stack);
        assert_eq!(trimmed.iter().map(|f| f.ip).collect::<Vec<_>>(), [5, 6]);
        let unnamed = vec![frame(1, "0x1"), frame(2, "0x2")];
        assert_eq!(trim(unnamed).len(), 2);
    }
}
