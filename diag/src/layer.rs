//! A tower [`Layer`] that answers under the prefix and passes everything else through.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::config::Config;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Mounts diag in front of any tower service (axum, tonic, or plain hyper through
/// `hyper_util::service::TowerToHyperService`): requests under the prefix are answered by
/// diag, every other request goes to the inner service untouched.
///
/// ```
/// use tower::ServiceBuilder;
/// # let app = tower::service_fn(|_: http::Request<axum::body::Body>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
/// # });
/// let svc = ServiceBuilder::new()
///     .layer(diag::DiagLayer::new(diag::Config::default()))
///     .service(app);
/// ```
#[derive(Clone, Debug)]
pub struct DiagLayer {
    diag: Router,
    prefix: Arc<str>,
}

impl DiagLayer {
    /// A layer serving diag's endpoints as `cfg` says.
    pub fn new(cfg: Config) -> Self {
        let prefix: Arc<str> = cfg.prefix().into();
        Self {
            diag: crate::router(cfg),
            prefix,
        }
    }
}

impl<S> Layer<S> for DiagLayer {
    type Service = DiagService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DiagService {
            diag: self.diag.clone(),
            prefix: self.prefix.clone(),
            inner,
        }
    }
}

/// The service [`DiagLayer`] makes: diag under the prefix, `S` for the rest.
#[derive(Clone, Debug)]
pub struct DiagService<S> {
    diag: Router,
    prefix: Arc<str>,
    inner: S,
}

impl<S> DiagService<S> {
    fn is_ours(&self, path: &str) -> bool {
        match path.strip_prefix(&*self.prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for DiagService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // diag's router is always ready; readiness is the inner service's.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if self.is_ours(req.uri().path()) {
            let req = req.map(Body::new);
            ResponseFuture::Diag {
                fut: self.diag.clone().oneshot(req),
            }
        } else {
            ResponseFuture::Inner {
                fut: self.inner.call(req),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`DiagService`].
    #[project = Proj]
    #[allow(missing_docs)]
    pub enum ResponseFuture<F> {
        /// diag answers.
        Diag { #[pin] fut: Oneshot<Router, Request<Body>> },
        /// The inner service answers.
        Inner { #[pin] fut: F },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Diag { .. } => "ResponseFuture::Diag",
            Self::Inner { .. } => "ResponseFuture::Inner",
        })
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Diag { fut } => fut.poll(cx).map(|r: Result<_, Infallible>| match r {
                Ok(res) => Ok(res),
                Err(never) => match never {},
            }),
            Proj::Inner { fut } => fut.poll(cx).map(|r| r.map(|res| res.map(Body::new))),
        }
    }
}
