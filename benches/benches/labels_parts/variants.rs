//! Layers that do part of what `RouteLabels` does and label nothing, to split its cost
//! per request: [`tower::layer::util::Identity`] pays only what axum's `Router::layer`
//! adds to every request; [`PlainBody`] also wraps the response body in a type of its
//! own, which axum then boxes into its `Body`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

/// Wraps each response body in [`Plain`], and nothing else.
#[derive(Clone, Copy)]
pub(crate) struct PlainBody;

impl<S> Layer<S> for PlainBody {
    type Service = PlainBodyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PlainBodyService(inner)
    }
}

#[derive(Clone)]
pub(crate) struct PlainBodyService<S>(S);

impl<S, B, RB> Service<Request<B>> for PlainBodyService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<Plain<RB>>;
    type Error = S::Error;
    type Future = PlainFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        PlainFuture {
            inner: self.0.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct PlainFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, RB, E> Future for PlainFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<Plain<RB>>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map_ok(|res| res.map(|inner| Plain { inner }))
    }
}

pin_project_lite::pin_project! {
    /// A body passed through as is.
    pub(crate) struct Plain<B> {
        #[pin]
        inner: B,
    }
}

impl<B: Body> Body for Plain<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
