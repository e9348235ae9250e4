//! Named tasks, so that tokio-console shows what each one is (names need
//! `--cfg tokio_unstable`, which this workspace sets; without it they are plain tasks).

use std::future::Future;

use tokio::task::JoinHandle;

/// Spawns `future` as a task named `name`, traced so that diag's task dumps show where it
/// waits.
#[track_caller]
pub fn spawn_named<F>(name: &str, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let future = diag::tasks::Traced::new(name, future);
    #[cfg(tokio_unstable)]
    #[allow(clippy::expect_used)]
    {
        // tokio's builder fails only where `tokio::spawn` would panic (outside a runtime).
        tokio::task::Builder::new()
            .name(name)
            .spawn(future)
            .expect("spawning a task inside the runtime")
    }
    #[cfg(not(tokio_unstable))]
    {
        let _ = name;
        tokio::spawn(future)
    }
}

/// Runs `f` on a blocking thread as a task named `name` and waits for it; the error says
/// why the task failed (it panicked, or the runtime is shutting down).
pub async fn run_blocking<R, F>(name: &str, f: F) -> Result<R, String>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    // The blocking thread runs under the caller's labels (the route, for a request).
    let f = diag::labels::bind(f);
    #[cfg(tokio_unstable)]
    let handle = tokio::task::Builder::new()
        .name(name)
        .spawn_blocking(f)
        .map_err(|e| format!("{name}: {e}"))?;
    #[cfg(not(tokio_unstable))]
    let handle = {
        let _ = name;
        tokio::task::spawn_blocking(f)
    };
    handle.await.map_err(|e| format!("{name}: {e}"))
}
