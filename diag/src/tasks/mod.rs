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
//! Not covered: tasks spawned with plain `tokio::spawn` (hyper's connection tasks, other
//! libraries' tasks) and futures not wrapped; they run as before, unseen by dumps.

pub(crate) mod dump;
pub(crate) mod http;
mod layer;
pub(crate) mod registry;
pub(crate) mod traced;
mod walk;

pub(crate) use http::{DumpGuard, available, goroutine, tasks};
pub use layer::{TracedLayer, TracedService};
pub use registry::MAX_TRACED_TASKS;
pub use traced::{Traced, spawn};
