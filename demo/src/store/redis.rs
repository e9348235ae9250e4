//! The count in Redis: one `INCR` per request on a multiplexed connection, a timeout on
//! every command, and a probe that reconnects and watches Redis' health.
//!
//! Why not redis-rs' `ConnectionManager`: its commands wait for a reconnection in
//! progress and are then sent on the new connection, so a caller that gives up cannot tell
//! whether its INCR reached Redis. Here a command is only ever sent on a connection that
//! is already up; with none, the request fails at once and certainly uncounted, and the
//! probe (every second) is the only one that connects.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::RedisError;
use redis::aio::MultiplexedConnection;

use super::{StoreError, StoreErrorKind};
use crate::metrics::StoreMetrics;

mod config;
mod connection;

pub use self::config::RedisConfig;

const STORE: &str = "redis";

/// The live connection and which one it is (so that a failure on an old one does not
/// drop its replacement).
#[derive(Clone)]
struct Live {
    generation: u64,
    conn: MultiplexedConnection,
}

/// The count in Redis.
pub(crate) struct RedisStore {
    config: RedisConfig,
    address: String,
    metrics: StoreMetrics,
    live: Mutex<Option<Live>>,
    generations: AtomicU64,
    /// Whether the last command (probe or request) succeeded.
    up: AtomicBool,
    down_reason: Mutex<String>,
    /// The highest count this process saw since it started or since the last reset.
    last_seen: AtomicU64,
    /// Redis' `run_id` (INFO server) at the last connection: it changes on every restart.
    run_id: Mutex<Option<String>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("key", &self.config.key)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which kind of failure a client error is: Redis' own error answers added nothing; any
/// other failure after sending (I/O, a broken or desynchronised connection) leaves the
/// command's fate unknown.
fn classify(e: &RedisError) -> StoreErrorKind {
    if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if matches!(
        e.kind(),
        redis::ErrorKind::Server(_)
            | redis::ErrorKind::Extension
            | redis::ErrorKind::UnexpectedReturnType
    ) {
        StoreErrorKind::Response
    } else {
        StoreErrorKind::Connection
    }
}

impl RedisStore {
    /// Connects once (bounded by the timeout), then keeps the probe running for as long as
    /// the store lives.
    pub(crate) async fn start(config: RedisConfig, metrics: StoreMetrics) -> Arc<Self> {
        let address = config.address();
        let store = Arc::new(Self {
            config,
            address,
            metrics,
            live: Mutex::new(None),
            generations: AtomicU64::new(0),
            up: AtomicBool::new(false),
            down_reason: Mutex::new("not connected yet".to_owned()),
            last_seen: AtomicU64::new(0),
            run_id: Mutex::new(None),
        });
        store.metrics.set_up(STORE, false);
        store.check().await;
        if let Err(reason) = store.available() {
            tracing::warn!(
                store = STORE,
                address = %store.address,
                reason = %reason,
                retry_every_ms = store.config.probe_interval.as_millis() as u64,
                "Redis is unavailable at start; GET / answers 503 and /readyz is unready until it answers"
            );
        }
        let every = store.config.probe_interval;
        crate::spawn_named("demo::redis_probe", probe(Arc::downgrade(&store), every));
        store
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "redis at {}, key {:?}, timeout {} ms",
            self.address,
            self.config.key,
            self.config.timeout.as_millis()
        )
    }

    pub(crate) fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::SeqCst)
    }

    pub(crate) fn available(&self) -> Result<(), String> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(self.unavailable(&lock(&self.down_reason)))
        }
    }

    fn unavailable(&self, reason: &str) -> String {
        format!(
            "the count's store (redis at {}) is unavailable: {reason}",
            self.address
        )
    }

    /// `INCR key` on the live connection, never retried.
    pub(crate) async fn incr(&self) -> Result<u64, StoreError> {
        let Some(live) = lock(&self.live).clone() else {
            let reason = lock(&self.down_reason).clone();
            return Err(self.failed(StoreError::new(
                StoreErrorKind::Unavailable,
                self.unavailable(&format!("{reason}; nothing was counted")),
            )));
        };
        let Live {
            generation,
            mut conn,
        } = live;
        let before = self.last_seen.load(Ordering::SeqCst);
        let timeout = self.config.timeout;
        let mut abandoned = Abandoned {
            store: self,
            armed: true,
        };
        let start = Instant::now();
        let answer = tokio::time::timeout(
            timeout,
            redis::cmd("INCR")
                .arg(&self.config.key)
                .query_async::<i64>(&mut conn),
        )
        .await;
        abandoned.armed = false;
        self.metrics.observe(STORE, "incr", start.elapsed());
        const UNSURE: &str = "the increment may or may not have been made, and is not retried";
        let error = match answer {
            Ok(Ok(n)) => match u64::try_from(n) {
                Ok(n) => {
                    self.saw(before, n);
                    if self.is_live(generation) {
                        self.mark_up();
                    }
                    return Ok(n);
                }
                Err(_) => StoreError::new(
                    StoreErrorKind::Response,
                    self.unavailable(&format!(
                        "INCR {:?} answered {n}: the key holds a negative number",
                        self.config.key
                    )),
                ),
            },
            Ok(Err(e)) => {
                let kind = classify(&e);
                let message = match kind {
                    StoreErrorKind::Response => format!("it answered INCR with an error: {e}"),
                    _ => {
                        self.forget(generation);
                        self.mark_down(format!("the connection broke: {e}"));
                        format!("the connection broke with INCR in flight ({e}); {UNSURE}")
                    }
                };
                StoreError::new(kind, self.unavailable(&message))
            }
            Err(_) => {
                let reason = format!("no answer to INCR within {} ms", timeout.as_millis());
                self.mark_down(reason.clone());
                StoreError::new(
                    StoreErrorKind::Timeout,
                    self.unavailable(&format!("{reason}; {UNSURE}")),
                )
            }
        };
        Err(self.failed(error))
    }

    /// Counts, logs and hands back a failed increment.
    fn failed(&self, error: StoreError) -> StoreError {
        let kind = error.kind();
        self.metrics.error(STORE, "incr", kind.as_str());
        if kind.uncertain() {
            self.metrics.uncertain(STORE);
        }
        if kind == StoreErrorKind::Unavailable {
            // Redis going down was logged once, at warn; each request's 503 is in its
            // `answered` line.
            tracing::debug!(store = STORE, kind = kind.as_str(), error = %error, "increment not sent");
        } else {
            tracing::warn!(
                store = STORE,
                kind = kind.as_str(),
                uncertain = kind.uncertain(),
                error = %error,
                "increment failed"
            );
        }
        error
    }

    /// Records an answer; an answer no higher than one seen before the INCR was sent means
    /// the count went back (INCR runs after it was sent, and the count only grows).
    fn saw(&self, before: u64, n: u64) {
        if n > before {
            self.last_seen.fetch_max(n, Ordering::SeqCst);
            return;
        }
        loop {
            let current = self.last_seen.load(Ordering::SeqCst);
            if current < before {
                // Another request has already reported this reset.
                self.last_seen.fetch_max(n, Ordering::SeqCst);
                return;
            }
            if self
                .last_seen
                .compare_exchange(current, n, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                self.count_reset(
                    current,
                    n,
                    "an INCR answered less than a count seen before it",
                );
                return;
            }
        }
    }

    fn count_reset(&self, was: u64, now: u64, how: &str) {
        self.metrics.reset(STORE);
        tracing::warn!(
            store = STORE,
            address = %self.address,
            key = %self.config.key,
            was,
            now,
            detected = how,
            "count reset: the count in Redis went back from {was} to {now} (Redis restarted \
             without persistence, was flushed, or the key was deleted)"
        );
    }
}

/// An INCR whose request was dropped while it was in flight (its client went away): it
/// may have been applied and nobody will know its answer, so it counts as uncertain
/// (`kind="cancelled"`), keeping the count in Redis within the 200s answered plus the
/// uncertain increments.
struct Abandoned<'a> {
    store: &'a RedisStore,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.metrics.error(STORE, "incr", "cancelled");
            self.store.metrics.uncertain(STORE);
        }
    }
}

/// Checks Redis every `every` for as long as the store lives.
async fn probe(store: Weak<RedisStore>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        store.check().await;
    }
}
