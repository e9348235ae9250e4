//! What decides that a connection is stuck: when bytes last moved, when the head being read
//! began, the requests in flight; and the sweeper that closes stuck connections.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::limits::ConnLimits;

/// The connections the sweeper looks at.
pub(super) type Watchlist = Arc<Mutex<Vec<std::sync::Weak<Activity>>>>;

/// One open connection counted against the cap, until dropped.
pub(super) struct Slot(pub(super) Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often the sweeper looks: four times per header-read timeout (a head is cut within
/// 1.25 of it), at most once a second.
pub(super) fn sweep_period(limits: &ConnLimits) -> Duration {
    (limits.header_read_timeout() / 4)
        .min(limits.idle_timeout() / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Tells every stuck connection to close, and forgets the closed ones.
pub(super) fn sweep_stuck(watched: &Watchlist, limits: &ConnLimits) {
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
pub(super) struct Activity {
    origin: Instant,
    /// When a byte last moved either way.
    last_io: AtomicU64,
    /// When the first byte of the request being read arrived (`u64::MAX`: none pending).
    header_started: AtomicU64,
    /// Requests whose handler has not answered yet.
    pub(super) in_flight: AtomicUsize,
    /// Woken by the sweeper when the connection is stuck.
    pub(super) stuck: tokio::sync::Notify,
}

impl Activity {
    pub(super) fn new() -> Self {
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
pub(super) struct Watched {
    pub(super) inner: TcpStream,
    pub(super) activity: Arc<Activity>,
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
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(super) fn begin(activity: &Arc<Activity>) -> Self {
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
    let header = limits.header_read_timeout().as_millis() as u64;
    let idle = limits.idle_timeout().as_millis() as u64;
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
