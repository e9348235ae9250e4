//! Where the count lives: in this process's memory (the default), or in Redis, where every
//! replica shares one count and a restart of the demo does not lose it.

mod redis;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use self::redis::RedisConfig;
use self::redis::RedisStore;
use crate::metrics::StoreMetrics;

/// Where the count is kept.
#[derive(Debug)]
pub(crate) enum Store {
    /// An atomic in this process: lost on restart, one count per replica.
    Memory(AtomicU64),
    /// A key in Redis, shared by every process pointed at it.
    Redis(Arc<RedisStore>),
}

impl Store {
    /// The in-memory store, at zero.
    pub(crate) fn memory() -> Self {
        Self::Memory(AtomicU64::new(0))
    }

    /// A Redis store: tries to connect once (within the command timeout), then keeps a
    /// probe running that reconnects and watches Redis' health. Needs a tokio runtime.
    pub(crate) async fn redis(config: RedisConfig, metrics: StoreMetrics) -> Self {
        Self::Redis(RedisStore::start(config, metrics).await)
    }

    /// The store's name, as the logs, spans and metrics label it: `memory` or `redis`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// What the start-up line says about it.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Memory(_) => {
                "memory (the embedded default: one count per process, lost on restart; \
                 --redis URL or DEMO_REDIS keeps it in Redis)"
                    .to_owned()
            }
            Self::Redis(r) => r.describe(),
        }
    }

    /// Adds one and answers the new value.
    pub(crate) async fn incr(&self) -> Result<u64, StoreError> {
        match self {
            Self::Memory(n) => Ok(n.fetch_add(1, Ordering::SeqCst) + 1),
            Self::Redis(r) => r.incr().await,
        }
    }

    /// The count as this process last saw it (the in-memory count itself, or the highest
    /// value Redis answered this process since it started or since the count was reset).
    pub(crate) fn last_seen(&self) -> u64 {
        match self {
            Self::Memory(n) => n.load(Ordering::SeqCst),
            Self::Redis(r) => r.last_seen(),
        }
    }

    /// `Ok` while the store can take an increment; otherwise why not (for `/readyz`).
    pub(crate) fn available(&self) -> Result<(), String> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.available(),
        }
    }
}

/// Why an increment has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// No connection to the store: the increment was not sent, so it did not happen.
    Unavailable,
    /// Sent, with no answer within the timeout: the store may or may not have applied it.
    Timeout,
    /// The connection broke with the increment in flight: it may or may not have been
    /// applied.
    Connection,
    /// The store answered with an error (for example the key holds a string that is not
    /// a number): nothing was added.
    Response,
}

impl StoreErrorKind {
    /// The value of the `kind` label of `store_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Response => "response",
        }
    }

    /// Whether the increment may have been applied although nobody saw its answer. Such
    /// increments are never retried (INCR is not idempotent: a retry could count one
    /// request twice) and are counted in `store_uncertain_increments_total`.
    pub fn uncertain(self) -> bool {
        matches!(self, Self::Timeout | Self::Connection)
    }
}

/// An increment that has no answer: which kind of failure, and a sentence for the client.
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    pub(crate) fn new(kind: StoreErrorKind, message: String) -> Self {
        Self { kind, message }
    }

    /// Which kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}
