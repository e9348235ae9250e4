//! tokio-console: a layer for the application's own subscriber, and the console's gRPC
//! server served by diag on a listener it binds itself.
//!
//! console-subscriber's conveniences are unfit for a library: `init()` installs a global
//! subscriber (and panics if one is set), `spawn()` serves from a thread that panics when
//! the address is taken, and `with_default_env()` panics on a bad `TOKIO_CONSOLE_BIND`.
//! diag uses `build()` and serves the parts itself, so every failure is an error the
//! application can print.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;

use crate::shutdown::Shutdown;

pub use console_subscriber::ConsoleLayer;

/// Where the console listens unless told otherwise (tokio-console's default).
pub const DEFAULT_CONSOLE_ADDR: &str = "127.0.0.1:6669";

/// How long finished tasks stay visible in the console unless told otherwise.
///
/// console-subscriber keeps each finished task's statistics (its poll-time histograms are
/// most of the ~50 KB each) for an hour by default: a service finishing 100 tasks a second
/// would hold 18 GB. A minute keeps the memory bounded by `rate × 60 s × ~50 KB`, and
/// every task that ended in the last minute is still there to look at.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(60);

/// Why the console could not be set up, and what to do about it.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The build lacks `--cfg tokio_unstable`, without which tokio emits nothing for the
    /// console to show.
    NoTokioUnstable,
    /// The address could not be bound (taken, not an address of this host, or not
    /// resolvable).
    #[non_exhaustive]
    Bind {
        /// The address that could not be bound; `None` when the address given resolved
        /// to none.
        addr: Option<SocketAddr>,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoTokioUnstable => f.write_str(
                "tokio-console needs tokio's unstable instrumentation, compiled in with \
                 RUSTFLAGS=\"--cfg tokio_unstable\" (or `rustflags = [\"--cfg\", \
                 \"tokio_unstable\"]` in .cargo/config.toml) and tokio's \"tracing\" feature; \
                 this build lacks it",
            ),
            Self::Bind {
                addr: Some(addr),
                source,
            } => write!(
                f,
                "cannot serve tokio-console on {addr}: {source}; choose another address \
                 (tokio-console then attaches with `tokio-console http://ADDR`)"
            ),
            Self::Bind { addr: None, source } => write!(
                f,
                "cannot serve tokio-console: the address given resolves to none ({source}); \
                 give an address and port of this host, such as {DEFAULT_CONSOLE_ADDR}"
            ),
        }
    }
}

impl std::error::Error for ConsoleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Bind { source, .. } => Some(source),
            Self::NoTokioUnstable => None,
        }
    }
}

/// The console's server, bound and ready to serve: [`ConsoleServer::spawn`] it once the
/// [`ConsoleLayer`] is part of the application's subscriber.
pub struct ConsoleServer {
    server: console_subscriber::Server,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for ConsoleServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Builds tokio-console's layer and binds its server on `addr`, keeping finished tasks
/// for `retention`.
///
/// `addr` is anything tokio's `TcpListener::bind` takes (`"127.0.0.1:6669"`, a
/// `SocketAddr`, ...), as for [`crate::serve`]; port 0 picks a free one
/// ([`ConsoleServer::local_addr`] says which). Compose the layer with your own (it never
/// installs a global subscriber), tell diag's index page where the console is
/// ([`Config::with_console`](crate::Config::with_console)), then spawn the server:
///
/// ```no_run
/// use tracing_subscriber::prelude::*;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let (console_layer, console) =
///     diag::console::bind(diag::console::DEFAULT_CONSOLE_ADDR, diag::console::DEFAULT_RETENTION)
///         .await?;
/// tracing_subscriber::registry()
///     .with(console_layer)
///     .with(tracing_subscriber::fmt::layer())
///     .init();
/// let stop = diag::Shutdown::new();
/// let cfg = diag::Config::default()
///     .with_shutdown(stop.clone())
///     .with_console(&console);
/// console.spawn(stop.clone());
/// let app: axum::Router = axum::Router::new().merge(diag::router(cfg));
/// # Ok(())
/// # }
/// ```
///
/// Errors, rather than panics, when the build lacks `--cfg tokio_unstable` or the address
/// cannot be bound.
pub async fn bind(
    addr: impl ToSocketAddrs,
    retention: Duration,
) -> Result<(ConsoleLayer, ConsoleServer), ConsoleError> {
    if !cfg!(tokio_unstable) {
        return Err(ConsoleError::NoTokioUnstable);
    }
    let (listener, local_addr) = crate::util::bind(addr)
        .await
        .and_then(|(l, at)| Ok((TcpListener::from_std(l).map_err(|e| (Some(at), e))?, at)))
        .map_err(|(addr, source)| ConsoleError::Bind { addr, source })?;
    let (layer, server) = console_subscriber::ConsoleLayer::builder()
        .retention(retention)
        // Never read TOKIO_CONSOLE_* here: the application chose the address.
        .server_addr(local_addr)
        .build();
    Ok((
        layer,
        ConsoleServer {
            server,
            listener,
            local_addr,
        },
    ))
}

impl ConsoleServer {
    /// The address the console listens on (`tokio-console http://ADDR` attaches).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves the console until `shutdown` triggers; the aggregator (which turns the
    /// layer's events into what the console shows) runs beside it and stops with it.
    pub fn spawn(self, shutdown: Shutdown) -> JoinHandle<()> {
        let console_subscriber::ServerParts {
            instrument_server,
            aggregator,
            ..
        } = self.server.into_parts();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.listener);
        let addr = self.local_addr;
        crate::util::spawn_named("diag::console::serve", async move {
            // Outside tokio's cooperative budget: the aggregator drains the layer's events
            // with `now_or_never` once per publish interval, and under the budget a drain
            // stops after 128 of them; the rest wait a second in the event buffer (up to
            // 100 000 of them, each holding a task's ~50 KB of statistics). Measured on
            // the demo with 2 400 new connections a second: 127 events drained per second
            // and 1.3 GB resident, never shrinking.
            let aggregate = crate::util::spawn_named(
                "diag::console::aggregate",
                tokio::task::unconstrained(aggregator.run()),
            );
            let served = tonic::transport::Server::builder()
                .add_service(instrument_server)
                .serve_with_incoming_shutdown(incoming, async move { shutdown.triggered().await })
                .await;
            aggregate.abort();
            if let Err(e) = served {
                tracing::warn!(%addr, "tokio-console's server stopped: {e}");
            }
        })
    }
}
