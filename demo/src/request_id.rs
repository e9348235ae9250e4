//! Request ids, one tracing span per request, and the request metrics.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::AppState;

/// The header a request id arrives in and is echoed back in.
pub const REQUEST_ID: &str = "x-request-id";

/// A request id from the client is kept when it is 1 to 128 visible ASCII characters;
/// anything else is replaced, so logs cannot be forged with control characters.
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A new id: a per-process random prefix and a sequence number, unique within the process
/// and, with high probability, across its restarts.
fn new_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::process::id()) as u32
    });
    format!("{prefix:08x}-{:08x}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Takes or makes the request id, runs the request inside a span that carries it, logs the
/// outcome, records the metrics, and echoes the id in the response.
pub(crate) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map_or_else(new_id, str::to_owned);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        path = %req.uri().path(),
        store = state.store_name(),
    );
    let start = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    let status = res.status().as_u16();
    span.in_scope(|| {
        tracing::info!(status, micros = elapsed.as_micros() as u64, "answered");
    });
    state
        .metrics()
        .observe(&route, &method, status, elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_acceptable() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(acceptable(&a), "{a}");
    }

    #[test]
    fn hostile_ids_are_refused() {
        assert!(!acceptable(""));
        assert!(!acceptable("a b"));
        assert!(!acceptable("line\nbreak"));
        assert!(!acceptable(&"x".repeat(129)));
        assert!(acceptable("abc-123_XYZ"));
    }
}
