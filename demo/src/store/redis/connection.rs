//! The store's connection: the probe's round (PING, or reconnect), connecting with what a
//! new connection tells (a restart, a reset), and the up/down state requests read.

use std::sync::atomic::Ordering;
use std::time::Instant;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::{Live, RedisStore, STORE, classify, lock};
use crate::store::StoreErrorKind;

impl RedisStore {
    /// One probe round: reconnect when there is no connection, else PING.
    pub(super) async fn check(&self) {
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
        let mut conn = self.open().await?;
        let (run_id, count) = self.read_state(&mut conn).await?;
        self.note_run_id(&run_id);
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

    /// "no answer to WHAT within N ms".
    fn no_answer(&self, what: &str) -> String {
        format!(
            "no answer to {what} within {} ms",
            self.config.timeout.as_millis()
        )
    }

    /// A new multiplexed connection, within the timeout.
    async fn open(&self) -> Result<MultiplexedConnection, String> {
        let timeout = self.config.timeout;
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
        match conn {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => {
                self.metrics
                    .error(STORE, "connect", StoreErrorKind::Unavailable.as_str());
                Err(format!("cannot connect: {e}"))
            }
            Err(_) => {
                self.metrics
                    .error(STORE, "connect", StoreErrorKind::Timeout.as_str());
                Err(self.no_answer("connecting"))
            }
        }
    }

    /// Redis' `run_id` (INFO server) and the count its key holds (0 when unset).
    async fn read_state(&self, conn: &mut MultiplexedConnection) -> Result<(String, u64), String> {
        let timeout = self.config.timeout;
        let info = tokio::time::timeout(
            timeout,
            redis::cmd("INFO").arg("server").query_async::<String>(conn),
        )
        .await
        .map_err(|_| self.no_answer("INFO server"))?
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
                .query_async::<Option<String>>(conn),
        )
        .await
        .map_err(|_| self.no_answer("GET"))?
        .map_err(|e| format!("GET {:?} failed: {e}", self.config.key))?;
        let count = value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok((run_id, count))
    }

    /// Keeps `run_id`, logging a restart when it differs from the last connection's.
    fn note_run_id(&self, run_id: &str) {
        let previous = lock(&self.run_id).replace(run_id.to_owned());
        if previous.as_ref().is_some_and(|p| p != run_id) {
            tracing::warn!(
                store = STORE,
                address = %self.address,
                previous_run_id = previous.as_deref().unwrap_or(""),
                run_id = %run_id,
                "Redis restarted (its run_id changed)"
            );
        }
    }

    pub(super) fn is_live(&self, generation: u64) -> bool {
        lock(&self.live)
            .as_ref()
            .is_some_and(|l| l.generation == generation)
    }

    /// Drops the connection `generation` if it is still the live one.
    pub(super) fn forget(&self, generation: u64) {
        let mut live = lock(&self.live);
        if live.as_ref().is_some_and(|l| l.generation == generation) {
            *live = None;
        }
    }

    pub(super) fn mark_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            self.metrics.set_up(STORE, true);
            tracing::info!(store = STORE, address = %self.address, "Redis is available");
        }
    }

    pub(super) fn mark_down(&self, reason: String) {
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
