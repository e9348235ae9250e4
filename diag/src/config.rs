//! Configuration: where diag answers, who may ask, and how much it may cost.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::shutdown::Shutdown;

mod prefix;
mod recorder;

pub use prefix::PrefixError;
pub use recorder::CpuRecorder;

/// Environment variable read by [`Config::with_default_env`] for the access token.
pub const TOKEN_ENV: &str = "DIAG_TOKEN";

/// How diag is mounted and what it allows.
///
/// A consuming builder: start from [`Config::default`] (or [`Config::new`]) and chain the
/// `with_*` methods. Every limit has a `DEFAULT_*` constant.
///
/// ```
/// use std::time::Duration;
/// let cfg = diag::Config::new()
///     .with_prefix("/internal/pprof")?
///     .with_max_seconds(120)
///     .with_max_concurrent(2)
///     .with_token("s3cret");
/// assert_eq!(cfg.prefix(), "/internal/pprof");
/// # Ok::<(), diag::config::PrefixError>(())
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) prefix: String,
    pub(crate) token: Option<String>,
    pub(crate) max_seconds: u64,
    pub(crate) max_concurrent: usize,
    pub(crate) retry_after: Duration,
    pub(crate) shutdown: Shutdown,
    /// Where the console listens, for the index page's attach command.
    pub(crate) console_addr: Option<SocketAddr>,
    pub(crate) min_dump_interval: Duration,
    /// The application's runtime, whose tasks a dump shows, when diag is served from a
    /// runtime of its own (the sidecar); `None`: the runtime serving the request.
    pub(crate) app_runtime: Option<tokio::runtime::Handle>,
    /// The sidecar's connection limits.
    pub(crate) conn_limits: crate::conn::ConnLimits,
    /// The always-on CPU recorder, when on.
    pub(crate) cpu_recorder: Option<CpuRecorder>,
    /// Whether jemalloc's heap samples are unwound by diag's frame-pointer walker.
    #[cfg_attr(not(feature = "heap"), allow(dead_code))]
    pub(crate) heap_frame_pointers: bool,
}

impl Config {
    /// Where the endpoints live unless told otherwise, as in Go.
    pub const DEFAULT_PREFIX: &'static str = "/debug/pprof";
    /// The longest `seconds` a request may ask for.
    pub const DEFAULT_MAX_SECONDS: u64 = 300;
    /// How many heavy operations (profiles, dumps) may run at once.
    pub const DEFAULT_MAX_CONCURRENT: usize = 4;
    /// The `Retry-After` given with a 429 when the heavy-operation cap is reached.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
    /// The shortest time between two task dumps unless configured: within it, the last
    /// dump is served again (with its age), so a scraper asking every 15 s costs one dump
    /// a minute.
    pub const DEFAULT_MIN_DUMP_INTERVAL: Duration = Duration::from_secs(60);

    /// The defaults: prefix `/debug/pprof`, no token, `seconds` capped at 300, at most 4
    /// heavy operations at once.
    pub fn new() -> Self {
        Self {
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            token: None,
            max_seconds: Self::DEFAULT_MAX_SECONDS,
            max_concurrent: Self::DEFAULT_MAX_CONCURRENT,
            retry_after: Self::DEFAULT_RETRY_AFTER,
            min_dump_interval: Self::DEFAULT_MIN_DUMP_INTERVAL,
            app_runtime: None,
            shutdown: Shutdown::new(),
            console_addr: None,
            conn_limits: crate::conn::ConnLimits::new(),
            cpu_recorder: None,
            heap_frame_pointers: true,
        }
    }

    /// Reads the token from the `DIAG_TOKEN` environment variable when it is set and not
    /// empty. A token already set with [`Config::with_token`] is replaced.
    pub fn with_default_env(mut self) -> Self {
        if let Ok(token) = std::env::var(TOKEN_ENV) {
            if !token.is_empty() {
                self.token = Some(token);
            }
        }
        self
    }

    /// Serves the endpoints under `prefix` instead of `/debug/pprof`.
    ///
    /// A leading `/` is added when missing and a trailing one is dropped; `"/"` and `""`
    /// are the root. What is left must be `/`-separated segments of ASCII letters, digits
    /// and `-._~` (not `.` or `..`); anything else (a capture such as `:id`, `*rest` or
    /// `{id}`, an empty segment as in `a//b`, a space, `?`, `%`, ...) is an error naming the
    /// prefix, where axum would panic when the router is built or the prefix would never
    /// match a request.
    ///
    /// ```
    /// let cfg = diag::Config::new().with_prefix("internal/pprof/")?;
    /// assert_eq!(cfg.prefix(), "/internal/pprof");
    /// assert!(diag::Config::new().with_prefix("/debug/:id").is_err());
    /// # Ok::<(), diag::config::PrefixError>(())
    /// ```
    pub fn with_prefix(mut self, prefix: impl AsRef<str>) -> Result<Self, PrefixError> {
        self.prefix = prefix::normalise(prefix.as_ref())?;
        Ok(self)
    }

    /// Requires this token on every request: as `Authorization: Bearer TOKEN`, or as the
    /// password of Basic auth (what `go tool pprof http://:TOKEN@host/...` sends).
    /// An empty token turns the check off.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    /// Caps the `seconds` parameter of every timed endpoint (at least 1).
    pub fn with_max_seconds(mut self, max_seconds: u64) -> Self {
        self.max_seconds = max_seconds.max(1);
        self
    }

    /// Caps how many heavy operations run at once (at least 1); beyond it requests get
    /// `429 Too Many Requests` with `Retry-After`.
    pub fn with_max_concurrent(mut self, max_concurrent: usize) -> Self {
        self.max_concurrent = max_concurrent.max(1);
        self
    }

    /// The `Retry-After` a `429 Too Many Requests` carries when the heavy-operation cap is
    /// reached ([`Config::DEFAULT_RETRY_AFTER`] unless set). Sent in whole seconds, at
    /// least 1.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after.max(Duration::from_secs(1));
        self
    }

    /// The shortest time between two task dumps (`/goroutine`, `/tasks`); within it the
    /// last dump is served again, saying how old it is. `Duration::ZERO` dumps on every
    /// request. A dump re-polls every traced future once (see `diag::tasks`).
    pub fn with_min_dump_interval(mut self, interval: Duration) -> Self {
        self.min_dump_interval = interval;
        self
    }

    /// Ties diag to the application's shutdown: once `shutdown` is triggered, a profile
    /// in flight ends early and answers with what it has, and new ones are refused.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The sidecar's connection limits ([`crate::serve`]): header-read and idle timeouts,
    /// concurrent connections, shutdown grace. Routers merged into the application's own
    /// listener are under that listener's limits instead (see [`crate::conn::serve`]).
    pub fn with_conn_limits(mut self, limits: crate::conn::ConnLimits) -> Self {
        self.conn_limits = limits;
        self
    }

    /// Whether jemalloc's heap samples are unwound by diag's frame-pointer walker (the
    /// default, `true`) or by jemalloc's own unwinder (libgcc's `_Unwind_Backtrace`,
    /// several times slower per sample).
    ///
    /// The walker is installed, through jemalloc's `experimental.hooks.prof_backtrace`,
    /// only when a probe allocation unwound by both gives the same frames from the
    /// allocating function up; `false` writes jemalloc's previous unwinder back. The
    /// setting is process-wide (jemalloc has one hook): the router built last decides.
    /// Needs the `heap` and `cpu` features on Linux (x86_64, aarch64); the heap
    /// profile's `X-Diag-Heap-Unwinder` header and comment say which unwinder is in place.
    pub fn with_heap_frame_pointers(mut self, on: bool) -> Self {
        self.heap_frame_pointers = on;
        self
    }

    /// Tells the index page that `console`'s server is where tokio-console attaches, so
    /// that it shows the command (`tokio-console http://ADDR`, with the address the server
    /// is bound to).
    #[cfg(feature = "console")]
    #[cfg_attr(docsrs, doc(cfg(feature = "console")))]
    pub fn with_console(mut self, console: &crate::console::ConsoleServer) -> Self {
        self.console_addr = Some(console.local_addr());
        self
    }

    /// Turns on the always-on CPU recorder: diag samples the process's CPU continuously
    /// at a low rate and keeps the last minutes, which `/profile?since=SECONDS` (or
    /// `start`/`end`) answers at once. Off unless set. It stops when the
    /// [`Shutdown`] diag watches is triggered. One recorder runs per process: a later
    /// router built with one replaces it.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cfg = diag::Config::new()
    ///     .with_cpu_recorder(diag::config::CpuRecorder::new(Duration::from_secs(600)));
    /// assert_eq!(cfg.cpu_recorder().map(|r| r.frequency()), Some(19));
    /// ```
    pub fn with_cpu_recorder(mut self, recorder: CpuRecorder) -> Self {
        self.cpu_recorder = Some(recorder);
        self
    }

    /// The CPU recorder's settings, when it is on.
    pub fn cpu_recorder(&self) -> Option<&CpuRecorder> {
        self.cpu_recorder.as_ref()
    }

    /// The prefix the endpoints are served under (`""` for the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cap on `seconds`.
    pub fn max_seconds(&self) -> u64 {
        self.max_seconds
    }

    /// The cap on concurrent heavy operations.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// The `Retry-After` given with a 429.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// Whether a token is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The shutdown signal diag watches.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token itself.
        f.debug_struct("Config")
            .field("prefix", &self.prefix)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_seconds", &self.max_seconds)
            .field("max_concurrent", &self.max_concurrent)
            .field("retry_after", &self.retry_after)
            .field("console_addr", &self.console_addr)
            .field("min_dump_interval", &self.min_dump_interval)
            .field("app_runtime", &self.app_runtime.is_some())
            .field("conn_limits", &self.conn_limits)
            .field("cpu_recorder", &self.cpu_recorder)
            .field("heap_frame_pointers", &self.heap_frame_pointers)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixed(prefix: &str) -> String {
        match Config::new().with_prefix(prefix) {
            Ok(cfg) => cfg.prefix().to_owned(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn prefix_is_normalised() {
        assert_eq!(prefixed("x/y/"), "/x/y");
        assert_eq!(prefixed("/x"), "/x");
        assert_eq!(prefixed("/"), "");
        assert_eq!(prefixed(""), "");
        assert_eq!(prefixed("/a-b/c.d/_e~f/V2"), "/a-b/c.d/_e~f/V2");
        assert_eq!(Config::new().prefix(), "/debug/pprof");
    }

    #[test]
    fn a_bad_prefix_is_named_with_what_is_wrong() {
        for (prefix, reason) in [
            ("/debug/:id", "contains ':'"),
            ("/x/*rest", "contains '*'"),
            ("/{id}", "contains '{'"),
            ("/a//b", "empty segment"),
            ("//", "empty segment"),
            ("/a/../b", "relative step"),
            ("/a b", "contains ' '"),
            ("/a?b", "contains '?'"),
            ("/caf\u{e9}", "contains '\u{e9}'"),
        ] {
            let err = Config::new().with_prefix(prefix).expect_err(prefix);
            assert_eq!(err.prefix, prefix);
            let text = err.to_string();
            assert!(text.contains(&format!("{prefix:?}")), "{text}");
            assert!(text.contains(reason), "{prefix}: {text}");
            assert!(text.contains("letters, digits and -._~"), "{text}");
        }
    }

    #[test]
    fn retry_after_is_settable_with_a_floor() {
        assert_eq!(Config::new().retry_after(), Config::DEFAULT_RETRY_AFTER);
        let cfg = Config::new().with_retry_after(Duration::from_secs(17));
        assert_eq!(cfg.retry_after(), Duration::from_secs(17));
        let cfg = Config::new().with_retry_after(Duration::ZERO);
        assert_eq!(cfg.retry_after(), Duration::from_secs(1));
    }

    #[test]
    fn limits_have_floors() {
        let cfg = Config::new().with_max_seconds(0).with_max_concurrent(0);
        assert_eq!(cfg.max_seconds(), 1);
        assert_eq!(cfg.max_concurrent(), 1);
    }

    #[test]
    fn debug_redacts_token() {
        let text = format!("{:?}", Config::new().with_token("hunter2"));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }

    #[test]
    fn empty_token_means_no_check() {
        assert!(!Config::new().with_token("").has_token());
        assert!(Config::new().with_token("t").has_token());
    }
}
