//! Prometheus metrics, kept in a registry of the service's own (no global recorder, so
//! several apps can run in one test process).

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

type RequestLabels = [(&'static str, String); 3];
type RouteLabels = [(&'static str, String); 1];
type StoreLabels = [(&'static str, &'static str); 1];
type StoreCommandLabels = [(&'static str, &'static str); 2];
type StoreErrorLabels = [(&'static str, &'static str); 3];

/// The `method` label: the methods of RFC 9110 and PATCH as they are, any other folded
/// into `_OTHER` (as OpenTelemetry's HTTP conventions do), so that invented methods cannot
/// grow `/metrics`.
pub(crate) fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "_OTHER",
    }
}

/// The count store's metrics, shared with the store and its probe.
#[derive(Clone)]
pub(crate) struct StoreMetrics {
    latency: Family<StoreCommandLabels, Histogram>,
    errors: Family<StoreErrorLabels, Counter>,
    uncertain: Family<StoreLabels, Counter>,
    resets: Family<StoreLabels, Counter>,
    up: Family<StoreLabels, Gauge>,
}

impl fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreMetrics").finish_non_exhaustive()
    }
}

impl StoreMetrics {
    fn register(registry: &mut Registry) -> Self {
        let latency = Family::<StoreCommandLabels, Histogram>::new_with_constructor(|| {
            // 50 µs to ~3.3 s.
            Histogram::new(exponential_buckets(0.00005, 2.0, 17))
        });
        registry.register(
            "store_command_duration_seconds",
            "Time from sending a command to the count's store to its answer (or to giving \
             up), by store and command",
            latency.clone(),
        );
        let errors = Family::<StoreErrorLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Commands to the count's store that failed, by store, command and kind \
             (unavailable: not sent; timeout, connection: sent, answer lost; cancelled: \
             the client went away with it in flight; response: the store answered an error)",
            errors.clone(),
        );
        let uncertain = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_uncertain_increments",
            "Increments sent whose answer was lost (timed out, or the connection broke): the \
             store may or may not have applied them; they are never retried",
            uncertain.clone(),
        );
        let resets = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_resets",
            "Times the count in the store was seen to go back (a restart without \
             persistence, a flush, a deleted key)",
            resets.clone(),
        );
        let up = Family::<StoreLabels, Gauge>::default();
        registry.register(
            "store_up",
            "1 while the last command to the count's store succeeded, else 0",
            up.clone(),
        );
        Self {
            latency,
            errors,
            uncertain,
            resets,
            up,
        }
    }

    pub(crate) fn observe(&self, store: &'static str, command: &'static str, took: Duration) {
        self.latency
            .get_or_create(&[("store", store), ("command", command)])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn error(&self, store: &'static str, command: &'static str, kind: &'static str) {
        self.errors
            .get_or_create(&[("store", store), ("command", command), ("kind", kind)])
            .inc();
    }

    pub(crate) fn uncertain(&self, store: &'static str) {
        self.uncertain.get_or_create(&[("store", store)]).inc();
    }

    pub(crate) fn reset(&self, store: &'static str) {
        self.resets.get_or_create(&[("store", store)]).inc();
    }

    pub(crate) fn set_up(&self, store: &'static str, up: bool) {
        self.up
            .get_or_create(&[("store", store)])
            .set(i64::from(up));
    }
}

/// The service's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    counter_value: Gauge<u64, AtomicU64>,
    held_bytes: Gauge<u64, AtomicU64>,
    store: StoreMetrics,
    /// jemalloc's statistics, when jemalloc is the allocator (in the demo binary).
    jemalloc: Vec<Gauge<u64, AtomicU64>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to ~6.5 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from the request's arrival to its answer, by route",
            latency.clone(),
        );
        let counter_value = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "counter_value",
            "The count as this process last saw it (with Redis, other processes may have \
             counted since)",
            counter_value.clone(),
        );
        let held_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "held_memory_bytes",
            "Memory kept by POST /hold",
            held_bytes.clone(),
        );
        let store = StoreMetrics::register(&mut registry);
        // The same names as diag's /debug/pprof/heap/stats?format=prometheus.
        let mut jemalloc = Vec::new();
        if let Ok(stats) = diag::heap::heap_stats() {
            for (name, help, _) in stats.fields() {
                let gauge = Gauge::<u64, AtomicU64>::default();
                registry.register(format!("jemalloc_{name}_bytes"), help, gauge.clone());
                jemalloc.push(gauge);
            }
        }
        Self {
            registry,
            requests,
            latency,
            counter_value,
            held_bytes,
            store,
            jemalloc,
        }
    }

    /// Records one answered request. `route` is the matched route's template (bounded by
    /// the router); `method` is folded into `_OTHER` unless it is one of the standard ones.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&[
                ("route", route.to_owned()),
                ("method", method_label(method).to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&[("route", route.to_owned())])
            .observe(seconds);
    }

    pub(crate) fn store(&self) -> StoreMetrics {
        self.store.clone()
    }

    pub(crate) fn set_held(&self, mb: usize) {
        self.held_bytes.set((mb as u64) << 20);
    }

    /// The metrics in the OpenMetrics text format Prometheus scrapes.
    pub fn render_text(&self, counter: u64) -> Result<String, fmt::Error> {
        self.counter_value.set(counter);
        if !self.jemalloc.is_empty() {
            if let Ok(stats) = diag::heap::heap_stats() {
                for (gauge, (_, _, value)) in self.jemalloc.iter().zip(stats.fields()) {
                    gauge.set(value);
                }
            }
        }
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

pub(crate) async fn render(State(state): State<AppState>) -> Response {
    match state.metrics().render_text(state.count()) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
    }
}
