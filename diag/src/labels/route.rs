//! [`RouteLabels`]: `http.method` and `http.route` on every CPU sample of a request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use super::cache::request_id;
use super::{Enter, Ids};

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
///
/// Cost: about 0.05 µs a request of its own. Each `Router::layer` call also costs axum
/// about 0.13 µs a request, whatever the layer does (it boxes every route anew), so where
/// the app has another per-route layer, add this one in the same call:
/// `.layer((RouteLabels::new(), other))` (outermost first, as `ServiceBuilder`).
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
        let id = request_id(req.method(), req.extensions().get::<MatchedPath>());
        let mut ids = Ids::new(id);
        // The inner service's `call` may already do work (tower middleware may).
        let enter = ids.enter();
        let inner = self.inner.call(req);
        drop(enter);
        RouteLabelsFuture { inner, ids }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RouteLabelsService`].
    #[derive(Debug)]
    pub struct RouteLabelsFuture<F> {
        #[pin]
        inner: F,
        ids: Ids,
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
        ids: Ids,
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
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::RouteLabels;
    use crate::labels::current;

    async fn labels_now() -> String {
        let set = current();
        let value = |k| set.get(k).unwrap_or("-").to_owned();
        format!("{} {}", value("http.method"), value("http.route"))
    }

    #[test]
    fn each_request_gets_its_method_and_route_from_the_caches() {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
            panic!("runtime");
        };
        // More routes than the recent cache has slots: some share a slot.
        let many = (0..40).fold(Router::new(), |r, i| {
            r.route(&format!("/r{i}"), get(labels_now))
        });
        let app = many
            .route("/a", get(labels_now))
            .route("/b/{x}", get(labels_now).post(labels_now))
            .fallback(labels_now)
            .layer(RouteLabels::new());
        let mut cases: Vec<(&str, String, String)> = [
            ("GET", "/a", "GET /a"),
            ("GET", "/b/1", "GET /b/{x}"),
            ("POST", "/b/2", "POST /b/{x}"),
            ("GET", "/nowhere", "GET unmatched"),
            ("PURGE", "/nowhere", "_OTHER unmatched"),
        ]
        .map(|(m, p, w)| (m, p.to_owned(), w.to_owned()))
        .into();
        cases.extend((0..40).map(|i| ("GET", format!("/r{i}"), format!("GET /r{i}"))));
        // Several rounds on one thread: the first fills the caches, the others hit them
        // or find a slot another route took.
        for _ in 0..3 {
            for (method, path, want) in &cases {
                let (method, path, want) = (*method, path.as_str(), want.as_str());
                let req = http::Request::builder().method(method).uri(path);
                let Ok(req) = req.body(Body::empty()) else {
                    panic!("request");
                };
                let got = rt.block_on(async {
                    let res = app.clone().oneshot(req).await.ok()?;
                    let body = axum::body::to_bytes(res.into_body(), 1024).await.ok()?;
                    String::from_utf8(body.to_vec()).ok()
                });
                assert_eq!(got.as_deref(), Some(want), "{method} {path}");
            }
        }
        assert!(current().is_empty());
    }
}
