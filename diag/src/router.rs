//! The axum router, derived from the endpoint table ([`crate::endpoints::ENDPOINTS`]), and
//! what every answer passes through: the token check and the headers every answer carries.

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, any, get};
use http::{HeaderValue, header};

use crate::config::Config;
use crate::endpoints::{ENDPOINTS, Endpoint};
use crate::error::ApiError;
use crate::state::Diag;

/// The diag endpoints as an axum [`Router`], generic over the caller's state so it can be
/// merged into any app: `app.merge(diag::router(cfg))`.
///
/// The router has no fallback of its own (axum panics when two merged routers both have
/// one): unknown paths under the prefix are answered by a `{prefix}/{*rest}` route with a
/// 404 that lists the known endpoints. Every answer carries
/// `X-Content-Type-Options: nosniff`; with a token configured, every request must present
/// it.
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// # async fn run() -> std::io::Result<()> {
/// let app = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .merge(diag::router(diag::Config::default().with_default_env()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub fn router<S>(cfg: Config) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let diag = Diag::new(cfg);
    #[cfg(feature = "cpu")]
    {
        crate::cpu::start_recorder(diag.cfg());
        // From here on, a SIGPROF (a stray `kill -PROF`, a late timer) cannot end the
        // process: diag's handler passes foreign ones to the application's action, never
        // the default.
        crate::cpu::install_handler();
    }
    let prefix = diag.cfg().prefix().to_owned();
    let at = |path: &str| format!("{prefix}/{path}");
    let mut r: Router<Diag> = Router::new().route(&at("{*rest}"), any(not_found));
    for e in ENDPOINTS {
        r = r.route(&at(e.path), method_router(e));
    }
    if !prefix.is_empty() {
        // Go's mux redirects the bare prefix to the index.
        let target = at("");
        r = r.route(
            &prefix,
            get(move || async move { Redirect::permanent(&target) }),
        );
    }
    r.layer(middleware::from_fn_with_state(diag.clone(), guard))
        .with_state(diag)
}

/// The endpoint's handler for its methods and a Go-style 405 for the others; in a build
/// without its part, a 501 saying how to enable it, whatever the method.
fn method_router(e: &Endpoint) -> MethodRouter<Diag> {
    match (e.route)(e.methods.filter()) {
        Some(handler) => {
            let allowed = e.methods.allowed();
            handler.fallback(move || async move { ApiError::MethodNotAllowed { allowed } })
        }
        None => {
            let missing = e.part.missing();
            any(move || {
                let missing = missing.clone();
                async move { ApiError::from(missing) }
            })
        }
    }
}

/// The token check, then `nosniff` on whatever is answered, and `X-Go-Pprof: 1` on every
/// plain-text error, axum's own rejections included (a body over the limit, say), so
/// `go tool pprof` shows their text too.
async fn guard(State(d): State<Diag>, req: Request, next: Next) -> Response {
    let mut res = match crate::auth::require(d.cfg().token.as_deref(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    };
    let error_text = (res.status().is_client_error() || res.status().is_server_error())
        && res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/plain"));
    let headers = res.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if error_text {
        headers.insert(crate::error::X_GO_PPROF, HeaderValue::from_static("1"));
    }
    res
}

/// An unknown path under the prefix: a 404 listing every endpoint.
async fn not_found(State(d): State<Diag>, req: Request) -> ApiError {
    let prefix = d.cfg().prefix();
    ApiError::NotFound {
        path: req.uri().path().to_owned(),
        known: ENDPOINTS
            .iter()
            .map(|e| format!("{prefix}/{}", e.path))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status, `Allow` and body of one in-process request to a fresh router.
    async fn answer(method: &str, path: &str) -> (u16, String, String) {
        use tower::ServiceExt as _;
        let app: Router = router(Config::new());
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .expect("request");
        let res = app.oneshot(req).await.expect("infallible");
        let status = res.status().as_u16();
        let allow = res
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, allow, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_404_lists_every_endpoint_in_order() {
        let (status, _, body) = answer("GET", "/debug/pprof/block").await;
        assert_eq!(status, 404);
        assert_eq!(
            body,
            "unknown profile: \"/debug/pprof/block\"\nknown endpoints:\n  /debug/pprof/\n  \
             /debug/pprof/profile\n  /debug/pprof/flamegraph\n  /debug/pprof/symbol\n  \
             /debug/pprof/heap\n  /debug/pprof/allocs\n  /debug/pprof/heap/stats\n  \
             /debug/pprof/goroutine\n  /debug/pprof/tasks\n  /debug/pprof/wall\n  \
             /debug/pprof/trace\n  /debug/pprof/cmdline\n"
        );
    }

    #[tokio::test]
    async fn each_endpoint_takes_its_methods() {
        for path in [
            "/debug/pprof/",
            "/debug/pprof/cmdline",
            "/debug/pprof/profile",
            "/debug/pprof/heap",
            "/debug/pprof/tasks",
            "/debug/pprof/trace",
        ] {
            let (status, allow, _) = answer("DELETE", path).await;
            if status == 405 {
                assert_eq!(allow, "GET, HEAD", "{path}");
            } else {
                // A feature this build lacks answers 501 to every method.
                assert_eq!(status, 501, "{path}");
            }
        }
        let (status, allow, _) = answer("PUT", "/debug/pprof/symbol").await;
        if cfg!(feature = "cpu") {
            assert_eq!((status, allow.as_str()), (405, "GET, HEAD, POST"));
        } else {
            assert_eq!(status, 501);
        }
        let (status, _, _) = answer("GET", "/debug/pprof").await;
        assert_eq!(status, 308);
    }
}
