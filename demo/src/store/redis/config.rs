//! Where and how the count is kept in Redis: the URL, the key, the timeout, the probe's
//! interval.

use std::time::Duration;

use redis::Client;

/// Where and how the count is kept in Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub(super) client: Client,
    pub(super) key: String,
    pub(super) timeout: Duration,
    pub(super) probe_interval: Duration,
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
