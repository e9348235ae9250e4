//! [`TracedLayer`]: every request's handler future, traced.

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::tasks::Traced;

/// The longest request path kept in a traced request's name, in bytes.
const MAX_PATH: usize = 96;

/// Wraps each request's handler future in a [`Traced`] named `METHOD /path` (the path
/// without its query, cut at 96 bytes), so that task dumps show every request in flight
/// and where it waits. hyper owns the connection task; this covers what the service does
/// with the request, up to the response's headers (not the streaming of its body).
///
/// ```
/// use axum::{Router, routing::get};
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(diag::tasks::TracedLayer::new());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TracedLayer {
    _private: (),
}

impl TracedLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for TracedLayer {
    type Service = TracedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracedService { inner }
    }
}

/// The service [`TracedLayer`] makes.
#[derive(Clone, Debug)]
pub struct TracedService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for TracedService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Traced<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let name = request_name(req.method().as_str(), req.uri().path());
        Traced::at(name.into_boxed_str(), None, self.inner.call(req))
    }
}

/// `METHOD /path`, the path cut at a character boundary within [`MAX_PATH`] bytes.
fn request_name(method: &str, path: &str) -> String {
    let mut end = path.len().min(MAX_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let mut name = String::with_capacity(method.len() + 1 + end + 3);
    name.push_str(method);
    name.push(' ');
    name.push_str(&path[..end]);
    if end < path.len() {
        name.push_str("...");
    }
    name
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_paths_are_cut() {
        assert_eq!(super::request_name("GET", "/a"), "GET /a");
        let long = "/é".repeat(100);
        let name = super::request_name("POST", &long);
        assert!(name.ends_with("..."), "{name}");
        assert!(name.len() <= 5 + super::MAX_PATH + 3, "{}", name.len());
    }
}
