//! The sidecar: diag on its own listener, stopping with the application.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::shutdown::Shutdown;

/// Where the sidecar conventionally listens: loopback only, Go's usual port.
pub const DEFAULT_SIDECAR_ADDR: &str = "127.0.0.1:6060";

/// Serves diag on its own listener at `addr`, in a task of its own.
///
/// Bind to loopback (as [`DEFAULT_SIDECAR_ADDR`] does) unless something in front of it
/// controls access: these endpoints reveal the program's internals and burn CPU on
/// request. The sidecar stops when the [`Shutdown`] in `cfg` is triggered (share one with
/// the application through [`Config::with_shutdown`]) or when [`Sidecar::shutdown`] is
/// called: it stops accepting, profiles in flight end early and answer with what they
/// have, and then the task ends.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let stop = diag::Shutdown::new();
/// let sidecar = diag::serve(
///     diag::Config::default().with_shutdown(stop.clone()),
///     diag::DEFAULT_SIDECAR_ADDR,
/// )
/// .await?;
/// println!("diag at http://{}/debug/pprof/", sidecar.local_addr());
/// // ... run the application; when it stops:
/// stop.trigger();
/// sidecar.wait().await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve(cfg: Config, addr: impl ToSocketAddrs) -> io::Result<Sidecar> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let shutdown = cfg.shutdown.clone();
    let app = crate::router::<()>(cfg);
    let signal = shutdown.clone();
    let task = crate::util::spawn_named("diag::sidecar", async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { signal.triggered().await })
            .await
    });
    Ok(Sidecar {
        local_addr,
        shutdown,
        task,
    })
}

/// A running sidecar listener (see [`serve`]).
#[derive(Debug)]
pub struct Sidecar {
    local_addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<io::Result<()>>,
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
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!(
                "the diag sidecar task failed: {e}"
            ))),
        }
    }
}
