//! The demo counter service: every `GET /` adds one and answers the new value, with health
//! and readiness probes, request ids, Prometheus metrics, and endpoints that burn CPU or
//! hold memory so that diag's profiles have something to show.
//!
//! The binary (`cargo run --release -p demo`) adds flags, logging, graceful shutdown and
//! diag; this library is the application itself, so tests and benches drive the real
//! thing in process:
//!
//! ```
//! let app = demo::app(demo::AppState::new(), Some(diag::Config::default()));
//! # let _: axum::Router = app;
//! ```

mod cli;
mod metrics;
mod request_id;
mod tasks;
mod work;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use cli::{Args, DiagListen, LogFormat, parse_duration};
pub use metrics::Metrics;
pub use request_id::REQUEST_ID;
pub use tasks::{run_blocking, spawn_named};
pub use work::{
    MAX_BLOCK_MS, MAX_CHURN_BLOCKS, MAX_CHURN_BYTES, MAX_HELD_MB, MAX_ITERATIONS, MAX_SLEEP_MS,
    MAX_WORK_MS, block_worker, churn_memory, hold_memory, nap, spin_cpu, spin_for,
};

/// The shared state of one running service.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    counter: AtomicU64,
    ready: AtomicBool,
    held: work::Held,
    metrics: Metrics,
}

impl AppState {
    /// A fresh service: the counter at zero, not ready yet, nothing held.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                counter: AtomicU64::new(0),
                ready: AtomicBool::new(false),
                held: work::Held::default(),
                metrics: Metrics::new(),
            }),
        }
    }

    /// Marks the service ready to take traffic (`/readyz` 200) or not (503).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// The counter's current value.
    pub fn count(&self) -> u64 {
        self.inner.counter.load(Ordering::SeqCst)
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
    let mut router = Router::new()
        .route("/", get(count))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        .route("/work", get(work::work))
        .route("/churn", get(work::churn))
        .route("/block", get(work::block))
        .route("/hold", post(work::hold).delete(work::release))
        .route("/sleep", get(work::sleep))
        .fallback(not_found)
        .with_state(state.clone());
    if let Some(cfg) = diag {
        router = router.merge(diag::router(cfg));
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            state,
            request_id::track,
        ))
        // Every request's handler future is traced: task dumps show each one in flight.
        .layer(diag::tasks::TracedLayer::new())
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `GET /`: adds one to the counter and answers the new value.
async fn count(State(state): State<AppState>) -> Response {
    let n = state.inner.counter.fetch_add(1, Ordering::SeqCst) + 1;
    text(StatusCode::OK, format!("{n}\n"))
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".to_owned())
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        text(StatusCode::OK, "ready\n".to_owned())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or shutting down\n".to_owned(),
        )
    }
}

async fn not_found() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "not found; this service serves GET /, /healthz, /readyz, /metrics, /work, /churn, \
         /block, /sleep, POST and DELETE /hold, and diag under /debug/pprof/ when mounted here\n"
            .to_owned(),
    )
}
