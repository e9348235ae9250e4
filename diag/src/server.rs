//! The sidecar: diag on its own listener, stopping with the application.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, ToSocketAddrs};

use crate::config::Config;
use crate::shutdown::Shutdown;

/// Where the sidecar conventionally listens: loopback only, Go's usual port.
pub const DEFAULT_SIDECAR_ADDR: &str = "127.0.0.1:6060";

/// Serves diag on its own listener at `addr`, on a thread and tokio runtime of its own.
///
/// `addr` is anything tokio's `TcpListener::bind` takes: `"127.0.0.1:6060"`, a
/// `SocketAddr`, `("localhost", 6060)`; the first address it resolves to that can be bound
/// is used, and port 0 picks a free one ([`Sidecar::local_addr`] says which).
///
/// Its own runtime keeps diag answering when the application's async workers are stuck:
/// a worker blocked in a synchronous call can stall the application runtime's I/O driver,
/// and every listener on it, until it returns. Task dumps still show the application's
/// tasks (the runtime `serve` is called from).
///
/// Bind to loopback (as [`DEFAULT_SIDECAR_ADDR`] does) unless something in front of it
/// controls access: these endpoints reveal the program's internals and burn CPU on
/// request. The sidecar stops when the [`Shutdown`] in `cfg` is triggered (share one with
/// the application through [`Config::with_shutdown`]) or when [`Sidecar::shutdown`] is
/// called: it stops accepting, profiles in flight end early and answer with what they
/// have, and then its thread ends.
///
/// Connections are held to [`Config::with_conn_limits`]: a header-read timeout, an idle
/// timeout and a cap on concurrent connections (64 by default; one more is answered 503
/// and closed at once), so slow or idle clients cannot exhaust the process's file
/// descriptors or hold its shutdown past the grace period.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let stop = diag::Shutdown::new();
/// let sidecar = diag::serve(
///     diag::Config::default().with_shutdown(stop.clone()),
///     diag::server::DEFAULT_SIDECAR_ADDR,
/// )
/// .await?;
/// println!("diag at http://{}/debug/pprof/", sidecar.local_addr());
/// // ... run the application; when it stops:
/// stop.trigger();
/// sidecar.wait().await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve(mut cfg: Config, addr: impl ToSocketAddrs) -> io::Result<Sidecar> {
    let (listener, local_addr) = crate::util::bind(addr).await.map_err(|(_, e)| e)?;
    if cfg.app_runtime.is_none() {
        cfg.app_runtime = tokio::runtime::Handle::try_current().ok();
    }
    let shutdown = cfg.shutdown.clone();
    let signal = shutdown.clone();
    let limits = cfg.conn_limits;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("diag-sidecar")
        .build()?;
    std::thread::Builder::new()
        .name("diag-sidecar".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                let app = crate::router::<()>(cfg);
                let served = crate::util::spawn_named("diag::sidecar", async move {
                    crate::conn::serve(listener, app, limits, signal).await
                });
                match served.await {
                    Ok(r) => r,
                    Err(e) => Err(io::Error::other(format!(
                        "the diag sidecar task failed: {e}"
                    ))),
                }
            });
            let _ = done_tx.send(result);
        })?;
    Ok(Sidecar {
        local_addr,
        shutdown,
        done: done_rx,
    })
}

/// A running sidecar listener (see [`serve`]).
#[derive(Debug)]
pub struct Sidecar {
    local_addr: SocketAddr,
    shutdown: Shutdown,
    done: tokio::sync::oneshot::Receiver<io::Result<()>>,
}

impl Sidecar {
    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Triggers the shared shutdown and waits until the sidecar has stopped.
    pub async fn shutdown(self) -> io::Result<()> {
        self.shutdown.trigger();
        self.wait().await
    }

    /// Waits until the sidecar has stopped (after its shutdown was triggered elsewhere).
    pub async fn wait(self) -> io::Result<()> {
        match self.done.await {
            Ok(result) => result,
            Err(_) => Err(io::Error::other(
                "the diag sidecar's thread ended without a result (it panicked)",
            )),
        }
    }
}
