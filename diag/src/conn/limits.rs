//! The limits one listener's connections are served within.

use std::time::Duration;

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
