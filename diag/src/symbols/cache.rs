//! A bounded cache of resolved addresses, so that warm profiles skip the DWARF pass.
//!
//! Two generations: lookups and inserts go to the young one; when it fills (by entries or
//! by accounted bytes), the old one is dropped whole and the young one becomes old. A hit
//! in the old generation moves the entry back into the young one. Recently used addresses
//! therefore survive, anything unused for two turnovers goes, and the bound holds however
//! many addresses clients send: at most [`CAPACITY`] entries and [`MAX_BYTES`] accounted
//! bytes, with no per-entry bookkeeping beyond the map slot.

use std::collections::HashMap;

use super::Resolved;
use crate::proto::Line;

/// Entries kept at most, over both generations (half each).
pub(crate) const CAPACITY: usize = 32_768;

/// Accounted bytes kept at most, over both generations (half each): see [`entry_bytes`].
pub(crate) const MAX_BYTES: usize = 12 << 20;

/// The cache. Not synchronised: the caller holds it behind a lock.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    young: HashMap<usize, Resolved>,
    young_bytes: usize,
    old: HashMap<usize, Resolved>,
    old_bytes: usize,
}

impl Cache {
    /// The resolved lines of `ip`, if cached (a hit in the old generation moves it to the
    /// young one).
    pub(crate) fn get(&mut self, ip: usize) -> Option<Resolved> {
        if let Some(r) = self.young.get(&ip) {
            return Some(r.clone());
        }
        let r = self.old.remove(&ip)?;
        self.old_bytes = self.old_bytes.saturating_sub(entry_bytes(&r));
        self.insert(ip, r.clone());
        Some(r)
    }

    /// Caches `resolved` for `ip`, turning the generations over first when the young one
    /// is full.
    pub(crate) fn insert(&mut self, ip: usize, resolved: Resolved) {
        let bytes = entry_bytes(&resolved);
        if bytes > MAX_BYTES / 2 {
            return; // one entry larger than a generation: not kept
        }
        if self.young.len() >= CAPACITY / 2 || self.young_bytes + bytes > MAX_BYTES / 2 {
            self.old = std::mem::take(&mut self.young);
            self.old_bytes = std::mem::replace(&mut self.young_bytes, 0);
        }
        if let Some(previous) = self.young.insert(ip, resolved) {
            self.young_bytes = self.young_bytes.saturating_sub(entry_bytes(&previous));
        }
        self.young_bytes += bytes;
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Accounted bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.young_bytes + self.old_bytes
    }
}

/// What one entry costs, as accounted: the map slot (key and pointer, twice over for
/// hashbrown's load factor and power-of-two growth, plus its control bytes), the `Arc`'s
/// two counters, the `Line`s, their strings' heap buffers, and the allocator's header on
/// each allocation (one for the `Arc`, two per line).
pub(crate) fn entry_bytes(r: &Resolved) -> usize {
    const SLOT: usize = 2 * (std::mem::size_of::<(usize, Resolved)>() + 1);
    const ARC: usize = 2 * std::mem::size_of::<usize>();
    const HEADER: usize = 16;
    SLOT + ARC
        + HEADER
        + r.iter()
            .map(|l| {
                std::mem::size_of::<Line>() + l.function.capacity() + l.file.capacity() + 2 * HEADER
            })
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(function: &str, file: &str) -> Resolved {
        vec![Line {
            function: function.to_owned(),
            file: file.to_owned(),
            line: 7,
        }]
        .into()
    }

    #[test]
    fn stays_within_capacity_and_keeps_what_is_used() {
        let mut cache = Cache::default();
        let typical = lines("demo::work::spin_for", "/src/demo/src/work.rs");
        // An address looked up all along stays; three capacities of new ones go through.
        cache.insert(1, typical.clone());
        for ip in 2..(3 * CAPACITY) {
            cache.insert(ip, typical.clone());
            assert!(cache.get(1).is_some(), "evicted at {ip}");
            assert!(cache.len() <= CAPACITY, "{} entries", cache.len());
        }
        assert!(cache.len() >= CAPACITY / 2);
        assert!(cache.get(2).is_none(), "the oldest address stayed");
        assert!(cache.bytes() <= MAX_BYTES);
        eprintln!(
            "{} entries, {} accounted bytes ({} per typical entry)",
            cache.len(),
            cache.bytes(),
            entry_bytes(&typical)
        );
    }

    #[test]
    fn stays_within_its_bytes_when_entries_are_large() {
        let mut cache = Cache::default();
        let long = "x".repeat(4096);
        for ip in 0..CAPACITY {
            cache.insert(ip, lines(&long, &long));
            assert!(cache.bytes() <= MAX_BYTES, "{} bytes", cache.bytes());
        }
        // 8 KiB entries: the byte budget, not the entry count, bounds them.
        assert!(cache.len() < MAX_BYTES / 8192, "{} entries", cache.len());
        // An entry larger than a generation is not kept at all.
        cache.insert(usize::MAX, lines(&"y".repeat(MAX_BYTES), ""));
        assert!(cache.get(usize::MAX).is_none());
        assert!(cache.bytes() <= MAX_BYTES);
    }
}
