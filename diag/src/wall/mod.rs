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
mod sampler;

pub(crate) use http::wall;
