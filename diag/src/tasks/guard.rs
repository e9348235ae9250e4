//! Who may wake traced futures for reports (one dump or wall-time profile at a time), the
//! last dump kept for reuse, and whether this build can dump at all.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::dump::TaskDump;

static LAST: Mutex<Option<Arc<TaskDump>>> = Mutex::new(None);
/// Held by whatever wakes traced futures for reports (a dump, a wall-time profile): the
/// registry collects for one of them at a time.
static IN_FLIGHT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// What holds [`IN_FLIGHT`], for the refusal's message.
static HOLDER: Mutex<String> = Mutex::new(String::new());

/// The right to wake traced futures for reports, held by one dump or wall-time profile at
/// a time; `Send`, so a sampling thread can own it.
#[derive(Debug)]
pub(crate) struct DumpGuard {
    _lock: tokio::sync::MutexGuard<'static, ()>,
}

impl DumpGuard {
    /// Takes the guard for `what` ("a wall-time profile until 10:00:05 UTC"), or says
    /// what holds it.
    pub(crate) fn take(what: String) -> Result<DumpGuard, Busy> {
        let lock = IN_FLIGHT.try_lock().map_err(|_| Busy {
            holder: HOLDER.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })?;
        *HOLDER.lock().unwrap_or_else(|e| e.into_inner()) = what;
        Ok(DumpGuard { _lock: lock })
    }
}

/// Why the guard could not be taken: a dump or a wall-time profile holds it (503 with
/// `Retry-After: 1`, see `tasks/http`).
#[derive(Debug)]
pub(crate) struct Busy {
    /// What holds it ("a task dump", "a wall-time profile until …").
    pub(crate) holder: String,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a task dump is already in progress (one at a time, with wall-time profiles \
             too): {}; retry in a moment",
            self.holder
        )
    }
}

impl std::error::Error for Busy {}

/// Whether this build can dump tasks, or how to make it.
pub(crate) fn available() -> Result<(), String> {
    if cfg!(all(tokio_unstable, diag_engine)) {
        Ok(())
    } else {
        Err(NOT_BUILT.to_owned())
    }
}

pub(crate) const NOT_BUILT: &str = "this build has no task dumps: they need diag's `taskdump` feature \
     (which turns on tokio's \"taskdump\" feature), RUSTFLAGS=\"--cfg tokio_unstable\" (set \
     in .cargo/config.toml), and Linux on x86_64 or aarch64";

/// The last dump, if it is younger than `min_interval`.
pub(crate) fn recent(min_interval: Duration) -> Option<Arc<TaskDump>> {
    let last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    last.as_ref()
        .filter(|l| l.at.elapsed() < min_interval)
        .cloned()
}

/// Keeps `dump` as the last one, for reuse within the minimum interval.
pub(crate) fn remember(dump: Arc<TaskDump>) {
    *LAST.lock().unwrap_or_else(|e| e.into_inner()) = Some(dump);
}
