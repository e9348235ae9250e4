//! The demo counter service: every `GET /` adds one and answers the new value, with health
//! and readiness probes, request ids, Prometheus metrics, and endpoints that burn CPU or
//! hold memory so that diag's profiles have something to show. The count is kept in
//! memory, or in Redis ([`Options::with_redis`]) where every replica shares it.
//!
//! The binary (`cargo run --release -p demo`) adds flags, logging, graceful shutdown and
//! diag; this library is the application itself, so tests and benches drive the real
//! thing in process:
//!
//! ```
//! let app = demo::app(demo::AppState::new(), Some(diag::Config::default()));
//! # let _: axum::Router = app;
//! ```

mod cgroup;
mod cli;
mod metrics;
mod request_id;
mod store;
mod tasks;
mod work;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use cli::{Args, DiagListen, LogFormat, parse_duration};
pub use metrics::Metrics;
pub use request_id::REQUEST_ID;
pub use store::{RedisConfig, StoreError, StoreErrorKind};
pub use tasks::{run_blocking, spawn_named};
pub use work::{
    MAX_BLOCK_MS, MAX_CHURN_BLOCKS, MAX_CHURN_BYTES, MAX_HELD_MB, MAX_ITERATIONS, MAX_SLEEP_MS,
    MAX_WORK_MS, block_worker, blocking_lookup, call_slow_dependency, churn_memory, hash_bytes,
    hold_memory, nap, spin_cpu, spin_for,
};

/// jemalloc's settings for the demo's binary, which exports them as `_rjem_malloc_conf`
/// for jemalloc to read at start: heap profiling on, one sample per 512 KiB allocated on
/// average, cumulative counts kept (for `/allocs`), and a background thread that returns
/// freed pages to the system when the process is idle (without it, jemalloc purges only
/// while it allocates). The environment variable `_RJEM_MALLOC_CONF` is read after this
/// and overrides any of them, e.g. `_RJEM_MALLOC_CONF=prof_active:false`. The benches'
/// measurement programs export the same.
pub const MALLOC_CONF: &[u8; 84] =
    b"prof:true,prof_active:true,lg_prof_sample:19,prof_accum:true,background_thread:true\0";

/// The shared state of one running service.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: store::Store,
    ready: AtomicBool,
    held: work::Held,
    metrics: Metrics,
    route_labels: bool,
}

/// How [`AppState::start`] builds the service: where the count lives and how much `/hold`
/// may keep.
#[derive(Debug, Clone, Default)]
pub struct Options {
    redis: Option<RedisConfig>,
    max_held_mb: Option<usize>,
    no_route_labels: bool,
}

impl Options {
    /// Keeps the count in Redis instead of in memory.
    pub fn with_redis(mut self, redis: RedisConfig) -> Self {
        self.redis = Some(redis);
        self
    }

    /// The most memory `/hold` keeps in all, in MiB (1 to [`MAX_HELD_MB`]); by default a
    /// quarter of the cgroup memory limit when there is one, else [`MAX_HELD_MB`].
    pub fn with_max_held_mb(mut self, mb: usize) -> Self {
        self.max_held_mb = Some(mb.clamp(1, MAX_HELD_MB));
        self
    }

    /// Leaves [`diag::labels::RouteLabels`] out of [`app`]: CPU samples then carry no
    /// `http.method`/`http.route` (for measuring what the layer costs).
    pub fn without_route_labels(mut self) -> Self {
        self.no_route_labels = true;
        self
    }
}

impl AppState {
    /// A fresh service counting in memory: the counter at zero, not ready yet, nothing
    /// held, `/hold`'s default cap.
    pub fn new() -> Self {
        Self::build(store::Store::memory(), Metrics::new(), None, true)
    }

    /// A fresh service as `options` say. With Redis this connects once (within the
    /// command timeout; the service starts whether or not Redis answers) and spawns the
    /// probe that reconnects, so it must run inside a tokio runtime.
    pub async fn start(options: Options) -> Self {
        let metrics = Metrics::new();
        let store = match options.redis {
            Some(cfg) => store::Store::redis(cfg, metrics.store()).await,
            None => store::Store::memory(),
        };
        Self::build(
            store,
            metrics,
            options.max_held_mb,
            !options.no_route_labels,
        )
    }

    fn build(
        store: store::Store,
        metrics: Metrics,
        max_held_mb: Option<usize>,
        route_labels: bool,
    ) -> Self {
        let (cap, why) = match max_held_mb {
            Some(mb) => (mb, "set by --max-held-mb".to_owned()),
            None => cgroup::default_hold_cap(),
        };
        Self {
            inner: Arc::new(Inner {
                store,
                ready: AtomicBool::new(false),
                held: work::Held::new(cap, why),
                metrics,
                route_labels,
            }),
        }
    }

    /// Marks the service ready to take traffic or not; `/readyz` answers 200 when it is
    /// and its count's store is available.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200: marked ready, and the store available.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    fn readiness(&self) -> Result<(), String> {
        if !self.inner.ready.load(Ordering::SeqCst) {
            return Err("starting or shutting down".to_owned());
        }
        self.inner.store.available()
    }

    /// The counter's current value as this process last saw it (in Redis, other
    /// processes may have counted since).
    pub fn count(&self) -> u64 {
        self.inner.store.last_seen()
    }

    /// Where the count is kept: `memory` or `redis`.
    pub fn store_name(&self) -> &'static str {
        self.inner.store.name()
    }

    /// Where the count is kept, in a sentence for the start-up log.
    pub fn store_description(&self) -> String {
        self.inner.store.describe()
    }

    /// The cap of `/hold` in MiB, and where it comes from.
    pub fn hold_cap(&self) -> (usize, &str) {
        self.inner.held.cap()
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

impl Default for AppState {
    fn default() -> Self {
        Self::new()
    }
}

/// The whole application as an axum [`Router`]; with `diag`, diag's endpoints are merged
/// in and share the request-id and metrics middleware.
pub fn app(state: AppState, diag: Option<diag::Config>) -> Router {
    let route_labels = state.inner.route_labels;
    let mut router = Router::new()
        .route("/", get(count))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        .route("/work", get(work::work))
        .route("/hash", get(work::hash))
        .route("/churn", get(work::churn))
        .route("/block", get(work::block))
        .route("/hold", post(work::hold).delete(work::release))
        .route("/sleep", get(work::sleep))
        .route("/slow", get(work::slow))
        .fallback(not_found)
        .with_state(state.clone());
    if let Some(cfg) = diag {
        router = router.merge(diag::router(cfg));
    }
    let router = router.layer(axum::middleware::from_fn_with_state(
        state,
        request_id::track,
    ));
    // Every request's handler future is traced: task dumps show each one in flight.
    let traced = diag::tasks::TracedLayer::new();
    if route_labels {
        // Every CPU sample taken for a request carries its method and route template. One
        // `layer` call for both: axum boxes each route anew per call (0.13 µs a request).
        router.layer((diag::labels::RouteLabels::new(), traced))
    } else {
        router.layer(traced)
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `GET /`: adds one to the counter and answers the new value; 503 when the store cannot
/// give one (never a made-up number).
async fn count(State(state): State<AppState>) -> Response {
    match state.inner.store.incr().await {
        Ok(n) => text(StatusCode::OK, format!("{n}\n")),
        Err(e) => {
            let mut res = text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            res
        }
    }
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".to_owned())
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness() {
        Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn not_found() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "not found; this service serves GET /, /healthz, /readyz, /metrics, /work, /churn, \
         /block, /sleep, /slow, POST and DELETE /hold, and diag under /debug/pprof/ when mounted here\n"
            .to_owned(),
    )
}
