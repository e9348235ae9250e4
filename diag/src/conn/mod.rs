//! Serving a router with the connection limits Go's `http.Server` offers: a header-read
//! timeout, an idle keep-alive timeout, a cap on concurrent connections, and a shutdown
//! that slow clients cannot hold past its grace period.
//!
//! `axum::serve` has none of them: a client that trickles a request one byte at a time,
//! or opens connections and sends nothing, holds them for ever, and enough of them exhaust
//! the process's file descriptors (every listener of the process then stops accepting).
//! The sidecar ([`crate::serve`]) uses this module; an application can serve its own
//! router through [`serve()`] too (the demo does).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use std::time::Duration;
//! let app = axum::Router::new();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let stop = diag::Shutdown::new();
//! let limits = diag::conn::ConnLimits::default().with_max_connections(10_000);
//! diag::conn::serve(listener, app, limits, stop).await
//! # }
//! ```

mod io;
mod limits;
mod serve;
mod watch;

pub use limits::ConnLimits;
pub use serve::serve;
