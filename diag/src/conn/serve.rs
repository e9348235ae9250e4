//! The accept loop and each connection's service.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::io::{HyperIo, Spawn, speaks_h2};
use super::limits::ConnLimits;
use super::watch::{Activity, InFlight, Slot, Watched, Watchlist, sweep_period, sweep_stuck};
use crate::shutdown::Shutdown;

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
        if open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections() {
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
    let grace = tokio::time::sleep(limits.shutdown_grace());
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

async fn serve_connection(stream: TcpStream, app: Router, activity: Arc<Activity>, stop: Shutdown) {
    use hyper::server::conn::{http1, http2};
    use tower::ServiceExt as _;

    // HTTP/1.1 or h2c from the first bytes; a client that sends nothing is the sweeper's
    // (header-read timeout), and a shutdown meanwhile has nothing to finish.
    let h2 = tokio::select! {
        h2 = speaks_h2(&stream) => matches!(h2, Ok(true)),
        () = activity.stuck.notified() => return,
        () = stop.triggered() => return,
    };
    let io = HyperIo(Watched {
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
    if h2 {
        let conn = http2::Builder::new(Spawn).serve_connection(io, service);
        drive(conn, |c| c.graceful_shutdown(), &activity, &stop).await;
    } else {
        let conn = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service)
            .with_upgrades();
        drive(conn, |c| c.graceful_shutdown(), &activity, &stop).await;
    }
}

/// Runs a connection to its end, dropping it when the sweeper finds it stuck; on shutdown
/// drops it when no request is in flight, or else lets those requests finish (`graceful`:
/// HTTP/1 keep-alive off, HTTP/2 GOAWAY).
async fn drive<C: Future>(
    conn: C,
    graceful: impl FnOnce(Pin<&mut C>),
    activity: &Activity,
    stop: &Shutdown,
) {
    tokio::pin!(conn);
    let mut graceful = Some(graceful);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            // Stuck: dropping the connection closes the socket.
            () = activity.stuck.notified() => return,
            () = stop.triggered(), if graceful.is_some() => {
                if activity.in_flight.load(Ordering::Relaxed) == 0 {
                    // Idle, or a head still trickling in: nothing to finish, so nothing
                    // may hold the shutdown.
                    return;
                }
                if let Some(graceful) = graceful.take() {
                    graceful(conn.as_mut());
                }
            }
        }
    }
}
