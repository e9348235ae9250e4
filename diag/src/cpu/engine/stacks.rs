//! The session's table of distinct stacks: each interned once, shared by every reader's
//! window and the recorder's buckets, counted by the holders that name it and freed when
//! the last one lets go (a window that ends, a bucket that is dropped). Bounded in stacks
//! and in frames.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// A hash map with [`FastHasher`]: for the sampler thread's per-sample lookups.
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A multiply-rotate hasher (FxHash's) for keys made of code addresses and small ids.
/// The keys come from this process's own stacks, never from a client, so a keyed hash
/// (std's SipHash, several times slower over a 30-frame stack) buys nothing here.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Distinct stacks kept at once at most (~300 bytes each at 30 frames): beyond it, new
/// stacks are counted as lost rather than kept.
pub(crate) const MAX_STACKS: usize = 16_384;

/// Bytes a stack costs beside its frames: the table's entry, the map's entry and the
/// shared allocation's header, roughly.
pub(crate) const STACK_OVERHEAD: usize = 96;

#[derive(Debug)]
struct Entry {
    frames: Arc<[usize]>,
    holders: u32,
}

/// Interned stacks with holder counts.
#[derive(Debug, Default)]
pub(crate) struct Stacks {
    ids: FastMap<Arc<[usize]>, u32>,
    list: Vec<Option<Entry>>,
    free: Vec<u32>,
    frames: usize,
    live: usize,
}

impl Stacks {
    /// The id of `frames`, interning it when new, unless the table holds [`MAX_STACKS`]
    /// stacks or `frames_limit` frames already. A new id has no holder: the caller
    /// [`Stacks::hold`]s it at once.
    pub(crate) fn intern(&mut self, frames: &[usize], frames_limit: usize) -> Option<u32> {
        if let Some(id) = self.ids.get(frames) {
            return Some(*id);
        }
        if self.live >= MAX_STACKS || self.frames + frames.len() > frames_limit {
            return None;
        }
        let frames: Arc<[usize]> = frames.into();
        let entry = Entry {
            frames: frames.clone(),
            holders: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.list[id as usize] = Some(entry);
                id
            }
            None => {
                self.list.push(Some(entry));
                (self.list.len() - 1) as u32
            }
        };
        self.frames += frames.len();
        self.live += 1;
        self.ids.insert(frames, id);
        Some(id)
    }

    /// One more holder names `id`.
    pub(crate) fn hold(&mut self, id: u32) {
        if let Some(Some(e)) = self.list.get_mut(id as usize) {
            e.holders += 1;
        }
    }

    /// One holder of `id` lets go; the stack is freed with its last holder.
    pub(crate) fn release(&mut self, id: u32) {
        let Some(slot) = self.list.get_mut(id as usize) else {
            return;
        };
        let last = match slot {
            Some(e) => {
                e.holders = e.holders.saturating_sub(1);
                e.holders == 0
            }
            None => false,
        };
        if last {
            if let Some(e) = slot.take() {
                self.ids.remove(&e.frames);
                self.frames -= e.frames.len();
                self.live -= 1;
                self.free.push(id);
            }
        }
    }

    /// The frames of `id` (empty if it was freed).
    pub(crate) fn frames(&self, id: u32) -> &[usize] {
        match self.list.get(id as usize) {
            Some(Some(e)) => &e.frames,
            _ => &[],
        }
    }

    /// Stacks held now.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Frames held now.
    pub(crate) fn frames_held(&self) -> usize {
        self.frames
    }

    /// About how many bytes the table holds.
    pub(crate) fn bytes(&self) -> usize {
        self.frames * std::mem::size_of::<usize>() + self.live * STACK_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_is_freed_with_its_last_holder_and_its_id_reused() {
        let mut t = Stacks::default();
        let a = t.intern(&[1, 2, 3], usize::MAX).unwrap_or(u32::MAX);
        t.hold(a);
        t.hold(a);
        assert_eq!(t.intern(&[1, 2, 3], usize::MAX), Some(a));
        t.release(a);
        assert_eq!((t.live(), t.frames_held()), (1, 3));
        t.release(a);
        assert_eq!((t.live(), t.frames_held()), (0, 0));
        assert!(t.frames(a).is_empty());
        let b = t.intern(&[4], usize::MAX).unwrap_or(u32::MAX);
        assert_eq!(b, a, "the freed id is reused");
        assert_eq!(t.frames(b), &[4]);
    }

    #[test]
    fn the_frames_limit_refuses_new_stacks_not_known_ones() {
        let mut t = Stacks::default();
        let a = t.intern(&[1, 2], 3).unwrap_or(u32::MAX);
        t.hold(a);
        assert_eq!(t.intern(&[5, 6], 3), None);
        assert_eq!(t.intern(&[1, 2], 3), Some(a));
    }
}
