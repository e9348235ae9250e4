//! [`RouteLabels`]: `http.method` and `http.route` on every CPU sample of a request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::{Enter, LabelSet, intern};

/// The route of a request axum did not match to a route template.
pub const UNMATCHED: &str = "unmatched";
/// The method of a request whose method is not one of HTTP's standard nine.
pub const OTHER_METHOD: &str = "_OTHER";

fn method_value(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => OTHER_METHOD,
    }
}

/// Labels every CPU sample taken while a request's future, and then its response body,
/// is polled with `http.method` (one of the nine standard methods, or `_OTHER`) and
/// `http.route` (axum's [`MatchedPath`] template such as `/users/{id}`, never the raw
/// URI, so the values stay few; `unmatched` where axum sets none: when this layer wraps
/// the whole router rather than being added with `Router::layer`, and for the fallback
/// and `nest_service`). Labels set by the application inside the request add to these.
///
/// ```
/// use axum::{Router, routing::get};
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "hello" }))
///     .layer(diag::labels::RouteLabels::new());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteLabels {
    _private: (),
}

impl RouteLabels {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for RouteLabels {
    type Service = RouteLabelsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteLabelsService { inner }
    }
}

/// The service [`RouteLabels`] makes.
#[derive(Clone, Debug)]
pub struct RouteLabelsService<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RouteLabelsService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RouteLabelsBody<RB>>;
    type Error = S::Error;
    type Future = RouteLabelsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED, MatchedPath::as_str);
        let id = intern(LabelSet::new([
            ("http.method", method_value(req.method())),
            ("http.route", route),
        ]));
        // The inner service's `call` may already do work (axum runs middleware there).
        let inner = {
            let mut ids = super::Ids::new(id);
            let _enter = ids.enter();
            self.inner.call(req)
        };
        RouteLabelsFuture {
            inner,
            ids: super::Ids::new(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RouteLabelsService`].
    #[derive(Debug)]
    pub struct RouteLabelsFuture<F> {
        #[pin]
        inner: F,
        ids: super::Ids,
    }
}

impl<F, RB, E> Future for RouteLabelsFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RouteLabelsBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _enter: Enter = this.ids.enter();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(res)) => {
                let ids = *this.ids;
                Poll::Ready(Ok(res.map(|inner| RouteLabelsBody { inner, ids })))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body whose polls carry the request's labels (hyper polls the body
    /// after the handler has returned).
    #[derive(Debug)]
    pub struct RouteLabelsBody<B> {
        #[pin]
        inner: B,
        ids: super::Ids,
    }
}

impl<B: Body> Body for RouteLabelsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let _enter = this.ids.enter();
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_fold() {
        assert_eq!(method_value(&Method::GET), "GET");
        let odd = Method::from_bytes(b"PURGE").map(|m| method_value(&m));
        assert_eq!(odd.ok(), Some(OTHER_METHOD));
    }
}
