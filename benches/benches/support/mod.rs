//! Setup shared by the benchmarks.

use axum::body::Body;

/// A single-threaded runtime, so a benchmark measures the work and not thread hand-offs.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `GET path` with an empty body.
pub(crate) fn get(path: &str) -> http::Request<Body> {
    http::Request::get(path)
        .body(Body::empty())
        .expect("request")
}
