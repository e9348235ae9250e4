//! What `/hold` keeps, and its cap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Memory kept by `/hold`, and its cap. A request reserves its MiB against the cap before
/// it allocates anything, so concurrent requests can never together exceed it.
#[derive(Debug)]
pub(crate) struct Held {
    blocks: Mutex<Vec<Box<[u8]>>>,
    /// MiB held plus MiB being allocated by requests in flight; never above `cap_mb`.
    reserved: AtomicUsize,
    pub(super) cap_mb: usize,
    pub(super) cap_why: String,
}

impl Held {
    pub(crate) fn new(cap_mb: usize, cap_why: String) -> Self {
        Self {
            blocks: Mutex::new(Vec::new()),
            reserved: AtomicUsize::new(0),
            cap_mb,
            cap_why,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Vec<Box<[u8]>>> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn cap(&self) -> (usize, &str) {
        (self.cap_mb, &self.cap_why)
    }

    /// Reserves `mb` MiB, or answers how many are reserved when that would pass the cap.
    pub(super) fn reserve(&self, mb: usize) -> Result<(), usize> {
        self.reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                (r + mb <= self.cap_mb).then_some(r + mb)
            })
            .map(drop)
    }

    pub(super) fn unreserve(&self, mb: usize) {
        self.reserved.fetch_sub(mb, Ordering::SeqCst);
    }
}
