//! diag's own blocking work (symbolizing, encoding, reading jemalloc's dump, waiting for
//! a task dump's reports) on threads of its own, not on the application's blocking pool.
//!
//! A service's blocking pool is what fills up when it is in trouble: a hung database
//! driver or file system holds every thread tokio will start (512 by default, fewer when
//! the application sets `max_blocking_threads`), and `spawn_blocking` then queues. A
//! profile or task dump that queued behind them would hang exactly when it is needed.
//!
//! So diag keeps a pool of its own: at most [`MAX_THREADS`] threads named
//! `diag-offload`, started when a job finds none free and kept for the process's life.
//! Kept, not started per job: with jemalloc's `prof_accum` (the demo's setting) every
//! thread that ever had an allocation sampled leaves its profiling data behind when it
//! ends, so a thread per profile would grow memory, and every later heap dump, a little
//! with each scrape. A job whose caller has gone (its client disconnected) before a
//! thread takes it is dropped unrun, so abandoned requests cannot queue up work; one
//! already running runs to its end, as with `spawn_blocking`. After each job a thread
//! hands its jemalloc cache back to the arenas (with the `heap` feature, when jemalloc is
//! the allocator), so a waiting thread holds no freed memory.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, MutexGuard};

/// The most `diag-offload` threads: the default cap on concurrent heavy operations
/// (`Config::max_concurrent`); past it, jobs wait their turn.
pub(crate) const MAX_THREADS: usize = 4;

/// Why an offloaded job gave no result.
#[derive(Debug)]
pub(crate) enum OffloadError {
    /// No thread could be started and none runs (the process is at its thread limit,
    /// or out of memory for a stack).
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

type Job = Box<dyn FnOnce() + Send>;

struct State {
    jobs: VecDeque<Job>,
    /// Threads started.
    threads: usize,
    /// Of them, waiting for a job.
    idle: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    jobs: VecDeque::new(),
    threads: 0,
    idle: 0,
});
static READY: Condvar = Condvar::new();

fn state() -> MutexGuard<'static, State> {
    // No job runs under the lock, so a panic cannot leave the state half-changed.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `job` on a `diag-offload` thread and waits for its result without blocking the
/// caller's async worker. If the caller is dropped before a thread takes the job, the job
/// is dropped unrun; if after, it runs to its end and its result is dropped.
pub(crate) async fn run<R, F>(job: F) -> Result<R, OffloadError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(Box::new(move || {
        if tx.is_closed() {
            return;
        }
        let _ = tx.send(catch_unwind(AssertUnwindSafe(job)));
    }))?;
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(payload)) => Err(OffloadError::Panicked(panic_message(payload.as_ref()))),
        // The job was dropped unsent: only a panic inside `send` could do that.
        Err(_) => Err(OffloadError::Panicked(
            "it ended without a result".to_owned(),
        )),
    }
}

/// Queues `job`, first starting a thread when every idle one is already spoken for and
/// the pool is below [`MAX_THREADS`].
fn submit(job: Job) -> Result<(), OffloadError> {
    let mut st = state();
    if st.idle <= st.jobs.len() && st.threads < MAX_THREADS {
        match std::thread::Builder::new()
            .name("diag-offload".to_owned())
            .spawn(work)
        {
            Ok(_) => st.threads += 1,
            Err(e) if st.threads == 0 => return Err(OffloadError::Spawn(e)),
            // The threads there are take it in turn.
            Err(_) => {}
        }
    }
    st.jobs.push_back(job);
    drop(st);
    READY.notify_one();
    Ok(())
}

/// A `diag-offload` thread: takes jobs one at a time, for the process's life.
fn work() {
    loop {
        let job = {
            let mut st = state();
            st.idle += 1;
            let job = loop {
                if let Some(job) = st.jobs.pop_front() {
                    break job;
                }
                st = READY.wait(st).unwrap_or_else(|e| e.into_inner());
            };
            st.idle -= 1;
            job
        };
        // Panics are caught inside the job (`run`), so this thread goes on.
        job();
        #[cfg(feature = "heap")]
        crate::heap::flush_thread_cache();
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
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    /// Other tests of this binary use the pool too: the ones that fill it take turns.
    static FILLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn a_job_runs_on_a_thread_of_the_pool_and_returns_its_value() {
        let name = run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("diag-offload"));
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_with_its_message_and_the_pool_goes_on() {
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
        assert_eq!(run(|| 5).await.unwrap(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_jobs_at_once_share_at_most_max_threads() {
        let _turn = FILLING.lock().await;
        let jobs: Vec<_> = (0..4 * MAX_THREADS)
            .map(|i| {
                tokio::spawn(run(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    (i, std::thread::current().id())
                }))
            })
            .collect();
        let mut threads = HashSet::new();
        for (i, job) in jobs.into_iter().enumerate() {
            let (got, thread) = job.await.unwrap().unwrap();
            assert_eq!(got, i);
            threads.insert(thread);
        }
        assert!(threads.len() <= MAX_THREADS, "{} threads", threads.len());
        assert!(state().threads <= MAX_THREADS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_whose_caller_is_gone_before_it_starts_never_runs() {
        let _turn = FILLING.lock().await;
        // Every thread of the pool held, so that the next job waits in the queue.
        let (started_tx, started) = mpsc::channel::<()>();
        let mut releases = Vec::new();
        let mut holders = Vec::new();
        for _ in 0..MAX_THREADS {
            let (release, held) = mpsc::channel::<()>();
            let started_tx = started_tx.clone();
            releases.push(release);
            holders.push(tokio::spawn(run(move || {
                started_tx.send(()).unwrap();
                let _ = held.recv();
            })));
        }
        for _ in 0..MAX_THREADS {
            started.recv_timeout(Duration::from_secs(120)).unwrap();
        }
        static RAN: AtomicBool = AtomicBool::new(false);
        let mut abandoned = Box::pin(run(|| RAN.store(true, Ordering::SeqCst)));
        // Polled once, it queues its job behind the holders; then its caller goes away.
        let waited = tokio::time::timeout(Duration::from_millis(1), &mut abandoned).await;
        assert!(waited.is_err(), "the job ran with every thread held");
        drop(abandoned);
        for release in releases {
            release.send(()).unwrap();
        }
        for holder in holders {
            holder.await.unwrap().unwrap();
        }
        // A job queued after it has run, so the abandoned one was taken (and dropped).
        run(|| ()).await.unwrap();
        assert!(!RAN.load(Ordering::SeqCst), "the abandoned job ran");
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
        let (release, held) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        rt.block_on(async move {
            let blocker = tokio::task::spawn_blocking(move || {
                started_tx.send(()).unwrap();
                let _ = held.recv();
            });
            started.recv().unwrap();
            // A second spawn_blocking now queues behind the blocker.
            let queued = tokio::task::spawn_blocking(|| 1);
            let got = tokio::time::timeout(Duration::from_secs(120), run(|| 7))
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
