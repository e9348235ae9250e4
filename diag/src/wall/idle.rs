//! Which thread samples are tokio waiting for work, left out of the wall profile.

/// Whether a thread's stack (its functions, leaf first, inlined ones included) is tokio's
/// own waiting for work: a worker parked, a blocking-pool thread between closures, a
/// runtime's `block_on` parked while its future awaits. Such samples are left out.
///
/// The rule: past the "plumbing" at the leaf (libc, `std::sys`, `std::sync`, `core`,
/// `alloc`, mio, `tokio::loom`/`util`), the first function is tokio's runtime and not
/// a task's poll, and nothing but tokio's runtime and thread start-up is above it (or a
/// `Runtime::block_on` is). A blocking closure, a worker inside a poll and a std thread's
/// own code all put a function of their own first.
pub(crate) fn idle<'a>(functions: impl IntoIterator<Item = &'a str>) -> bool {
    // Only functions named with their path decide: libc's, unresolved addresses and the
    // short names line tables give inlined functions (`park`, `{closure#0}<..>`,
    // `poll<..>`) are skipped.
    let functions: Vec<&str> = functions.into_iter().filter_map(with_path).collect();
    let Some(first) = functions.iter().position(|f| !plumbing(f)) else {
        return false;
    };
    let f = functions[first];
    if !f.starts_with("tokio::runtime::") || f.contains("::task::") {
        return false;
    }
    let rest = &functions[first..];
    rest.iter().any(|f| f.contains("Runtime::block_on"))
        || rest
            .iter()
            .all(|f| plumbing(f) || tokio_own(f) || thread_start(f))
}

/// `f` without a leading `<` if it is named with its path (`a::b`, `<a::B as c::D>::e`),
/// `None` for a bare name (`epoll_wait`, `park`, `{closure#0}<a::B>`, `0x7f..`).
fn with_path(f: &str) -> Option<&str> {
    if let Some(rest) = f.strip_prefix('<') {
        return Some(rest);
    }
    let head = f.split('<').next().unwrap_or(f);
    (head.contains("::") && !head.starts_with('{')).then_some(f)
}

fn plumbing(f: &str) -> bool {
    [
        "std::sys::",
        "std::sync::",
        "core::",
        "alloc::",
        "mio::",
        "parking_lot",
        "tokio::loom::",
        "tokio::util::",
    ]
    .iter()
    .any(|p| f.starts_with(p))
}

/// tokio's runtime, and the span tokio wraps each task in when built with tracing.
fn tokio_own(f: &str) -> bool {
    f.starts_with("tokio::runtime::") || f.starts_with("tracing::instrument::Instrumented")
}

fn thread_start(f: &str) -> bool {
    ["std::thread::", "std::rt::", "std::panic", "__rust"]
        .iter()
        .any(|p| f.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::idle;

    #[test]
    fn parked_workers_and_idle_pool_threads_are_idle() {
        let parked_worker = [
            "epoll_wait",
            "mio::poll::Poll::poll",
            "tokio::runtime::io::driver::Driver::turn",
            "tokio::runtime::scheduler::multi_thread::park::Parker::park",
            "tokio::runtime::scheduler::multi_thread::worker::Context::park_timeout",
            "tokio::runtime::scheduler::multi_thread::worker::run",
            "tracing::instrument::Instrumented<T> as core::future::future::Future>::poll",
            "tokio::runtime::blocking::pool::Inner::run",
            "std::sys::pal::unix::thread::Thread::new::thread_start",
            "start_thread",
        ];
        assert!(idle(parked_worker));
        let idle_pool = [
            "__futex_abstimed_wait_common",
            "std::sys::sync::condvar::futex::Condvar::wait_timeout",
            "std::sync::condvar::Condvar::wait_timeout",
            "tokio::runtime::blocking::pool::Inner::run",
            "tokio::runtime::blocking::pool::Spawner::spawn_thread::{{closure}}",
            "std::thread::Builder::spawn_unchecked_::{{closure}}",
            "clone3",
        ];
        assert!(idle(idle_pool));
        let main_block_on = [
            "syscall",
            "tokio::runtime::park::Inner::park",
            "tokio::runtime::park::CachedParkThread::block_on",
            "tokio::runtime::runtime::Runtime::block_on",
            "demo::main",
            "std::rt::lang_start_internal",
            "main",
        ];
        assert!(idle(main_block_on));
        // The same parked worker as release line tables name it.
        let release_worker = [
            "epoll_wait",
            "select",
            "mio::poll::Poll::poll",
            "tokio::runtime::io::driver::Driver::turn",
            "park_driver",
            "park",
            "tokio::runtime::scheduler::multi_thread::worker::Context::run",
            "{closure#0}",
            "try_with<tokio::runtime::context::Context, tokio::runtime::context::X>",
            "tokio::runtime::scheduler::multi_thread::worker::run",
            "<tokio::runtime::blocking::task::BlockingTask<T> as core::future::future::Future>::poll",
            "{closure#0}<tracing::instrument::Instrumented<tokio::runtime::X>>",
            "tokio::runtime::blocking::pool::Inner::run",
            "0x7f91c36da1f5",
        ];
        assert!(idle(release_worker));
    }

    #[test]
    fn blocked_closures_std_threads_and_blocking_polls_are_kept() {
        let closure = [
            "nanosleep",
            "std::sys::pal::unix::thread::Thread::sleep",
            "std::thread::sleep",
            "demo::work::blocking_lookup",
            "tokio::runtime::task::harness::Harness::poll",
            "tokio::runtime::blocking::pool::Inner::run",
        ];
        assert!(!idle(closure));
        let std_lock = [
            "syscall",
            "std::sys::sync::mutex::futex::Mutex::lock_contended",
            "app::worker_loop",
            "std::thread::Builder::spawn_unchecked_::{{closure}}",
        ];
        assert!(!idle(std_lock));
        let blocking_recv = [
            "syscall",
            "tokio::runtime::park::Inner::park",
            "tokio::runtime::park::CachedParkThread::block_on",
            "tokio::sync::mpsc::chan::Rx::blocking_recv",
            "app::consumer",
            "std::thread::Builder::spawn_unchecked_::{{closure}}",
        ];
        assert!(!idle(blocking_recv));
        let worker_blocked_in_poll = [
            "nanosleep",
            "std::thread::sleep",
            "demo::work::block_worker::{{closure}}",
            "tokio::runtime::task::raw::poll",
            "tokio::runtime::scheduler::multi_thread::worker::Context::run_task",
        ];
        assert!(!idle(worker_blocked_in_poll));
        // Nothing known: kept.
        assert!(!idle(["?"]));
        // A closure inlined into tokio's poll (release line tables: bare names) waiting
        // on a std lock: the task's poll above it keeps it.
        let inlined_closure = [
            "syscall",
            "std::sys::pal::unix::futex::futex_wait",
            "<std::sys::sync::mutex::futex::Mutex>::lock_contended",
            "lock",
            "{closure#0}<app::AppState>",
            "poll<tokio::runtime::blocking::task::BlockingTask<app::F>>",
            "tokio::runtime::task::core::Core<T,S>::poll",
            "tokio::runtime::blocking::pool::Inner::run",
        ];
        assert!(!idle(inlined_closure));
    }
}
