//! Task dumps, Go's goroutine profile for tokio: `/goroutine` and `/tasks`, over the
//! futures the application lets diag see.
//!
//! A dump never stops the runtime. Each future wrapped in [`Traced`] (by [`spawn`], by
//! [`TracedLayer`] for every request, or by hand) sits in a bounded registry with its last
//! waker. To dump, diag marks and wakes every one; each traces its own next poll with
//! tokio's `trace_with`, where every tokio leaf future (a timer, a socket, a channel, a
//! lock, a `JoinHandle`) records the stack above it (a frame-pointer walk up to the
//! wrapper's frame) and returns `Pending`, after which the task is polled again normally.
//! The dump waits, up to its timeout, for the reports, and names the futures that did not
//! report (a future inside a long or blocked poll cannot) with how long they have been in
//! that poll. tokio's own `Handle::dump` is not used: it stops every worker at a barrier
//! that can wedge a worker and shutdown for good (tokio-rs/tokio#8370).
//!
//! The parts: `traced`, `registry`, `walk` and `dump` take a dump; `format` writes it as
//! Go does (pure); `guard` lets one dump or wall-time profile run at a time; `stuck` reads
//! whether workers are stuck first; `http` answers, and its `layer` traces each request.
//!
//! Not covered: tasks spawned with plain `tokio::spawn` (hyper's connection tasks, other
//! libraries' tasks) and futures not wrapped; they run as before, unseen by dumps.

pub(crate) mod dump;
mod format;
mod guard;
pub(crate) mod http;
pub(crate) mod registry;
mod stuck;
pub(crate) mod traced;
mod walk;

pub(crate) use guard::{DumpGuard, available};
pub use http::layer::{TracedLayer, TracedService};
pub(crate) use http::{goroutine, tasks};
pub use registry::MAX_TRACED_TASKS;
pub use traced::{Traced, spawn};
