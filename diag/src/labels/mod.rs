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

mod cache;
mod route;
mod scope;
mod table;

use std::sync::atomic::{AtomicU64, Ordering};

#[doc(hidden)]
pub use cache::route_id_for_bench;
pub use cache::{OTHER_METHOD, ROUTE_CACHE_MAX, UNMATCHED};
pub use route::{RouteLabels, RouteLabelsBody, RouteLabelsFuture, RouteLabelsService};
use scope::{Enter, Ids};
pub use scope::{Labelled, LabelsExt, bind, in_current_labels, scope, spawn, spawn_blocking, with};
#[doc(hidden)]
pub use scope::{intern_for_bench, with_id};
pub use table::current;
pub(crate) use table::{intern, resolve};

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
}
