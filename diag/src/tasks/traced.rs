//! [`Traced`]: a future that reports its own await stack to a task dump.

use std::cell::Cell;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use super::registry::{self, Entry, Outcome, Report};
use super::walk;

thread_local! {
    /// The id of the traced future this thread is polling (0: none), so that a dump taken
    /// from inside a traced request does not wait for itself.
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

/// The id of the traced future being polled on this thread, 0 when none.
pub(crate) fn current() -> u64 {
    CURRENT.with(Cell::get)
}

pin_project_lite::pin_project! {
    /// A future that `/debug/pprof/goroutine` and `/tasks` can see: while a dump runs, it
    /// is woken, traces its next poll with tokio's `trace_with`, and reports where it
    /// waits (one stack per tokio leaf future it awaits: a timer, a socket, a channel, a
    /// lock, a `JoinHandle`).
    ///
    /// Between dumps it costs a check of one atomic, a waker registration and two reads
    /// of the coarse clock per poll, and a registry insert and remove per future. Wrap
    /// your long-lived tasks with [`spawn`](super::spawn) or `Traced::new`, and each
    /// request's handler with [`TracedLayer`](super::TracedLayer).
    ///
    /// ```
    /// # async fn run() {
    /// let worker = tokio::spawn(diag::tasks::Traced::new("queue consumer", async {
    ///     tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    /// }));
    /// # let _ = worker.await;
    /// # }
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    #[derive(Debug)]
    pub struct Traced<F> {
        #[pin]
        inner: F,
        reg: Option<Registration>,
    }
}

/// A registered future's place in the registry, given back when it is dropped.
#[derive(Debug)]
struct Registration {
    slot: usize,
    entry: Arc<Entry>,
    /// The generation of the last dump this future reported to.
    reported: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let wanted = self.entry.want.load(Ordering::Acquire);
        if wanted != self.reported {
            // A dump is waiting for this future, which will never be polled again.
            registry::deposit(
                wanted,
                Report {
                    entry: self.entry.clone(),
                    tokio_id: None,
                    waited_ns: 0,
                    stacks: Vec::new(),
                    label: 0,
                    outcome: Outcome::Dropped,
                },
            );
        }
        registry::unregister(self.slot);
    }
}

impl<F> Traced<F> {
    /// Wraps `inner` under `name`; the caller's source location is recorded as where the
    /// task was spawned. When [`MAX_TRACED_TASKS`](super::MAX_TRACED_TASKS) futures are
    /// traced already, `inner` runs untraced (dumps count such futures).
    #[track_caller]
    pub fn new(name: impl Into<String>, inner: F) -> Self {
        Self::at(
            name.into().into_boxed_str(),
            Some(Location::caller()),
            inner,
        )
    }

    pub(crate) fn at(
        name: Box<str>,
        location: Option<&'static Location<'static>>,
        inner: F,
    ) -> Self {
        let reg = registry::register(name, location).map(|(slot, entry)| Registration {
            slot,
            entry,
            reported: 0,
        });
        Self { inner, reg }
    }

    /// Whether this future is in the registry (false when the registry was full).
    pub fn is_traced(&self) -> bool {
        self.reg.is_some()
    }
}

/// Restores [`CURRENT`] and marks the poll over, even when the inner poll panics.
struct InPoll<'a> {
    entry: &'a Entry,
    outer: u64,
}

impl Drop for InPoll<'_> {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.outer));
        self.entry.poll_started.store(0, Ordering::Relaxed);
        self.entry
            .last_polled
            .store(registry::coarse_now(), Ordering::Relaxed);
    }
}

impl<F: Future> Future for Traced<F> {
    type Output = F::Output;

    // Not inlined: its frame is where the frame walk of a traced poll stops.
    #[inline(never)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let Some(reg) = this.reg.as_mut() else {
            return this.inner.poll(cx);
        };
        let entry = &*reg.entry;
        entry.waker.register(cx.waker());
        let now = registry::coarse_now();
        entry.poll_started.store(now, Ordering::Relaxed);
        let _in_poll = InPoll {
            entry,
            outer: CURRENT.with(|c| c.replace(entry.id)),
        };
        let wanted = entry.want.load(Ordering::Acquire);
        if wanted == reg.reported {
            return this.inner.poll(cx);
        }
        reg.reported = wanted;
        let last = entry.last_polled.load(Ordering::Relaxed);
        let waited_ns = if last == 0 {
            now.saturating_sub(entry.started)
        } else {
            now.saturating_sub(last)
        };
        // The walk from each leaf stops at this function's own frame.
        let stop = walk::frame_pointer();
        let (result, stacks, label) = traced_poll(this.inner.as_mut(), cx, stop);
        let outcome = if result.is_ready() {
            Outcome::Completed
        } else {
            if !stacks.is_empty() {
                // tokio defers a wake for each leaf it cut short, but only on its own
                // scheduler: make sure the future is polled again for real elsewhere too.
                cx.waker().wake_by_ref();
            }
            Outcome::Waiting
        };
        registry::deposit(
            wanted,
            Report {
                entry: reg.entry.clone(),
                tokio_id: tokio::task::try_id().map(|id| id.to_string()),
                waited_ns,
                stacks,
                label,
                outcome,
            },
        );
        result
    }
}

/// Polls `inner` once in tokio's tracing mode: each tokio leaf future it reaches records
/// the stack from itself up to the frame `stop`, and returns `Pending` (tokio wakes the
/// task so that it is polled again normally). Other futures poll as usual: a `Ready`
/// here is a real completion. Also returns the label-set id (`diag::labels`) the last
/// leaf was reached under, 0 for none.
#[cfg(all(tokio_unstable, diag_engine))]
fn traced_poll<F: Future>(
    inner: Pin<&mut F>,
    cx: &mut Context<'_>,
    stop: usize,
) -> (Poll<F::Output>, Vec<Vec<usize>>, u32) {
    let mut stacks: Vec<Vec<usize>> = Vec::new();
    let mut label = 0;
    let result = tokio::runtime::dump::trace_with(
        || inner.poll(cx),
        |_meta| {
            let mut stack = Vec::with_capacity(32);
            walk::walk(stop, &mut stack);
            stacks.push(stack);
            label = current_label();
        },
    );
    (result, stacks, label)
}

/// The label-set id the thread runs under now (0 without the `cpu` feature's labels).
#[cfg(all(tokio_unstable, diag_engine))]
fn current_label() -> u32 {
    #[cfg(feature = "cpu")]
    {
        crate::cpu::engine::label_id()
    }
    #[cfg(not(feature = "cpu"))]
    {
        0
    }
}

/// Without tokio's tracing (no `tokio_unstable`, or a platform without task dumps): a
/// plain poll, no stacks.
#[cfg(not(all(tokio_unstable, diag_engine)))]
fn traced_poll<F: Future>(
    inner: Pin<&mut F>,
    cx: &mut Context<'_>,
    _stop: usize,
) -> (Poll<F::Output>, Vec<Vec<usize>>, u32) {
    (inner.poll(cx), Vec::new(), 0)
}

/// Spawns `future` on the current tokio runtime as a [`Traced`] task named `name`, so
/// that task dumps show where it waits. Like `tokio::spawn`, it panics outside a runtime.
///
/// ```
/// # async fn run() {
/// let handle = diag::tasks::spawn("cache refresher", async {
///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///     42
/// });
/// assert_eq!(handle.await.ok(), Some(42));
/// # }
/// ```
#[track_caller]
pub fn spawn<F>(name: impl Into<String>, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(Traced::new(name, future))
}
