//! Running code under a label set: the thread's label id set around each poll (or call)
//! and restored by a guard.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{Ordering, compiler_fence};
use std::task::{Context, Poll};

use super::LabelSet;
use super::table::{intern, merge};
use crate::cpu::engine;

/// Sets the thread's label id until dropped, then restores the one before.
pub(super) struct Enter {
    previous: u32,
}

impl Enter {
    #[inline]
    pub(super) fn new(id: u32) -> Self {
        // The fences keep the compiler from moving the labelled code's work across the
        // set and restore (without them an inlined loop may end up outside both).
        compiler_fence(Ordering::SeqCst);
        let previous = engine::set_label_id(id);
        compiler_fence(Ordering::SeqCst);
        Self { previous }
    }
}

impl Drop for Enter {
    #[inline]
    fn drop(&mut self) {
        compiler_fence(Ordering::SeqCst);
        engine::set_label_id(self.previous);
        compiler_fence(Ordering::SeqCst);
    }
}

/// The id to run under inside a scope of `own` when the thread carries `outer`,
/// remembered for the last `outer` seen.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ids {
    own: u32,
    outer: u32,
    merged: u32,
}

impl Ids {
    pub(super) fn new(own: u32) -> Self {
        Self {
            own,
            outer: 0,
            merged: own,
        }
    }

    #[inline]
    pub(super) fn for_outer(&mut self, outer: u32) -> u32 {
        if outer != self.outer {
            self.merged = merge(outer, self.own);
            self.outer = outer;
        }
        self.merged
    }

    #[inline]
    pub(super) fn enter(&mut self) -> Enter {
        let id = self.for_outer(engine::label_id());
        Enter::new(id)
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll runs under a label set (see [`scope`]).
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Labelled<F> {
        #[pin]
        inner: F,
        ids: Ids,
    }
}

impl<F: Future> Future for Labelled<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _enter = this.ids.enter();
        this.inner.poll(cx)
    }
}

/// Runs `fut` with `labels` added to those of whoever polls it (its values win on a
/// shared key): every CPU sample taken while it is polled carries them, on whichever
/// thread polls it.
pub fn scope<F: Future>(labels: LabelSet, fut: F) -> Labelled<F> {
    Labelled {
        inner: fut,
        ids: Ids::new(intern(labels)),
    }
}

/// `fut` under the labels this thread runs under now: what a task spawned from here
/// needs to inherit them (tokio's tasks inherit nothing).
pub fn in_current_labels<F: Future>(fut: F) -> Labelled<F> {
    Labelled {
        inner: fut,
        ids: Ids::new(engine::label_id()),
    }
}

/// `tokio::spawn` of `fut` under the current labels (as Go's child goroutines inherit
/// their parent's).
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(in_current_labels(fut))
}

/// `tokio::task::spawn_blocking` of `f` under the current labels.
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(bind(f))
}

/// `f`, bound to the labels current now: wherever it later runs (a blocking pool, a
/// thread of its own, `tokio::task::Builder::spawn_blocking`), it runs under them.
pub fn bind<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let id = engine::label_id();
    move || {
        let _enter = Enter::new(id);
        f()
    }
}

/// Runs `f` with `labels` added to the current ones, for synchronous code.
pub fn with<R>(labels: LabelSet, f: impl FnOnce() -> R) -> R {
    let own = intern(labels);
    let id = merge(engine::label_id(), own);
    let _enter = Enter::new(id);
    f()
}

/// Runs `f` under interned id `id` exactly (benchmarks and the route layer).
#[doc(hidden)]
#[inline]
pub fn with_id<R>(id: u32, f: impl FnOnce() -> R) -> R {
    let _enter = Enter::new(id);
    f()
}

/// Interns `labels` and returns its id, for [`with_id`] (benchmarks).
#[doc(hidden)]
pub fn intern_for_bench(labels: LabelSet) -> u32 {
    intern(labels)
}

/// Extension methods for futures: `fut.with_labels(set)`, `fut.in_current_labels()`.
pub trait LabelsExt: Future + Sized {
    /// [`scope`]`(labels, self)`.
    fn with_labels(self, labels: LabelSet) -> Labelled<Self> {
        scope(labels, self)
    }

    /// [`in_current_labels`]`(self)`.
    fn in_current_labels(self) -> Labelled<Self> {
        in_current_labels(self)
    }
}

impl<F: Future> LabelsExt for F {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::current;

    #[test]
    fn nested_scopes_add_and_override() {
        let a = LabelSet::new([("a", "1"), ("b", "outer")]);
        let b = LabelSet::new([("b", "inner"), ("c", "3")]);
        let got = with(a, || with(b, current));
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", "inner"), ("c", "3")]
        );
        assert!(current().is_empty());
    }

    #[test]
    fn a_panicking_poll_restores_the_id() {
        let r = std::panic::catch_unwind(|| {
            with(LabelSet::new([("p", "1")]), || panic!("in scope"));
        });
        assert!(r.is_err());
        assert_eq!(engine::label_id(), 0);
    }
}
