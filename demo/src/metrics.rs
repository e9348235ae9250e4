//! Prometheus metrics, kept in a registry of the service's own (no global recorder, so
//! several apps can run in one test process).

use std::fmt;
use std::sync::atomic::AtomicU64;

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

/// The service's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    counter_value: Gauge<u64, AtomicU64>,
    held_bytes: Gauge<u64, AtomicU64>,
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
            "The counter's current value",
            counter_value.clone(),
        );
        let held_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "held_memory_bytes",
            "Memory kept by POST /hold",
            held_bytes.clone(),
        );
        // The same names as diag's /debug/pprof/heap/stats?format=prometheus.
        let mut jemalloc = Vec::new();
        if let Ok(stats) = diag::heap_stats() {
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
            jemalloc,
        }
    }

    /// Records one answered request.
    pub fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&[
                ("route", route.to_owned()),
                ("method", method.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&[("route", route.to_owned())])
            .observe(seconds);
    }

    pub(crate) fn set_held(&self, mb: usize) {
        self.held_bytes.set((mb as u64) << 20);
    }

    /// The metrics in the OpenMetrics text format Prometheus scrapes.
    pub fn render_text(&self, counter: u64) -> Result<String, fmt::Error> {
        self.counter_value.set(counter);
        if !self.jemalloc.is_empty() {
            if let Ok(stats) = diag::heap_stats() {
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
