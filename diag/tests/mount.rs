//! diag mounted the three ways, over real sockets: merged into an axum app, as a tower
//! layer on a plain hyper server, and as a sidecar. Plus what every mount shares: the index,
//! cmdline, the 404 listing, Go-style errors, the token, and the limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http::{Method, StatusCode};
use testkit::{basic_auth, get as http_get, get_with, profile_running, request};

fn app_with_fallback(cfg: diag::Config) -> Router {
    Router::new()
        .route("/", get(|| async { "app root" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "app fallback") })
        .merge(diag::router(cfg))
}

fn assert_go_error(r: &testkit::Reply, status: StatusCode) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(r.header("x-go-pprof"), "1");
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    assert_eq!(r.header("content-disposition"), "");
}

/// The CPU sampler is the process's, and the index page's "A CPU profile is running" is
/// true whichever router's profile runs: the tests here that start a profile (and wait
/// for that line with `profile_running`) take this lock, one at a time, so the line they
/// see is their own profile's.
static ONE_PROFILE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn merged_into_an_app_with_its_own_fallback() {
    let addr = testkit::serve(app_with_fallback(diag::Config::default())).await;
    let url = |p: &str| format!("http://{addr}{p}");

    // The app keeps its routes and its fallback.
    assert_eq!(http_get(&url("/")).await.text(), "app root");
    let r = http_get(&url("/elsewhere")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::NOT_FOUND, "app fallback")
    );

    // The index lists every endpoint with copy-paste commands for this host.
    let r = http_get(&url("/debug/pprof/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").starts_with("text/html"));
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    let html = r.text();
    for path in ["profile", "flamegraph", "symbol", "cmdline"] {
        assert!(
            html.contains(&format!("href=\"/debug/pprof/{path}\"")),
            "{path} missing:\n{html}"
        );
    }
    assert!(
        html.contains(&format!(
            "go tool pprof -top &#39;http://{addr}/debug/pprof/profile?seconds=30&#39;"
        )),
        "{html}"
    );
    assert!(
        html.contains(&format!("http://{addr}/debug/pprof/flamegraph?seconds=30")),
        "{html}"
    );
    assert!(html.contains("tokio-console"), "{html}");

    // The bare prefix redirects to the index, as Go's mux does.
    let r = http_get(&url("/debug/pprof")).await;
    assert!(r.status.is_redirection(), "{}", r.status);
    assert_eq!(r.header("location"), "/debug/pprof/");

    // An unknown path under the prefix is diag's 404, listing what exists.
    let r = http_get(&url("/debug/pprof/block")).await;
    assert_go_error(&r, StatusCode::NOT_FOUND);
    let text = r.text();
    assert!(text.contains("\"/debug/pprof/block\""), "{text}");
    for path in [
        "/debug/pprof/profile",
        "/debug/pprof/cmdline",
        "/debug/pprof/symbol",
    ] {
        assert!(text.contains(path), "{path} not listed: {text}");
    }
}

#[tokio::test]
async fn cmdline_is_nul_separated_arguments() {
    let addr = testkit::serve(app_with_fallback(diag::Config::default())).await;
    let r = http_get(&format!("http://{addr}/debug/pprof/cmdline")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
    let expected: Vec<String> = std::env::args().collect();
    assert_eq!(r.text(), expected.join("\0"));
}

#[tokio::test]
async fn wrong_method_is_a_go_style_405() {
    let addr = testkit::serve(app_with_fallback(diag::Config::default())).await;
    let r = request(
        Method::DELETE,
        &format!("http://{addr}/debug/pprof/cmdline"),
        &[],
        b"",
    )
    .await;
    assert_go_error(&r, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), "GET, HEAD");
}

#[tokio::test]
async fn custom_prefix() {
    let addr = testkit::serve(app_with_fallback(
        diag::Config::default()
            .with_prefix("/internal/pprof/")
            .unwrap(),
    ))
    .await;
    assert_eq!(
        http_get(&format!("http://{addr}/internal/pprof/"))
            .await
            .status,
        StatusCode::OK
    );
    let r = http_get(&format!("http://{addr}/debug/pprof/")).await;
    assert_eq!(r.text(), "app fallback");
    let r = http_get(&format!("http://{addr}/internal/pprof/nope")).await;
    assert!(r.text().contains("/internal/pprof/profile"), "{}", r.text());
}

#[tokio::test]
async fn tower_layer_on_a_plain_hyper_server() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A plain hyper service, no axum in it.
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let body = format!("hyper app saw {}", req.uri().path());
        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
    });
    let svc = tower::ServiceBuilder::new()
        .layer(diag::DiagLayer::new(diag::Config::default()))
        .service(app);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let url = |p: &str| format!("http://{addr}{p}");
    assert_eq!(
        http_get(&url("/hello")).await.text(),
        "hyper app saw /hello"
    );
    // A path that merely starts with the prefix's letters is the app's.
    assert_eq!(
        http_get(&url("/debug/pprofx")).await.text(),
        "hyper app saw /debug/pprofx"
    );
    let r = http_get(&url("/debug/pprof/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("/debug/pprof/profile"));
    assert_go_error(
        &http_get(&url("/debug/pprof/nope")).await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test]
async fn sidecar_serves_and_stops() {
    let sidecar = diag::serve(diag::Config::default(), "127.0.0.1:0")
        .await
        .unwrap();
    let addr = sidecar.local_addr();
    assert!(addr.ip().is_loopback());
    let r = http_get(&format!("http://{addr}/debug/pprof/")).await;
    assert_eq!(r.status, StatusCode::OK);
    sidecar.shutdown().await.unwrap();
    let refused = testkit::try_request(
        Method::GET,
        &format!("http://{addr}/debug/pprof/"),
        &[],
        b"",
    )
    .await;
    assert!(
        refused.is_err(),
        "still answering after shutdown: {refused:?}"
    );
}

#[tokio::test]
async fn a_profile_in_flight_at_shutdown_ends_early_with_what_it_has() {
    let _one = ONE_PROFILE_AT_A_TIME.lock().await;
    let stop = diag::Shutdown::new();
    let sidecar = diag::serve(
        diag::Config::default().with_shutdown(stop.clone()),
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let addr = sidecar.local_addr();
    let started = Instant::now();
    // The shutdown comes once the profile runs (before, the sidecar would refuse it).
    let profile = profile_running(
        &format!("http://{addr}/debug/pprof/profile?seconds=300&format=folded"),
        &format!("http://{addr}/debug/pprof/"),
    )
    .await;
    stop.trigger();
    let r = profile.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("x-diag-ended-early"), "shutdown");
    // Well before its 300 s window, however slow the machine.
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "took {:?}",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(60), sidecar.wait())
        .await
        .expect("sidecar stopped")
        .unwrap();
}

async fn with_token() -> SocketAddr {
    testkit::serve(app_with_fallback(
        diag::Config::default().with_token("s3cret"),
    ))
    .await
}

#[tokio::test]
async fn token_is_required_and_accepted_as_bearer_or_basic() {
    let addr = with_token().await;
    let url = format!("http://{addr}/debug/pprof/cmdline");

    let r = http_get(&url).await;
    assert_go_error(&r, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate").starts_with("Basic"),
        "{:?}",
        r.headers
    );
    assert!(!r.text().contains("s3cret"));

    let r = get_with(&url, &[("authorization", "Bearer wrong")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = get_with(&url, &[("authorization", "Bearer s3cret")]).await;
    assert_eq!(r.status, StatusCode::OK);

    // What go tool pprof sends for http://:s3cret@host/...
    let r = get_with(&url, &[("authorization", &basic_auth("", "s3cret"))]).await;
    assert_eq!(r.status, StatusCode::OK);
    // And a scraper that sets a user name too.
    let r = get_with(&url, &[("authorization", &basic_auth("alloy", "s3cret"))]).await;
    assert_eq!(r.status, StatusCode::OK);

    // Unknown paths are not revealed without the token either; the app is untouched.
    assert_eq!(
        http_get(&format!("http://{addr}/debug/pprof/nope"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http_get(&format!("http://{addr}/")).await.text(),
        "app root"
    );
}

#[tokio::test]
async fn seconds_over_the_cap_is_refused_with_the_range() {
    let addr = testkit::serve(app_with_fallback(
        diag::Config::default().with_max_seconds(5),
    ))
    .await;
    for (value, shown) in [
        ("6", "\"6\""),
        ("0", "\"0\""),
        ("-1", "\"-1\""),
        ("abc", "\"abc\""),
    ] {
        let r = http_get(&format!(
            "http://{addr}/debug/pprof/profile?seconds={value}"
        ))
        .await;
        assert_go_error(&r, StatusCode::BAD_REQUEST);
        let text = r.text();
        assert!(text.contains("\"seconds\""), "{text}");
        assert!(text.contains(shown), "{text}");
        assert!(text.contains("from 1 to 5"), "{text}");
    }
    // The default cap is 300.
    let addr = testkit::serve(app_with_fallback(diag::Config::default())).await;
    let r = http_get(&format!("http://{addr}/debug/pprof/profile?seconds=301")).await;
    assert_go_error(&r, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("from 1 to 300"), "{}", r.text());
}

#[tokio::test]
async fn heavy_operations_beyond_the_cap_get_429() {
    let _one = ONE_PROFILE_AT_A_TIME.lock().await;
    let addr = testkit::serve(app_with_fallback(
        diag::Config::default().with_max_concurrent(1),
    ))
    .await;
    // The first profile holds the only permit once the index page shows it running, for
    // the rest of its 10 s window: time to spare for the requests below on a slow machine.
    let first = profile_running(
        &format!("http://{addr}/debug/pprof/profile?seconds=10&format=folded"),
        &format!("http://{addr}/debug/pprof/"),
    )
    .await;
    let r = http_get(&format!("http://{addr}/debug/pprof/profile?seconds=1")).await;
    assert_go_error(&r, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), "5");
    assert!(r.text().contains("limit is 1"), "{}", r.text());
    // Cheap endpoints are not capped.
    assert_eq!(
        http_get(&format!("http://{addr}/debug/pprof/cmdline"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    // The permit is back once the first answered.
    let r = http_get(&format!(
        "http://{addr}/debug/pprof/profile?seconds=1&format=folded"
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// This process allocates with the system allocator: the heap endpoints say so, and how to
/// install jemalloc, instead of serving an empty profile (or, without the feature, say how
/// to enable it).
#[tokio::test]
async fn heap_endpoints_explain_what_is_missing() {
    let addr = testkit::serve(diag::router(diag::Config::default())).await;
    let expected = if cfg!(feature = "heap") {
        "jemalloc is not this process's global allocator"
    } else {
        "enable diag's `heap` feature"
    };
    for path in ["heap", "allocs", "heap/stats", "heap?seconds=1&format=svg"] {
        let r = http_get(&format!("http://{addr}/debug/pprof/{path}")).await;
        assert_go_error(&r, StatusCode::NOT_IMPLEMENTED);
        let text = r.text();
        assert!(text.contains(expected), "{path}: {text}");
        assert!(text.contains("tikv-jemallocator"), "{path}: {text}");
    }
    let index = http_get(&format!("http://{addr}/debug/pprof/"))
        .await
        .text();
    assert!(index.contains(&expected.replace('\'', "&#39;")), "{index}");
    #[cfg(feature = "heap")]
    assert!(diag::heap::stats().is_err());
    // Still serving.
    let r = http_get(&format!("http://{addr}/debug/pprof/cmdline")).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// What axum cannot route (a capture, a wildcard, a brace, an empty segment), what would
/// never match a request (`..`, a space, `?`, `%`, non-ASCII) is refused when the prefix is
/// set, naming it and what is allowed, instead of a panic when the router is built.
#[test]
fn a_prefix_that_cannot_be_routed_is_an_error_naming_it() {
    for bad in [
        "/debug/:id",
        ":x",
        "/x/*rest",
        "*x",
        "/{id}",
        "/a{b",
        "/a}b",
        "/a//b",
        "//",
        "x//",
        "/a/../b",
        "/./a",
        "/a b",
        " /a",
        "/a?b",
        "/a#b",
        "/a%20b",
        "/caf\u{e9}",
    ] {
        let err = diag::Config::default()
            .with_prefix(bad)
            .expect_err(&format!("{bad:?} was accepted"));
        assert_eq!(err.prefix, bad);
        let text = err.to_string();
        assert!(text.contains(&format!("{bad:?}")), "{bad}: {text}");
        assert!(text.contains("letters, digits and -._~"), "{bad}: {text}");
    }
}

/// Prefixes that pass are normalised and mount on a real port, the root included.
#[tokio::test]
async fn good_prefixes_mount_and_answer() {
    for (given, served) in [
        ("/internal/pprof", "/internal/pprof"),
        ("ops/debug-v2/", "/ops/debug-v2"),
        ("/_diag~x.1", "/_diag~x.1"),
        ("/", ""),
        ("", ""),
    ] {
        let cfg = diag::Config::default().with_prefix(given).unwrap();
        assert_eq!(cfg.prefix(), served);
        let addr = testkit::serve(diag::router(cfg)).await;
        let r = http_get(&format!("http://{addr}{served}/")).await;
        assert_eq!(r.status, StatusCode::OK, "{given:?}: {}", r.text());
        let html = r.text();
        assert!(
            html.contains(&format!("href=\"{served}/profile\"")),
            "{given:?}: {html}"
        );
        let r = http_get(&format!("http://{addr}{served}/cmdline")).await;
        assert_eq!(r.status, StatusCode::OK, "{given:?}");
        let r = http_get(&format!("http://{addr}{served}/nope")).await;
        assert_go_error(&r, StatusCode::NOT_FOUND);
        assert!(
            r.text().contains(&format!("{served}/profile")),
            "{}",
            r.text()
        );
    }
}

/// `Config::with_retry_after` is what a 429 carries.
#[tokio::test]
async fn the_429_carries_the_configured_retry_after() {
    let _one = ONE_PROFILE_AT_A_TIME.lock().await;
    let stop = diag::Shutdown::new();
    let cfg = diag::Config::default()
        .with_max_concurrent(1)
        .with_retry_after(Duration::from_secs(17))
        .with_shutdown(stop.clone());
    let addr = testkit::serve(app_with_fallback(cfg)).await;
    let first = profile_running(
        &format!("http://{addr}/debug/pprof/profile?seconds=60&format=folded"),
        &format!("http://{addr}/debug/pprof/"),
    )
    .await;
    let refused = http_get(&format!("http://{addr}/debug/pprof/profile?seconds=1")).await;
    assert_go_error(&refused, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("retry-after"), "17");
    assert!(
        refused.text().contains("retry after 17 s"),
        "{}",
        refused.text()
    );
    // The first profile ends early at shutdown, with what it has.
    stop.trigger();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
}

/// One address type for the sidecar and the console (`impl ToSocketAddrs`: a string, a
/// `SocketAddr`, a host and port), and the console setting takes the server it describes:
/// the index shows the address the console is bound to.
#[cfg(feature = "console")]
#[tokio::test]
async fn the_console_and_the_sidecar_take_the_same_addresses() {
    let (_layer, console) = diag::console::bind("127.0.0.1:0", Duration::from_secs(1))
        .await
        .unwrap();
    let at = console.local_addr();
    assert!(at.ip().is_loopback() && at.port() != 0, "{at}");
    // The same address again: an error naming it, not a panic.
    let taken = diag::console::bind(at, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(taken, diag::console::ConsoleError::Bind { addr: Some(a), .. } if a == at),
        "{taken:?}"
    );
    assert!(
        taken
            .to_string()
            .contains(&format!("cannot serve tokio-console on {at}")),
        "{taken}"
    );
    let stop = diag::Shutdown::new();
    let cfg = diag::Config::default()
        .with_shutdown(stop.clone())
        .with_console(&console);
    let sidecar = diag::serve(cfg, ("127.0.0.1", 0)).await.unwrap();
    let html = http_get(&format!("http://{}/debug/pprof/", sidecar.local_addr()))
        .await
        .text();
    assert!(
        html.contains(&format!("tokio-console http://{at}")),
        "{html}"
    );
    let other = diag::serve(
        diag::Config::default(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    assert!(other.local_addr().ip().is_loopback());
    other.shutdown().await.unwrap();
    sidecar.shutdown().await.unwrap();
}
