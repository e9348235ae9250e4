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

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

use super::{StoreError, StoreErrorKind};
use crate::metrics::StoreMetrics;

const STORE: &str = "redis";

/// Where and how the count is kept in Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    client: Client,
    key: String,
    timeout: Duration,
    probe_interval: Duration,
}

impl RedisConfig {
    /// The key the count is kept under unless told otherwise.
    pub const DEFAULT_KEY: &'static str = "demo:count";
    /// How long any one command may take unless told otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
    /// How often the probe checks Redis (PING) or tries to reconnect.
    pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);

    /// Redis at `url` (`redis://[:PASSWORD@]HOST[:PORT][/DB]` or `unix:///PATH`), with the
    /// default key, timeout and probe interval. Nothing is connected yet.
    pub fn new(url: &str) -> Result<Self, String> {
        let client = Client::open(url).map_err(|e| {
            format!(
                "invalid Redis URL {}: {e}; expected redis://HOST[:PORT][/DB]",
                redact(url)
            )
        })?;
        Ok(Self {
            client,
            key: Self::DEFAULT_KEY.to_owned(),
            timeout: Self::DEFAULT_TIMEOUT,
            probe_interval: Self::DEFAULT_PROBE_INTERVAL,
        })
    }

    /// The key the count is kept under.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// How long connecting and each command may take (at least 1 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How often the probe checks Redis or tries to reconnect (at least 10 ms).
    pub fn with_probe_interval(mut self, every: Duration) -> Self {
        self.probe_interval = every.max(Duration::from_millis(10));
        self
    }

    /// Redis' address (`host:port` or a socket path), without any password.
    pub fn address(&self) -> String {
        self.client.get_connection_info().addr().to_string()
    }
}

/// A URL with its password (if any) replaced, for error messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

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

    /// One probe round: reconnect when there is no connection, else PING.
    async fn check(&self) {
        let live = lock(&self.live).clone();
        let Some(Live {
            generation,
            mut conn,
        }) = live
        else {
            match self.connect().await {
                Ok(()) => self.mark_up(),
                Err(reason) => self.mark_down(reason),
            }
            return;
        };
        let timeout = self.config.timeout;
        let start = Instant::now();
        let pong =
            tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
                .await;
        self.metrics.observe(STORE, "ping", start.elapsed());
        let reason = match pong {
            Ok(Ok(_)) => {
                self.mark_up();
                return;
            }
            Ok(Err(e)) => {
                self.metrics.error(STORE, "ping", classify(&e).as_str());
                format!("PING failed: {e}")
            }
            Err(_) => {
                self.metrics
                    .error(STORE, "ping", StoreErrorKind::Timeout.as_str());
                format!("no answer to PING within {} ms", timeout.as_millis())
            }
        };
        // A fresh connection on the next round; requests meanwhile fail at once.
        self.forget(generation);
        self.mark_down(reason);
    }

    /// Connects, reads Redis' run_id and the count, and reports a restart or a reset.
    async fn connect(&self) -> Result<(), String> {
        let timeout = self.config.timeout;
        let within = |what: &str| format!("no answer to {what} within {} ms", timeout.as_millis());
        // Responses are timed here, around each command, not by the client: its own timeout
        // error does not say it is one (`is_timeout()` is false), which would pass a slow
        // Redis for a broken connection.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        let start = Instant::now();
        let conn = tokio::time::timeout(
            timeout,
            self.config
                .client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        self.metrics.observe(STORE, "connect", start.elapsed());
        let mut conn = match conn {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                self.metrics
                    .error(STORE, "connect", StoreErrorKind::Unavailable.as_str());
                return Err(format!("cannot connect: {e}"));
            }
            Err(_) => {
                self.metrics
                    .error(STORE, "connect", StoreErrorKind::Timeout.as_str());
                return Err(within("connecting"));
            }
        };
        let info = tokio::time::timeout(
            timeout,
            redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| within("INFO server"))?
        .map_err(|e| format!("INFO server failed: {e}"))?;
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .unwrap_or_default();
        let value = tokio::time::timeout(
            timeout,
            redis::cmd("GET")
                .arg(&self.config.key)
                .query_async::<Option<String>>(&mut conn),
        )
        .await
        .map_err(|_| within("GET"))?
        .map_err(|e| format!("GET {:?} failed: {e}", self.config.key))?;
        let count = value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);

        let previous = lock(&self.run_id).replace(run_id.clone());
        let restarted = previous.as_ref().is_some_and(|p| *p != run_id);
        if restarted {
            tracing::warn!(
                store = STORE,
                address = %self.address,
                previous_run_id = previous.as_deref().unwrap_or(""),
                run_id = %run_id,
                "Redis restarted (its run_id changed)"
            );
        }
        let seen = self.last_seen.load(Ordering::SeqCst);
        if count < seen
            && self
                .last_seen
                .compare_exchange(seen, count, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.count_reset(
                seen,
                count,
                "on reconnecting, the key held less than seen before",
            );
        }
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.live) = Some(Live { generation, conn });
        tracing::info!(
            store = STORE,
            address = %self.address,
            key = %self.config.key,
            run_id = %run_id,
            count,
            "connected to Redis"
        );
        Ok(())
    }

    fn is_live(&self, generation: u64) -> bool {
        lock(&self.live)
            .as_ref()
            .is_some_and(|l| l.generation == generation)
    }

    /// Drops the connection `generation` if it is still the live one.
    fn forget(&self, generation: u64) {
        let mut live = lock(&self.live);
        if live.as_ref().is_some_and(|l| l.generation == generation) {
            *live = None;
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            self.metrics.set_up(STORE, true);
            tracing::info!(store = STORE, address = %self.address, "Redis is available");
        }
    }

    fn mark_down(&self, reason: String) {
        let was_up = self.up.swap(false, Ordering::SeqCst);
        if was_up {
            self.metrics.set_up(STORE, false);
            tracing::warn!(
                store = STORE,
                address = %self.address,
                reason = %reason,
                "Redis is unavailable: GET / answers 503 and /readyz is unready until it is back"
            );
        }
        *lock(&self.down_reason) = reason;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:secret@db:6379/0"), "redis://***@db:6379/0");
        assert_eq!(redact("redis://u:p@w@db/1"), "redis://***@db/1");
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
        assert_eq!(redact("nonsense"), "nonsense");
    }

    #[test]
    fn bad_urls_are_refused_without_their_password() {
        let e = RedisConfig::new("http://:pw@db").unwrap_err();
        assert!(e.contains("invalid Redis URL") && !e.contains("pw"), "{e}");
    }
}
