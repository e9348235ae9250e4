//! The axum router: endpoints, the token check, and the headers every answer carries.

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, any, get};
use base64::Engine;
use http::{HeaderMap, HeaderValue, header};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::ApiError;
use crate::index;
use crate::state::Diag;

/// One endpoint under the prefix, for the router, the index page and the 404 listing.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Path below the prefix, without the leading `/`.
    pub(crate) path: &'static str,
    /// One line on what it gives.
    pub(crate) summary: &'static str,
    /// `Err(how to enable it)` when this build or process lacks it.
    pub(crate) available: fn() -> Result<(), String>,
}

const CPU_MISSING: &str = "this build has no CPU profiling: enable diag's `cpu` feature \
     (on by default), e.g. diag = { version = \"..\", features = [\"cpu\"] }";

#[cfg(not(feature = "heap"))]
const HEAP_MISSING: &str = "this build has no heap profiling: enable diag's `heap` \
     feature (diag = { version = \"..\", features = [\"heap\"] }) and install tikv-jemallocator \
     as the global allocator; see docs/guide.md";

fn always() -> Result<(), String> {
    Ok(())
}

fn cpu_available() -> Result<(), String> {
    if !cfg!(feature = "cpu") {
        Err(CPU_MISSING.to_owned())
    } else if !cfg!(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        // The index says so too, not only the 501.
        Err(CPU_UNSUPPORTED.to_owned())
    } else {
        Ok(())
    }
}

const CPU_UNSUPPORTED: &str = "CPU profiling needs Linux on x86_64 or aarch64 (diag's own      sampler: per-thread CPU timers and a frame-pointer walk); this build is for another      platform";

fn trace_available() -> Result<(), String> {
    #[cfg(feature = "trace")]
    return crate::trace::available();
    #[cfg(not(feature = "trace"))]
    Err(TRACE_MISSING.to_owned())
}

#[cfg(not(feature = "trace"))]
const TRACE_MISSING: &str = "this build has no /trace: enable diag's `trace` feature and add \
     diag::trace::layer() to the application's tracing subscriber";

fn tasks_available() -> Result<(), String> {
    #[cfg(feature = "taskdump")]
    return crate::tasks::available();
    #[cfg(not(feature = "taskdump"))]
    Err(TASKS_MISSING.to_owned())
}

#[cfg(not(feature = "taskdump"))]
const TASKS_MISSING: &str = "this build has no task dumps: enable diag's `taskdump` feature \
     (and build with RUSTFLAGS=\"--cfg tokio_unstable\", on Linux x86, x86_64, aarch64 or \
     s390x)";

fn heap_available() -> Result<(), String> {
    #[cfg(feature = "heap")]
    return crate::heap::available();
    #[cfg(not(feature = "heap"))]
    Err(HEAP_MISSING.to_owned())
}

/// Every endpoint diag serves, in the order the index shows them.
pub(crate) const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "",
        summary: "this page",
        available: always,
    },
    Endpoint {
        path: "profile",
        summary: "CPU profile over ?seconds=N (default 30) at ?frequency=HZ (default 99): \
                  gzipped profile.proto for go tool pprof, or ?format=svg|folded",
        available: cpu_available,
    },
    Endpoint {
        path: "flamegraph",
        summary: "CPU flamegraph over ?seconds=N, as an SVG download for a browser",
        available: cpu_available,
    },
    Endpoint {
        path: "symbol",
        summary: "Go's symbol protocol: POST hex addresses joined by +, get function names",
        available: cpu_available,
    },
    Endpoint {
        path: "heap",
        summary: "memory in use (and allocated ever) by allocating stack, from jemalloc's \
                  sampling: gzipped profile.proto, ?seconds=N for the change over a window, \
                  ?format=svg|folded",
        available: heap_available,
    },
    Endpoint {
        path: "allocs",
        summary: "the heap profile with allocated bytes (alloc_space) as its default view",
        available: heap_available,
    },
    Endpoint {
        path: "heap/stats",
        summary: "jemalloc's allocated, active, resident, mapped and retained bytes \
                  (?format=prometheus)",
        available: heap_available,
    },
    Endpoint {
        path: "goroutine",
        summary: "where every tokio task waits (a task dump), as go tool pprof reads it \
                  (goroutine/count); ?debug=1 grouped text, ?debug=2 each task",
        available: tasks_available,
    },
    Endpoint {
        path: "tasks",
        summary: "the task dump as readable text, stacks grouped with their counts",
        available: tasks_available,
    },
    Endpoint {
        path: "wall",
        summary: "wall-time profile of the traced tokio tasks over ?seconds=N (default 30) at \
                  ?hz=N (default 20): each task's await stack at each sample, weighted by \
                  time (wall/nanoseconds), so awaiting shows, and the stacks of threads \
                  blocked or running outside tokio's polling (?threads=0: tasks alone); \
                  ?format=svg|folded",
        available: tasks_available,
    },
    Endpoint {
        path: "trace",
        summary: "what the process did over ?seconds=N (default 1): tracing spans (each \
                  request's), events and tokio task polls per thread, as Chrome trace-event \
                  JSON for Perfetto (not Go's trace format)",
        available: trace_available,
    },
    Endpoint {
        path: "cmdline",
        summary: "the command line of this process, arguments separated by NUL bytes",
        available: always,
    },
];

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
    crate::cpu::start_recorder(diag.cfg());
    let prefix = diag.cfg().prefix().to_owned();
    let at = |path: &str| format!("{prefix}/{path}");
    let mut r: Router<Diag> = Router::new()
        .route(&at(""), only_get(get(index::index)))
        .route(&at("cmdline"), only_get(get(cmdline)))
        .route(&at("{*rest}"), any(not_found));
    r = cpu_routes(r, &at);
    r = heap_routes(r, &at);
    r = task_routes(r, &at);
    r = trace_routes(r, &at);
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

#[cfg(feature = "cpu")]
fn cpu_routes(r: Router<Diag>, at: &impl Fn(&str) -> String) -> Router<Diag> {
    use crate::cpu;
    use crate::symbols::http as symbol;
    // From here on, a SIGPROF (a stray `kill -PROF`, a late timer) cannot end the process:
    // diag's handler passes foreign ones to the application's action, never the default.
    cpu::install_handler();
    r.route(&at("profile"), only_get(get(cpu::profile)))
        .route(&at("flamegraph"), only_get(get(cpu::flamegraph)))
        .route(
            &at("symbol"),
            get(symbol::symbol).post(symbol::symbol).fallback(|| async {
                ApiError::MethodNotAllowed {
                    allowed: "GET, HEAD, POST",
                }
            }),
        )
}

#[cfg(not(feature = "cpu"))]
fn cpu_routes(r: Router<Diag>, at: &impl Fn(&str) -> String) -> Router<Diag> {
    let missing = || async { ApiError::NotImplemented(CPU_MISSING.to_owned()) };
    r.route(&at("profile"), any(missing))
        .route(&at("flamegraph"), any(missing))
        .route(&at("symbol"), any(missing))
}

#[cfg(feature = "trace")]
fn trace_routes(r: Router<Diag>, at: &impl Fn(&str) -> String) -> Router<Diag> {
    r.route(&at("trace"), only_get(get(crate::trace::trace)))
}

#[cfg(not(feature = "trace"))]
fn trace_routes(r: Router<Diag>, at: &impl Fn(&str) -> String) -> Router<Diag> {
    r.route(
        &at("trace"),
        any(|| async { ApiError::NotImplemented(TRACE_MISSING.to_owned()) }),
    )
}

#[cfg(feature = "taskdump")]
fn task_routes(r: Router<Diag>, at: &impl Fn(&str) -> String) -> Router<Diag> {
    r.route(&at("goroutine"), only_get(get(crate::tasks::goroutine)))
        .route(&at("tasks"), only_get(get(crate::tasks::tasks)))
        .route(&at("wall"), only_get(get(crate::wall::wall)))
}

#[cfg(not(feature = "taskdump"))]
fn task_routes(r: Router<Diag>, at: &impl Fn(&str) -> String) -> Router<Diag> {
    let missing = || async { ApiError::NotImplemented(TASKS_MISSING.to_owned()) };
    r.route(&at("goroutine"), any(missing))
        .route(&at("tasks"), any(missing))
        .route(&at("wall"), any(missing))
}

#[cfg(feature = "heap")]
fn heap_routes(r: Router<Diag>, at: &impl Fn(&str) -> String) -> Router<Diag> {
    use crate::heap;
    r.route(&at("heap"), only_get(get(heap::heap)))
        .route(&at("allocs"), only_get(get(heap::allocs)))
        .route(&at("heap/stats"), only_get(get(heap::heap_stats)))
}

#[cfg(not(feature = "heap"))]
fn heap_routes(r: Router<Diag>, at: &impl Fn(&str) -> String) -> Router<Diag> {
    let missing = || async { ApiError::NotImplemented(HEAP_MISSING.to_owned()) };
    r.route(&at("heap"), any(missing))
        .route(&at("allocs"), any(missing))
        .route(&at("heap/stats"), any(missing))
}

fn only_get(m: MethodRouter<Diag>) -> MethodRouter<Diag> {
    m.fallback(|| async {
        ApiError::MethodNotAllowed {
            allowed: "GET, HEAD",
        }
    })
}

/// The token check, then `nosniff` on whatever is answered, and `X-Go-Pprof: 1` on every
/// plain-text error, axum's own rejections included (a body over the limit, say), so
/// `go tool pprof` shows their text too.
async fn guard(State(d): State<Diag>, req: Request, next: Next) -> Response {
    let mut res = match &d.cfg().token {
        Some(token) if !authorized(req.headers(), token) => ApiError::Unauthorized.into_response(),
        _ => next.run(req).await,
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

/// Whether the request presents `token`: as `Bearer TOKEN`, or as the password of Basic
/// auth (any user name), compared in constant time.
pub(crate) fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    let presented: Vec<u8> = if scheme.eq_ignore_ascii_case("bearer") {
        rest.as_bytes().to_vec()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return false;
        };
        match decoded.iter().position(|b| *b == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    // `ct_eq` on slices of different lengths is false without comparing contents; the
    // token's length is not the secret.
    bool::from(presented.as_slice().ct_eq(token.as_bytes()))
}

async fn cmdline() -> Response {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        args.join("\0"),
    )
        .into_response()
}

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

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().expect("header value"));
        h
    }

    #[test]
    fn bearer_and_basic_password_are_accepted() {
        let basic = base64::engine::general_purpose::STANDARD.encode(":s3cret");
        let basic_user = base64::engine::general_purpose::STANDARD.encode("alloy:s3cret");
        assert!(authorized(&with_auth("Bearer s3cret"), "s3cret"));
        assert!(authorized(&with_auth(&format!("Basic {basic}")), "s3cret"));
        assert!(authorized(
            &with_auth(&format!("basic {basic_user}")),
            "s3cret"
        ));
    }

    #[test]
    fn wrong_or_missing_credentials_are_refused() {
        let basic_user_only = base64::engine::general_purpose::STANDARD.encode("s3cret");
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
        assert!(!authorized(&with_auth("Bearer s3cre"), "s3cret"));
        assert!(!authorized(&with_auth("Bearer s3cretx"), "s3cret"));
        assert!(!authorized(
            &with_auth(&format!("Basic {basic_user_only}")),
            "s3cret"
        ));
        assert!(!authorized(&with_auth("Basic !!!"), "s3cret"));
        assert!(!authorized(&with_auth("Token s3cret"), "s3cret"));
    }
}
