//! Labels on CPU samples, as Go's `pprof.Do(ctx, pprof.Labels(..))`: every CPU sample
//! taken while labelled code runs carries the labels, and `go tool pprof -tags`,
//! `-tagfocus` and `-tagroot` read them from the profile.
//!
//! How it works: a [`LabelSet`] is interned once, outside the signal handler, into a
//! bounded table that gives it a small integer id. Labelled code ([`scope`], [`with`],
//! [`spawn`], [`spawn_blocking`], [`RouteLabels`]) sets that id in a const-initialised
//! thread-local `AtomicU32` around each poll (restored by a `Drop` guard, so a poll that
//! panics restores it too); the `SIGPROF` handler reads that one integer into the sample.
//! No allocation, lock or reference count happens in the handler. (In an executable the
//! read is one `%fs`-relative load; in a `cdylib` it goes through `__tls_get_addr`,
//! which may allocate the first time after `dlopen`: label from executables.)
//!
//! Bounds: at most [`MAX_SETS`] distinct label sets per process. Ids are never freed,
//! so no sample or window can name an id that was reused; past the bound, new sets get
//! the one overflow set (`diag.labels=overflow`), counted by [`overflowed`]. A set holds
//! at most [`MAX_LABELS`] labels; see [`LabelSet::new`] for how bad input is treated.
//!
//! ```
//! # async fn demo() {
//! use diag::labels::{self, LabelSet};
//! let tenant = LabelSet::new([("tenant", "acme")]);
//! let n = labels::scope(tenant, async {
//!     // CPU samples taken while this future is polled carry tenant=acme,
//!     // and so do those of tasks spawned with labels::spawn from here.
//!     labels::spawn(async { 2 + 2 }).await.unwrap_or(0)
//! })
//! .await;
//! # let _ = n;
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering, compiler_fence};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use crate::cpu::engine;

mod route;

#[doc(hidden)]
pub use route::route_id_for_bench;
pub use route::{
    OTHER_METHOD, ROUTE_CACHE_MAX, RouteLabels, RouteLabelsBody, RouteLabelsFuture,
    RouteLabelsService, UNMATCHED,
};

/// The most distinct label sets a process interns; later new sets get the overflow set.
pub const MAX_SETS: usize = 4096;
/// The most labels one set holds; further keys are dropped (counted by [`rejected`]).
pub const MAX_LABELS: usize = 16;
/// The longest key kept, in bytes; longer keys are cut at a character boundary and end
/// with [`CUT_MARKER`].
pub const MAX_KEY_LEN: usize = 64;
/// The longest value kept, in bytes; longer values are cut at a character boundary and
/// end with [`CUT_MARKER`].
pub const MAX_VALUE_LEN: usize = 256;
/// What ends a key or value that was cut.
pub const CUT_MARKER: &str = "…";
/// The key and value of the set samples carry once [`MAX_SETS`] sets exist.
pub const OVERFLOW: (&str, &str) = ("diag.labels", "overflow");

static OVERFLOWED: AtomicU64 = AtomicU64::new(0);
static REJECTED: AtomicU64 = AtomicU64::new(0);

/// How many times a new label set got the overflow set because the table was full.
pub fn overflowed() -> u64 {
    OVERFLOWED.load(Ordering::Relaxed)
}

/// How many labels were dropped: empty keys, and keys past [`MAX_LABELS`] in a set.
pub fn rejected() -> u64 {
    REJECTED.load(Ordering::Relaxed)
}

/// A set of `key=value` labels, keys unique, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSet {
    pairs: Vec<(String, String)>,
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(CUT_MARKER.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + CUT_MARKER.len());
    out.push_str(&s[..end]);
    out.push_str(CUT_MARKER);
    out
}

impl LabelSet {
    /// A set from `(key, value)` pairs. Bad input never panics: a pair with an empty key
    /// is dropped; a repeated key keeps its last value; a key longer than
    /// [`MAX_KEY_LEN`] or a value longer than [`MAX_VALUE_LEN`] bytes is cut and ends
    /// with [`CUT_MARKER`]; keys past the first [`MAX_LABELS`] distinct ones are dropped.
    /// Dropped pairs are counted by [`rejected`].
    pub fn new<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut set = Self::default();
        for (k, v) in pairs {
            set.insert(k.as_ref(), v.as_ref());
        }
        set
    }

    fn insert(&mut self, key: &str, value: &str) {
        if key.is_empty() {
            REJECTED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let key = cut(key, MAX_KEY_LEN);
        let value = cut(value, MAX_VALUE_LEN);
        match self.pairs.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => self.pairs[i].1 = value,
            Err(_) if self.pairs.len() >= MAX_LABELS => {
                REJECTED.fetch_add(1, Ordering::Relaxed);
            }
            Err(i) => self.pairs.insert(i, (key, value)),
        }
    }

    /// The labels, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of `key`, if the set has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.pairs[i].1.as_str())
    }

    /// How many labels the set holds.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the set holds no label.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// This set with `inner`'s labels added, `inner`'s values winning.
    fn merged(&self, inner: &LabelSet) -> LabelSet {
        let mut out = self.clone();
        for (k, v) in inner.iter() {
            out.insert(k, v);
        }
        out
    }
}

/// The interning table: id `i` (from 1) is `sets[i - 1]`; id 0 is no labels.
#[derive(Default)]
struct Table {
    ids: HashMap<Arc<LabelSet>, u32>,
    sets: Vec<Arc<LabelSet>>,
    /// (outer id, inner id) → merged id, so nested scopes merge once.
    merges: HashMap<(u32, u32), u32>,
    overflow: u32,
}

fn table() -> std::sync::MutexGuard<'static, Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE
        .get_or_init(|| Mutex::new(Table::default()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Table {
    fn push(&mut self, set: Arc<LabelSet>) -> u32 {
        self.sets.push(set.clone());
        let id = self.sets.len() as u32;
        self.ids.insert(set, id);
        id
    }

    fn intern(&mut self, set: LabelSet) -> u32 {
        if set.is_empty() {
            return 0;
        }
        if let Some(id) = self.ids.get(&set) {
            return *id;
        }
        if self.sets.len() >= MAX_SETS {
            OVERFLOWED.fetch_add(1, Ordering::Relaxed);
            if self.overflow == 0 {
                // One slot past the bound is kept for the overflow set itself.
                self.overflow = self.push(Arc::new(LabelSet::new([OVERFLOW])));
            }
            return self.overflow;
        }
        self.push(Arc::new(set))
    }

    fn get(&self, id: u32) -> Option<&Arc<LabelSet>> {
        (id as usize).checked_sub(1).and_then(|i| self.sets.get(i))
    }

    fn merge(&mut self, outer: u32, inner: u32) -> u32 {
        if outer == 0 || outer == inner {
            return inner;
        }
        if inner == 0 {
            return outer;
        }
        if let Some(id) = self.merges.get(&(outer, inner)) {
            return *id;
        }
        let merged = match (self.get(outer), self.get(inner)) {
            (Some(o), Some(i)) => o.merged(i),
            _ => return inner,
        };
        let id = self.intern(merged);
        if self.merges.len() < 4 * MAX_SETS {
            self.merges.insert((outer, inner), id);
        }
        id
    }
}

/// Interns `set`: its id (0 for an empty set, the overflow set's past the bound).
pub(crate) fn intern(set: LabelSet) -> u32 {
    table().intern(set)
}

/// The sets of `ids`, for a profile's encoder (id 0 and unknown ids are left out).
pub(crate) fn resolve(ids: impl IntoIterator<Item = u32>) -> HashMap<u32, Arc<LabelSet>> {
    let t = table();
    ids.into_iter()
        .filter_map(|id| t.get(id).map(|s| (id, s.clone())))
        .collect()
}

/// The labels this thread runs under now (empty outside any labelled code).
pub fn current() -> LabelSet {
    let id = engine::label_id();
    table().get(id).map(|s| (**s).clone()).unwrap_or_default()
}

/// Sets the thread's label id until dropped, then restores the one before.
struct Enter {
    previous: u32,
}

impl Enter {
    #[inline]
    fn new(id: u32) -> Self {
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
struct Ids {
    own: u32,
    outer: u32,
    merged: u32,
}

impl Ids {
    fn new(own: u32) -> Self {
        Self {
            own,
            outer: 0,
            merged: own,
        }
    }

    #[inline]
    fn for_outer(&mut self, outer: u32) -> u32 {
        if outer != self.outer {
            self.merged = table().merge(outer, self.own);
            self.outer = outer;
        }
        self.merged
    }

    #[inline]
    fn enter(&mut self) -> Enter {
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
    let id = table().merge(engine::label_id(), own);
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

    #[test]
    fn bad_input_is_treated_as_documented() {
        let huge = "x".repeat(10_000);
        let many: Vec<(String, String)> =
            (0..40).map(|i| (format!("k{i:02}"), "v".into())).collect();
        let before = rejected();
        let s = LabelSet::new(many);
        assert_eq!(s.len(), MAX_LABELS);
        let s = LabelSet::new([("", "v"), ("k", huge.as_str()), (huge.as_str(), "v")]);
        assert_eq!(s.len(), 2);
        let v = s.get("k").unwrap_or_default();
        assert!(v.len() <= MAX_VALUE_LEN && v.ends_with(CUT_MARKER), "{v}");
        assert!(s.iter().all(|(k, _)| k.len() <= MAX_KEY_LEN));
        assert!(rejected() >= before + 25);
        // Multi-byte characters are cut at a boundary.
        let s = LabelSet::new([("k", "é".repeat(1000))]);
        assert!(s.get("k").unwrap_or_default().ends_with(CUT_MARKER));
    }

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
    fn table_is_bounded() {
        let mut t = Table::default();
        let before = overflowed();
        for i in 0..MAX_SETS + 10 {
            let id = t.intern(LabelSet::new([("n", i.to_string())]));
            assert!(id as usize <= MAX_SETS + 1);
        }
        assert_eq!(t.sets.len(), MAX_SETS + 1);
        assert!(overflowed() >= before + 10);
        let last = t.intern(LabelSet::new([("n", "new")]));
        assert_eq!(
            t.get(last).map(|s| s.get(OVERFLOW.0)),
            Some(Some(OVERFLOW.1))
        );
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
