//! The binary's flags; each can also come from the environment.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// The demo counter service with diag mounted.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "demo", version, about)]
pub struct Args {
    /// Address of the service.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Address of diag's own listener (loopback by default), the word `main` to mount
    /// diag on the service's listener instead, or `off` for no diag at all (for measuring
    /// what it costs).
    #[arg(long, env = "DEMO_DIAG_LISTEN", default_value = "127.0.0.1:6060")]
    pub diag_listen: DiagListen,

    /// How long requests in flight may take to finish after a shutdown signal, e.g. `10s`,
    /// `500ms`, `2m`.
    #[arg(long, env = "DEMO_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Connections the app's listener serves at once; one more is answered 503 and
    /// closed (diag's sidecar has its own cap, 64).
    #[arg(long, env = "DEMO_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// How long `/readyz` answers 503 while still accepting, before the listener closes
    /// (set it to the readiness probe's period behind a load balancer).
    #[arg(long, env = "DEMO_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// Serve tokio-console (attach with `tokio-console http://ADDR`).
    #[arg(long, env = "DEMO_CONSOLE")]
    pub console: bool,
    /// Where tokio-console is served, with `--console`.
    #[arg(long, env = "DEMO_CONSOLE_LISTEN", default_value = diag::console::DEFAULT_CONSOLE_ADDR)]
    pub console_listen: String,
    /// How long finished tasks stay visible in tokio-console, e.g. `10s`. The console keeps
    /// ~56 KB per task that finished within it: at 100 new connections a second, 10 s hold
    /// ~56 MB.
    #[arg(long, env = "DEMO_CONSOLE_RETENTION", default_value = "10s", value_parser = parse_duration)]
    pub console_retention: Duration,
    /// The shortest time between two task dumps (`/debug/pprof/goroutine`); within it the
    /// last dump is served again. `0s` dumps on every request.
    #[arg(long, env = "DEMO_DUMP_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub dump_interval: Duration,
    /// Keep the last stretch of CPU samples in memory (diag's always-on recorder, 19 Hz):
    /// `/debug/pprof/profile?since=300` then answers at once with the last 5 minutes.
    /// `0s` or `off` turns it off. At most 60m.
    #[arg(long, env = "DEMO_CPU_RECORDER", default_value = "10m", value_parser = parse_recorder)]
    pub cpu_recorder: RecorderKeep,
    /// Async worker threads of the runtime, 1 to 1024 (default: one per CPU).
    #[arg(long, env = "DEMO_WORKER_THREADS", value_parser = threads_from_1_to_1024)]
    pub worker_threads: Option<usize>,
    /// The most threads the runtime's blocking pool keeps, 1 to 1024 (default: tokio's
    /// 512). `/work`, `/hash`, `/churn` and `/slow`'s blocking calls run there (diag's own
    /// work does not): a small pool makes the ninth blocked call wait. The pool wakes its
    /// idle threads in turn, so under load every thread it has grown to takes requests,
    /// each on cold caches (docs/performance.md).
    #[arg(long, env = "DEMO_MAX_BLOCKING_THREADS", value_parser = threads_from_1_to_1024)]
    pub max_blocking_threads: Option<usize>,
    /// Leave diag's trace layer out of the subscriber (`/debug/pprof/trace` then answers
    /// 501); for measuring what the idle layer costs.
    #[arg(long, env = "DEMO_NO_TRACE_LAYER")]
    pub no_trace_layer: bool,
    /// Let jemalloc unwind heap samples with libgcc, as it does by default, instead of
    /// diag's frame-pointer walker (diag installs its walker only when a probe agrees with
    /// libgcc; heap profiles' `X-Diag-Heap-Unwinder` says which one runs); for measuring
    /// what the walker saves.
    #[arg(long, env = "DEMO_HEAP_LIBGCC_UNWINDER")]
    pub heap_libgcc_unwinder: bool,
    /// Leave diag's `RouteLabels` layer out (CPU samples then carry no `http.method` and
    /// `http.route`); for measuring what the layer costs.
    #[arg(long, env = "DEMO_NO_ROUTE_LABELS")]
    pub no_route_labels: bool,
    /// Log format.
    #[arg(long, env = "DEMO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Keep the count in Redis at this URL (`redis://[:PASSWORD@]HOST[:PORT][/DB]`), shared
    /// by every process pointed at it; without it the count is kept in memory. A password
    /// is better given through DEMO_REDIS: diag's /debug/pprof/cmdline shows the flags.
    #[arg(long, env = "DEMO_REDIS")]
    pub redis: Option<String>,
    /// The Redis key the count is kept under.
    #[arg(long, env = "DEMO_REDIS_KEY", default_value = crate::RedisConfig::DEFAULT_KEY)]
    pub redis_key: String,
    /// How long connecting to Redis and each command may take; past it `GET /` answers
    /// 503 (and the increment is counted as uncertain, never retried).
    #[arg(long, env = "DEMO_REDIS_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// How often the demo PINGs Redis (or tries to reconnect); `/readyz` follows.
    #[arg(long, env = "DEMO_REDIS_PROBE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub redis_probe_interval: Duration,
    /// The most memory `POST /hold` keeps in all, in MiB (default: a quarter of the
    /// cgroup memory limit when there is one, else 1024).
    #[arg(long, env = "DEMO_MAX_HELD_MB", value_parser = clap::value_parser!(u64).range(1..=crate::MAX_HELD_MB as u64))]
    pub max_held_mb: Option<u64>,
}

impl Args {
    /// The service's [`Options`](crate::Options) as the flags say; an error names a bad
    /// `--redis` URL.
    pub fn options(&self) -> Result<crate::Options, String> {
        let mut options = crate::Options::default();
        if let Some(url) = &self.redis {
            options = options.with_redis(
                crate::RedisConfig::new(url)?
                    .with_key(self.redis_key.clone())
                    .with_timeout(self.redis_timeout)
                    .with_probe_interval(self.redis_probe_interval),
            );
        }
        if let Some(mb) = self.max_held_mb {
            options = options.with_max_held_mb(mb as usize);
        }
        if self.no_route_labels {
            options = options.without_route_labels();
        }
        Ok(options)
    }
}

/// Where diag is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagListen {
    /// On the service's own listener, under `/debug/pprof`.
    Main,
    /// On a listener of its own at this address.
    Sidecar(SocketAddr),
    /// Not served at all.
    Off,
}

impl FromStr for DiagListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "main" => return Ok(Self::Main),
            "off" => return Ok(Self::Off),
            _ => {}
        }
        s.parse()
            .map(Self::Sidecar)
            .map_err(|_| format!("{s:?} is not `main`, `off` or an address such as 127.0.0.1:6060"))
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, with the request's span (and its request id).
    Json,
}

/// How far back `--cpu-recorder` keeps (`None`: off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderKeep(pub Option<Duration>);

/// `--cpu-recorder`: a duration of 1 s to 60 m, or `off` / `0s` for none.
pub(crate) fn parse_recorder(s: &str) -> Result<RecorderKeep, String> {
    if s.trim() == "off" {
        return Ok(RecorderKeep(None));
    }
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Ok(RecorderKeep(None));
    }
    if d < Duration::from_secs(1) || d > diag::config::CpuRecorder::MAX_KEEP {
        return Err(format!(
            "{s:?}: the recorder keeps from 1s to 60m (or `off`)"
        ));
    }
    Ok(RecorderKeep(Some(d)))
}

/// `--worker-threads` and `--max-blocking-threads`: a count of threads from 1 to 1024
/// (tokio refuses 0 with a panic, so it is refused here with an error instead).
pub(crate) fn threads_from_1_to_1024(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=1024) => Ok(n),
        _ => Err(format!(
            "{s:?}: a number of threads from 1 to 1024 is required"
        )),
    }
}

/// Parses `250ms`, `10s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 10s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!(
            "{s:?} has an unknown unit {unit:?}; use ms, s or m (e.g. 10s)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorder_flag_takes_a_duration_or_off() {
        assert_eq!(
            parse_recorder("10m"),
            Ok(RecorderKeep(Some(Duration::from_secs(600))))
        );
        assert_eq!(parse_recorder("off"), Ok(RecorderKeep(None)));
        assert_eq!(parse_recorder("0s"), Ok(RecorderKeep(None)));
        assert!(parse_recorder("61m").unwrap_err().contains("1s to 60m"));
        assert!(parse_recorder("500ms").is_err());
        assert!(parse_recorder("soon").is_err());
    }

    #[test]
    fn thread_counts_run_from_1_to_1024() {
        assert_eq!(threads_from_1_to_1024("1"), Ok(1));
        assert_eq!(threads_from_1_to_1024("1024"), Ok(1024));
        for bad in ["0", "1025", "-1", "two", ""] {
            let e = threads_from_1_to_1024(bad).unwrap_err();
            assert!(e.contains("from 1 to 1024"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn diag_listen() {
        assert_eq!("main".parse::<DiagListen>(), Ok(DiagListen::Main));
        assert_eq!("off".parse::<DiagListen>(), Ok(DiagListen::Off));
        assert!(matches!("127.0.0.1:0".parse(), Ok(DiagListen::Sidecar(_))));
        assert!("nowhere".parse::<DiagListen>().is_err());
    }
}
