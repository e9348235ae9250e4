//! How a session follows the process's threads: a timer for each new thread, deleted when
//! it exits, its name, and its stack range from `/proc/self/maps` once a sample asks.

use std::sync::Arc;
use std::time::Instant;

use super::session::{Session, Tracked};
use super::{EAGER, MAX_NAMES, RECORDER_REMAP, REMAP, REMAP_ANYWAY};
use crate::cpu::engine::signal;
use crate::cpu::engine::threads::{self, THREADS};
use crate::cpu::engine::timer;

impl Session {
    /// Reads `/proc/self/maps` when a thread's stack range is wanted or the executable
    /// mappings are due again, once for both.
    pub(super) fn refresh_maps(&mut self, now: Instant) {
        let since = now.duration_since(self.last_remap);
        let anyway = if self.readers.is_empty() {
            RECORDER_REMAP
        } else {
            REMAP_ANYWAY
        };
        let remap = (self.remap_wanted && since >= REMAP) || since >= anyway;
        // A thread listed after the last reading may have a stack that reading lacks.
        let stale = self.to_learn.values().any(|(tid, _)| {
            self.threads
                .get(tid)
                .is_some_and(|t| t.listed > self.maps_listings)
        });
        // A stack pointer in no mapping of the reading (a stack mapped since, such as a
        // coroutine's): read again, once per REMAP at most.
        let missing = now.duration_since(self.last_maps_read) >= REMAP
            && self
                .to_learn
                .values()
                .any(|(_, sp)| self.maps.stack_range(*sp).is_none());
        if remap || stale || missing {
            self.maps.read();
            self.maps_listings = self.listings;
            self.last_maps_read = now;
        }
        if remap {
            self.last_remap = now;
            self.remap_wanted = false;
            self.maps.publish_exec();
        }
        self.learn_stacks();
    }

    /// Arms timers for new threads and deletes those of exited ones. Returns the last
    /// timer error, if any.
    pub(super) fn scan(&mut self) -> Option<std::io::Error> {
        let mut tasks = std::mem::take(&mut self.tasks);
        let tids = tasks.list();
        self.listings += 1;
        let error = self.scan_tids(tids);
        self.tasks = tasks;
        error
    }

    /// [`Session::scan`] of the sorted thread ids `tids`.
    pub(super) fn scan_tids(&mut self, tids: &[u32]) -> Option<std::io::Error> {
        if !self.renames_pending && tids == self.known_tids.as_slice() {
            return None;
        }
        self.forget_exited(tids);
        if self.renames_pending {
            self.renames_pending = false;
            self.rename_fresh();
        }
        let mut error = None;
        for &tid in tids {
            if self.threads.contains_key(&tid) {
                continue;
            }
            if let Err(e) = self.track(tid) {
                error = Some(e);
            }
        }
        // A listing whose timers all armed is the one the next scan compares with; after
        // an error the next scan does everything again (and retries the thread).
        self.known_tids.clear();
        if error.is_none() {
            self.known_tids.extend_from_slice(tids);
        }
        error
    }

    /// Deletes the timers of the threads missing from `tids` (sorted): they exited.
    fn forget_exited(&mut self, tids: &[u32]) {
        let alive = |t: u32| tids.binary_search(&t).is_ok();
        let gone: Vec<u32> = self
            .threads
            .keys()
            .filter(|t| !alive(**t))
            .copied()
            .collect();
        for tid in gone {
            if let Some(t) = self.threads.remove(&tid) {
                timer::delete(t.timer);
                self.slots.give_back(t.slot);
            }
        }
        self.unsampled.retain(|t| alive(*t));
    }

    /// Reads again the names of the threads the previous scan found (a new thread may
    /// name itself just after it starts).
    fn rename_fresh(&mut self) {
        let mut renamed = Vec::new();
        for (tid, t) in &mut self.threads {
            if t.fresh {
                t.fresh = false;
                renamed.push(*tid);
            }
        }
        for tid in renamed {
            let name = self.intern_name(threads::thread_name(tid));
            if let Some(t) = self.threads.get_mut(&tid) {
                t.name = name;
            }
        }
    }

    /// Arms a timer for the new thread `tid` and tracks it; with the thread table full it
    /// is left unsampled (and counted).
    fn track(&mut self, tid: u32) -> std::io::Result<()> {
        let Some(slot) = self.slots.take(tid) else {
            self.unsampled.insert(tid);
            return Ok(());
        };
        THREADS.set(slot, tid, None);
        let armed = timer::create(tid, signal::timer_value(self.generation, slot)).and_then(|id| {
            let first = self.jitter.below(self.period_ns);
            match timer::arm(id, first, self.period_ns) {
                Ok(()) => Ok(id),
                Err(e) => {
                    timer::delete(id);
                    Err(e)
                }
            }
        });
        match armed {
            Ok(timer) => {
                let name = self.intern_name(threads::thread_name(tid));
                self.threads.insert(
                    tid,
                    Tracked {
                        slot,
                        listed: self.listings,
                        timer,
                        name,
                        fresh: true,
                    },
                );
                self.renames_pending = true;
                self.eager_until = Instant::now() + EAGER;
                Ok(())
            }
            Err(e) => {
                // Most often the thread exited since the listing.
                self.slots.give_back(slot);
                Err(e)
            }
        }
    }

    pub(super) fn intern_name(&mut self, name: String) -> u32 {
        if let Some(id) = self.names.get(name.as_str()) {
            return *id;
        }
        // A process that keeps starting threads of new names (or unnamed ones, named by
        // their id) must not grow the table for as long as the recorder runs.
        let name = if self.name_list.len() >= MAX_NAMES {
            "(other threads)".to_owned()
        } else {
            name
        };
        if let Some(id) = self.names.get(name.as_str()) {
            return *id;
        }
        let id = self.name_list.len() as u32;
        let name: Arc<str> = name.into();
        self.name_list.push(name.clone());
        self.names.insert(name, id);
        id
    }

    /// Publishes the stack ranges of threads whose samples lacked one.
    pub(super) fn learn_stacks(&mut self) {
        if self.to_learn.is_empty() {
            return;
        }
        for (slot, (tid, sp)) in self.to_learn.drain() {
            let tracked = self.threads.get(&tid).is_some_and(|t| t.slot == slot);
            if tracked {
                if let Some(range) = self.maps.stack_range(sp) {
                    THREADS.set(slot, tid, Some(range));
                }
            }
        }
    }
}
