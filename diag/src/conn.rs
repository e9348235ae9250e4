//! Serving a router with the connection limits Go's `http.Server` offers: a header-read
//! timeout, an idle keep-alive timeout, a cap on concurrent connections, and a shutdown
//! that slow clients cannot hold past its grace period.
//!
//! `axum::serve` has none of them: a client that trickles a request one byte at a time,
//! or opens connections and sends nothing, holds them for ever, and enough of them exhaust
//! the process's file descriptors (every listener of the process then stops accepting).
//! The sidecar ([`crate::serve`]) uses this module; an application can serve its own
//! router through [`serve`] too (the demo does).
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

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::shutdown::Shutdown;

/// Limits on the connections one listener serves. A consuming builder; every limit has a
/// `DEFAULT_*` constant.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    shutdown_grace: Duration,
}

impl ConnLimits {
    /// How long a client may take to send a request's headers, from its first byte (Go's
    /// `ReadHeaderTimeout`). Past it the connection is closed.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// How long a keep-alive connection may sit with no request in flight and no byte
    /// moving before it is closed (Go's `IdleTimeout`). A profile in flight is not idle.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Connections served at once; one more is answered `503` and closed at once.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
    /// After shutdown begins, how long connections get to finish their requests before
    /// they are dropped.
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

    /// The defaults above.
    pub fn new() -> Self {
        Self {
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            shutdown_grace: Self::DEFAULT_SHUTDOWN_GRACE,
        }
    }

    /// Sets the header-read timeout (at least 1 ms).
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets the idle keep-alive timeout (at least 1 ms).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets the cap on concurrent connections (at least 1).
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets the grace period connections get once shutdown begins.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The header-read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    /// The idle keep-alive timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The cap on concurrent connections.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self::new()
    }
}

/// What a refused connection is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\nx-go-pprof: 1\r\n\
x-content-type-options: nosniff\r\nconnection: close\r\ncontent-length: 66\r\n\r\n\
too many connections to this listener; close idle ones and retry\r\n";

/// Serves `app` on `listener` within `limits` until `shutdown` is triggered; then stops
/// accepting, closes connections with no request in flight at once (idle ones, and heads
/// still trickling in), asks the others to finish (HTTP/1 keep-alive off, HTTP/2
/// GOAWAY), and drops those still open after the grace period. Errors accepting (such as running
/// out of file descriptors) are waited out, never returned.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: Shutdown,
) -> io::Result<()> {
    // Plain atomics and one shared sweeper rather than a semaphore permit and a timer per
    // connection: under tokio-console every semaphore operation and every sleep is
    // instrumented, and a flood of short connections would fill its event queue.
    let open = Arc::new(AtomicUsize::new(0));
    let watched: Watchlist = Arc::new(Mutex::new(Vec::new()));
    let mut conns = JoinSet::new();
    let mut sweep = tokio::time::interval(sweep_period(&limits));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            () = shutdown.triggered() => break,
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = sweep.tick() => {
                sweep_stuck(&watched, &limits);
                continue;
            }
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // EMFILE and the like: give other connections time to close rather than
                // spin on a listener that stays readable.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            // Refused at once; a best-effort answer that never waits on the client.
            let _ = stream.try_write(REFUSED);
            drop(stream);
            continue;
        }
        let slot = Slot(open.clone());
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = shutdown.clone();
        let activity = Arc::new(Activity::new());
        watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&activity));
        conns.spawn(async move {
            serve_connection(stream, app, activity, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    let grace = tokio::time::sleep(limits.shutdown_grace);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = conns.join_next() => if next.is_none() { break },
            () = &mut grace => {
                conns.abort_all();
                while conns.join_next().await.is_some() {}
                break;
            }
        }
    }
    Ok(())
}

/// The connections the sweeper looks at.
type Watchlist = Arc<Mutex<Vec<std::sync::Weak<Activity>>>>;

/// One open connection counted against the cap, until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often the sweeper looks: four times per header-read timeout (a head is cut within
/// 1.25 of it), at most once a second.
fn sweep_period(limits: &ConnLimits) -> Duration {
    (limits.header_read_timeout / 4)
        .min(limits.idle_timeout / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Tells every stuck connection to close, and forgets the closed ones.
fn sweep_stuck(watched: &Watchlist, limits: &ConnLimits) {
    let mut list = watched.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|weak| {
        let Some(a) = weak.upgrade() else {
            return false;
        };
        if let Some(why) = verdict(&a, limits, a.now()) {
            tracing::debug!(target: "diag::conn", "closing a connection: {why}");
            a.stuck.notify_one();
            return false;
        }
        true
    });
}

/// The moments that decide whether a connection is stuck, in milliseconds since `origin`.
#[derive(Debug)]
struct Activity {
    origin: Instant,
    /// When a byte last moved either way.
    last_io: AtomicU64,
    /// When the first byte of the request being read arrived (`u64::MAX`: none pending).
    header_started: AtomicU64,
    /// Requests whose handler has not answered yet.
    in_flight: AtomicUsize,
    /// Woken by the sweeper when the connection is stuck.
    stuck: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last_io: AtomicU64::new(0),
            header_started: AtomicU64::new(u64::MAX),
            in_flight: AtomicUsize::new(0),
            stuck: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

/// The socket, noting when bytes move.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let a = &self.activity;
            let now = a.now();
            a.last_io.store(now, Ordering::Relaxed);
            if a.in_flight.load(Ordering::Relaxed) == 0 {
                // Bytes with no request in flight: the next request's head has begun.
                let _ = a.header_started.compare_exchange(
                    u64::MAX,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                let now = self.activity.now();
                self.activity.last_io.store(now, Ordering::Relaxed);
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                let now = self.activity.now();
                self.activity.last_io.store(now, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Counts a request in flight from the moment hyper hands it over until its handler's
/// future completes or is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.header_started.store(u64::MAX, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.now();
        self.0.last_io.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the watchdog closes a connection at `now`, if it should.
fn verdict(a: &Activity, limits: &ConnLimits, now: u64) -> Option<&'static str> {
    let header = limits.header_read_timeout.as_millis() as u64;
    let idle = limits.idle_timeout.as_millis() as u64;
    let started = a.header_started.load(Ordering::Relaxed);
    if started != u64::MAX {
        return (now.saturating_sub(started) >= header).then_some("header read timeout");
    }
    if a.in_flight.load(Ordering::Relaxed) > 0 {
        return None;
    }
    let quiet = now.saturating_sub(a.last_io.load(Ordering::Relaxed));
    (quiet >= idle).then_some("idle timeout")
}

async fn serve_connection(stream: TcpStream, app: Router, activity: Arc<Activity>, stop: Shutdown) {
    use hyper_util::server::conn::auto::Builder;
    use tower::ServiceExt as _;

    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let counted = activity.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let guard = InFlight::begin(&counted);
        let app = app.clone();
        async move {
            let res = app.oneshot(req.map(axum::body::Body::new)).await;
            drop(guard);
            res
        }
    });
    // No timer for hyper: the sweeper in `serve` keeps the header-read and idle timeouts.
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            // Stuck: dropping the connection closes the socket.
            () = activity.stuck.notified() => return,
            () = stop.triggered(), if !stopping => {
                if activity.in_flight.load(Ordering::Relaxed) == 0 {
                    // Idle, or a head still trickling in: nothing to finish, so nothing
                    // may hold the shutdown.
                    return;
                }
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(last_io: u64) -> Activity {
        let a = Activity::new();
        a.last_io.store(last_io, Ordering::Relaxed);
        a
    }

    #[test]
    fn a_quiet_connection_without_requests_is_idle() {
        let limits = ConnLimits::new().with_idle_timeout(Duration::from_secs(1));
        let a = activity(100_000);
        assert_eq!(verdict(&a, &limits, 100_400), None);
        assert_eq!(verdict(&a, &limits, 101_000), Some("idle timeout"));
        // A request in flight (a long profile) is never idle, however quiet.
        a.in_flight.store(1, Ordering::Relaxed);
        assert_eq!(verdict(&a, &limits, 200_000), None);
    }

    #[test]
    fn a_head_that_takes_too_long_is_cut() {
        let limits = ConnLimits::new().with_header_read_timeout(Duration::from_secs(2));
        let a = activity(100_000);
        a.header_started.store(99_000, Ordering::Relaxed);
        assert_eq!(verdict(&a, &limits, 100_000), None);
        assert_eq!(verdict(&a, &limits, 101_000), Some("header read timeout"));
        // Trickling bytes does not help: the clock runs from the head's first byte.
        a.last_io.store(101_000, Ordering::Relaxed);
        assert_eq!(verdict(&a, &limits, 101_000), Some("header read timeout"));
    }
}
