//! Standing property tests over every query parser and the `/symbol` body: whatever a
//! client sends, diag answers with a status it documents (never a 5xx from a client's
//! mistake, never a panic), and an error's text stays short however long the input.
//!
//! The router runs in process (`tower::ServiceExt::oneshot`) with its shutdown already
//! triggered, so a request that parses is refused with 503 before any profile starts:
//! thousands of cases cost milliseconds, not windows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::ServiceExt;

/// Every endpoint that reads a query.
const QUERIED: &[&str] = &[
    "profile",
    "flamegraph",
    "symbol",
    "heap",
    "allocs",
    "heap/stats",
    "goroutine",
    "tasks",
    "wall",
    "trace",
];

/// The parameter names diag reads, and some it does not.
const NAMES: &[&str] = &[
    "seconds",
    "frequency",
    "format",
    "debug",
    "gc",
    "timeout",
    "force",
    "hz",
    "sample_index",
    "since",
    "start",
    "end",
    "x",
    "",
];

fn router() -> axum::Router {
    let stop = diag::Shutdown::new();
    stop.trigger();
    diag::router(diag::Config::default().with_shutdown(stop))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn call(
    app: axum::Router,
    method: Method,
    uri: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    let status = res.status();
    let go = res
        .headers()
        .get("x-go-pprof")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, body, go)
}

/// A value a client might send: numbers in and out of range, words, junk, huge strings.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..400).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        prop::sample::select(vec![
            "proto",
            "svg",
            "folded",
            "text",
            "prometheus",
            "1",
            "2",
            "true",
            ""
        ])
        .prop_map(str::to_owned),
        "\\PC{0,40}",
        // http::Uri holds at most 64 KiB: five of these (and their names) stay under it.
        (1usize..12_000).prop_map(|n| "9".repeat(n)),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(NAMES.to_vec()), value()), 0..5).prop_map(|pairs| {
        let mut q = form_urlencoded_pairs(&pairs);
        if q.is_empty() {
            q.push_str("none");
        }
        q
    })
}

fn form_urlencoded_pairs(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What any answer must satisfy: a documented status, and an error that `go tool pprof`
/// shows (text, `X-Go-Pprof`) and that does not echo the input back whole.
fn check(status: StatusCode, body: &[u8], go: &str, what: &str) -> Result<(), TestCaseError> {
    let what: String = what.chars().take(200).collect();
    prop_assert!(
        [
            StatusCode::OK,
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_IMPLEMENTED,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::PAYLOAD_TOO_LARGE,
        ]
        .contains(&status),
        "{what}: status {status}: {}",
        String::from_utf8_lossy(body)
    );
    if status != StatusCode::OK {
        prop_assert_eq!(go, "1", "{}: {} without X-Go-Pprof", what, status);
        prop_assert!(body.len() < 2048, "{what}: a {} byte error", body.len());
    }
    if status == StatusCode::BAD_REQUEST {
        let text = String::from_utf8_lossy(body);
        prop_assert!(
            text.contains("invalid value for") || text.contains("allowed"),
            "{what}: a 400 that names nothing: {text}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_query_gets_a_documented_answer(
        endpoint in prop::sample::select(QUERIED.to_vec()),
        q in query(),
    ) {
        let uri = format!("/debug/pprof/{endpoint}?{q}");
        let (status, body, go) = runtime().block_on(call(router(), Method::GET, &uri, Vec::new()));
        check(status, &body, &go, &uri)?;
    }

    #[test]
    fn every_symbol_body_gets_a_documented_answer(
        words in prop::collection::vec(
            prop_oneof![
                any::<u64>().prop_map(|a| format!("{a:#x}")),
                any::<u64>().prop_map(|a| format!("{a:#X}")),
                "\\PC{0,20}",
                (1usize..50_000).prop_map(|n| "f".repeat(n)),
            ],
            0..50,
        ),
        sep in prop::sample::select(vec!["+", " + ", "++", "\n"]),
    ) {
        let body = words.join(sep).into_bytes();
        let (status, out, go) =
            runtime().block_on(call(router(), Method::POST, "/debug/pprof/symbol", body));
        check(status, &out, &go, "POST /symbol")?;
        if status == StatusCode::OK {
            prop_assert!(out.starts_with(b"num_symbols: 1\n"));
        }
    }
}

#[test]
fn a_symbol_body_over_the_limit_is_refused_in_go_style() {
    let body = "0x1+".repeat(1 << 20).into_bytes();
    let (status, out, go) =
        runtime().block_on(call(router(), Method::POST, "/debug/pprof/symbol", body));
    assert!(
        status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::BAD_REQUEST,
        "{status}"
    );
    assert_eq!(go, "1");
    assert!(out.len() < 2048, "{}", String::from_utf8_lossy(&out));
}
