//! diag's own blocking work (symbolizing, encoding, reading jemalloc's dump, waiting for
//! a task dump's reports) on a thread of its own, not on the application's blocking pool.
//!
//! A service's blocking pool is what fills up when it is in trouble: a hung database
//! driver or file system holds every thread tokio will start (512 by default, fewer when
//! the application sets `max_blocking_threads`), and `spawn_blocking` then queues. A
//! profile or task dump that queued behind them would hang exactly when it is needed, so
//! each call here starts a thread named `diag-offload` that runs one job and ends. The
//! jobs are rare (one per profile, dump or `/symbol` request, at most a few at once under
//! the heavy-operation cap), so starting a thread (tens of microseconds) is nothing
//! beside the job, and no thread is kept while diag is idle.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Why an offloaded job gave no result.
#[derive(Debug)]
pub(crate) enum OffloadError {
    /// The thread could not be started (the process is at its thread limit, or out of
    /// memory for a stack).
    Spawn(std::io::Error),
    /// The job panicked; the message, when it had one.
    Panicked(String),
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn(e) => write!(f, "cannot start diag's worker thread: {e}"),
            Self::Panicked(why) => write!(f, "diag's worker thread panicked: {why}"),
        }
    }
}

impl std::error::Error for OffloadError {}

/// Runs `job` on a new `diag-offload` thread and waits for its result without blocking
/// the caller's async worker. If the caller is dropped (its client went away), the job
/// still runs to its end and its result is dropped, as with `spawn_blocking`.
pub(crate) async fn run<R, F>(job: F) -> Result<R, OffloadError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("diag-offload".to_owned())
        .spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(job)));
        })
        .map_err(OffloadError::Spawn)?;
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(payload)) => Err(OffloadError::Panicked(panic_message(payload.as_ref()))),
        // The thread ended without sending: only a panic inside `send` could do that.
        Err(_) => Err(OffloadError::Panicked(
            "it ended without a result".to_owned(),
        )),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_runs_on_a_thread_of_its_own_and_returns_its_value() {
        let name = run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("diag-offload"));
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_with_its_message() {
        let e = run(|| -> u32 { panic!("the encoder broke") })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, OffloadError::Panicked(m) if m == "the encoder broke"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "diag's worker thread panicked: the encoder broke"
        );
        let e = run(|| -> u32 { panic!("{} of {}", 3, 4) })
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "diag's worker thread panicked: 3 of 4");
    }

    /// The whole point: with the runtime's only blocking thread held, diag's work still
    /// runs.
    #[test]
    fn a_job_runs_while_the_blocking_pool_is_full() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        rt.block_on(async move {
            let blocker = tokio::task::spawn_blocking(move || {
                started_tx.send(()).unwrap();
                let _ = held.recv();
            });
            started.recv().unwrap();
            // A second spawn_blocking now queues behind the blocker.
            let queued = tokio::task::spawn_blocking(|| 1);
            let got = tokio::time::timeout(std::time::Duration::from_secs(120), run(|| 7))
                .await
                .expect("the offloaded job never ran while the pool was full")
                .unwrap();
            assert_eq!(got, 7);
            assert!(!queued.is_finished(), "the pool was not full after all");
            release.send(()).unwrap();
            blocker.await.unwrap();
            assert_eq!(queued.await.unwrap(), 1);
        });
    }
}
