//! [`RouteLabels`]: `http.method` and `http.route` on every CPU sample of a request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
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

/// The distinct (method, route) pairs each thread remembers the label-set id of. Past it,
/// a request of a pair the thread has not seen interns its set (a lock, a hash and two
/// allocations, about 0.25 µs; the table's own bound still applies). axum's routes are
/// the application's, so an app stays far below it; the bound is there for one that
/// builds routers on the fly.
pub const ROUTE_CACHE_MAX: usize = 1024;

/// The methods [`method_value`] tells apart, `_OTHER` last.
const METHODS: usize = 10;

/// The method's index (0..[`METHODS`]) and label value.
fn method_value(m: &Method) -> (usize, &'static str) {
    match *m {
        Method::GET => (0, "GET"),
        Method::HEAD => (1, "HEAD"),
        Method::POST => (2, "POST"),
        Method::PUT => (3, "PUT"),
        Method::DELETE => (4, "DELETE"),
        Method::CONNECT => (5, "CONNECT"),
        Method::OPTIONS => (6, "OPTIONS"),
        Method::TRACE => (7, "TRACE"),
        Method::PATCH => (8, "PATCH"),
        _ => (METHODS - 1, OTHER_METHOD),
    }
}

/// A multiply-rotate hash for the route templates of the cache: they are short and come
/// from the application's router, not from clients, so no keyed hash is needed against
/// flooding, and SipHash would cost more than the rest of the lookup.
#[derive(Default, Clone, Copy)]
struct RouteHasher(u64);

impl Hasher for RouteHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The table picks buckets by the low bits, which a product mixes least.
        self.0 ^ (self.0 >> 32)
    }
}

type RouteMap = HashMap<Box<str>, u32, BuildHasherDefault<RouteHasher>>;

/// This thread's label-set ids of the (method, route) pairs it has served.
struct RouteIds {
    by_method: [RouteMap; METHODS],
    len: usize,
}

thread_local! {
    static ROUTE_IDS: RefCell<RouteIds> = const {
        RefCell::new(RouteIds {
            by_method: [const { HashMap::with_hasher(BuildHasherDefault::new()) }; METHODS],
            len: 0,
        })
    };
}

/// The label-set id [`RouteLabels`] gives a request of `method` on `route` (benchmarks).
#[doc(hidden)]
pub fn route_id_for_bench(method: &Method, route: &str) -> u32 {
    route_id(method, route)
}

fn intern_route(method: &'static str, route: &str) -> u32 {
    intern(LabelSet::new([
        ("http.method", method),
        ("http.route", route),
    ]))
}

/// The label-set id of `method` and `route`: a lookup in this thread's cache, the
/// set interned only the first time the thread sees the pair (or past
/// [`ROUTE_CACHE_MAX`], or while the thread's locals are being torn down).
fn route_id(method: &Method, route: &str) -> u32 {
    let (index, value) = method_value(method);
    let cached = ROUTE_IDS.try_with(|ids| {
        let mut ids = ids.try_borrow_mut().ok()?;
        if let Some(id) = ids.by_method[index].get(route) {
            return Some(*id);
        }
        let id = intern_route(value, route);
        if ids.len < ROUTE_CACHE_MAX {
            ids.by_method[index].insert(route.into(), id);
            ids.len += 1;
        }
        Some(id)
    });
    match cached {
        Ok(Some(id)) => id,
        _ => intern_route(value, route),
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
        let id = route_id(req.method(), route);
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
        assert_eq!(method_value(&Method::GET).1, "GET");
        let odd = Method::from_bytes(b"PURGE").map(|m| method_value(&m));
        assert_eq!(odd.ok(), Some((METHODS - 1, OTHER_METHOD)));
    }

    fn cached_len() -> usize {
        ROUTE_IDS.with(|ids| ids.borrow().len)
    }

    #[test]
    fn the_cache_gives_the_interned_id_and_is_bounded() {
        // Each test runs on a thread of its own: this thread's cache starts empty.
        let id = route_id(&Method::GET, "/users/{id}");
        assert_eq!(
            id,
            intern(LabelSet::new([
                ("http.route", "/users/{id}"),
                ("http.method", "GET")
            ]))
        );
        assert_eq!(route_id(&Method::GET, "/users/{id}"), id);
        assert_eq!(cached_len(), 1);
        // The same route under another method is another set.
        let post = route_id(&Method::POST, "/users/{id}");
        assert_ne!(post, id);
        assert_eq!(cached_len(), 2);
        // Past the bound, the cache stops growing and ids are still right.
        for i in 0..ROUTE_CACHE_MAX + 5 {
            route_id(&Method::PUT, &format!("/r{i}"));
        }
        assert_eq!(cached_len(), ROUTE_CACHE_MAX);
        let late = route_id(&Method::PUT, &format!("/r{}", ROUTE_CACHE_MAX + 3));
        assert_eq!(
            late,
            intern_route("PUT", &format!("/r{}", ROUTE_CACHE_MAX + 3))
        );
        assert_eq!(route_id(&Method::GET, "/users/{id}"), id);
    }
}
