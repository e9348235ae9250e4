//! The interning table: each distinct [`LabelSet`] gets a small id once, outside the
//! signal handler; ids are never freed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use super::{LabelSet, MAX_SETS, OVERFLOW, OVERFLOWED};
use crate::cpu::engine;

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

/// The id of `outer`'s labels with `inner`'s added (`inner`'s values win), interned.
pub(super) fn merge(outer: u32, inner: u32) -> u32 {
    table().merge(outer, inner)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::overflowed;

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
}
