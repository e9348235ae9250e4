//! Wall-time profiles (`/wall`): where the traced tokio tasks spend their time, awaiting
//! included, as `go tool pprof` reads it (`wall/nanoseconds`).
//!
//! A thread of diag's own takes a traced task dump (`crate::tasks`) at each tick, by
//! default 20 times a second: every future wrapped in [`Traced`](crate::tasks::Traced)
//! (each request under [`TracedLayer`](crate::tasks::TracedLayer), each task of
//! [`tasks::spawn`](crate::tasks::spawn)) reports its await stack, and each stack is
//! weighted by the time since the previous tick. A future that does not report within
//! the tick is counted too, as inside a poll (running, or blocking its worker) or as
//! woken and waiting for a worker. Above 1,000 traced futures the ticks are spaced out in
//! proportion, and the profile says so. Futures not wrapped are not seen; with
//! `TracedLayer`, an HTTP/1 connection idle between requests is not a traced future, so
//! keep-alive idle time stays out of the profile.

mod http;
mod idle;
mod sampler;
#[cfg(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod threads;

/// Without diag's CPU engine there is no thread sampling: task samples alone.
#[cfg(not(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod threads {
    use super::sampler::{ThreadSample, ThreadStats};

    pub(crate) struct Sampler {
        pub(crate) stats: ThreadStats,
    }

    impl Sampler {
        pub(crate) fn new() -> Result<Self, String> {
            Err(
                "threads are sampled with diag's CPU engine (the `cpu` feature, Linux on \
                 x86_64 or aarch64)"
                    .to_owned(),
            )
        }
        pub(crate) fn ask(&mut self) {}
        pub(crate) fn collect(&mut self) -> Vec<ThreadSample> {
            Vec::new()
        }
    }
}

pub(crate) use http::wall;
