//! The trace layer costs nothing outside a window: with it installed and idle, tracing's
//! global maximum level and each callsite's interest are what the application's other
//! layers make them, as if the layer were absent. A window raises them while it is open
//! and puts them back when it ends, including when the client hangs up mid-window.
//!
//! One test function: the subscriber and tracing's callsite cache are process-wide.
#![cfg(feature = "trace")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::prelude::*;

/// Waits until tracing's global maximum level is `want`, failing after `within`.
async fn level_becomes(want: LevelFilter, within: Duration) {
    let t = Instant::now();
    while LevelFilter::current() != want {
        assert!(
            t.elapsed() < within,
            "the global max level stayed {} (wanted {want})",
            LevelFilter::current()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[inline(never)]
fn debug_callsite_on() -> bool {
    tracing::enabled!(Level::DEBUG)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_layer_leaves_levels_and_interest_as_the_other_layers_set_them() {
    // The application's own layer logs at INFO, as a service's fmt layer does.
    tracing_subscriber::registry()
        .with(diag::trace::layer())
        .with(tracing_subscriber::fmt::layer().with_filter(LevelFilter::INFO))
        .init();
    let addr = testkit::serve(diag::router(diag::Config::default())).await;

    // Idle: as if the layer were absent.
    assert_eq!(LevelFilter::current(), LevelFilter::INFO);
    assert!(!debug_callsite_on(), "a DEBUG callsite is live while idle");

    // A window: DEBUG and TRACE callsites reach the layer and are recorded.
    // 5 s: the events below go out at once when the window opens, with time to spare on
    // a loaded machine. The waits are for progress, generous for a cold, busy one.
    let url = format!("http://{addr}/debug/pprof/trace?seconds=5");
    let window = tokio::spawn(async move { testkit::get(&url).await });
    level_becomes(LevelFilter::TRACE, Duration::from_secs(60)).await;
    assert!(
        debug_callsite_on(),
        "a DEBUG callsite stayed off in a window"
    );
    tracing::debug!(marker = "inside", "debug event inside the window");
    tracing::trace_span!("trace_span_inside", n = 7).in_scope(|| {});
    let r = window.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let doc: Value = serde_json::from_slice(&r.body).unwrap();
    let events = doc["traceEvents"].as_array().unwrap();
    let event = events
        .iter()
        .find(|e| e["name"] == "debug event inside the window")
        .expect("the DEBUG event is in the window");
    assert_eq!(event["ph"], "i");
    assert_eq!(event["args"]["marker"], "inside");
    let span = events
        .iter()
        .find(|e| e["name"] == "trace_span_inside" && e["ph"] == "b")
        .expect("the TRACE span is in the window");
    assert_eq!(span["args"]["n"], "7");

    // Closed again: back to the application's levels.
    level_becomes(LevelFilter::INFO, Duration::from_secs(60)).await;
    assert!(
        !debug_callsite_on(),
        "a DEBUG callsite stayed live after the window"
    );

    // A client that hangs up mid-window: the handler is dropped and the window closes
    // with it, rather than recording until its 60 s (the most a window may ask) are up.
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET /debug/pprof/trace?seconds=60 HTTP/1.1\r\nhost: {addr}\r\n\r\n"
    )
    .unwrap();
    level_becomes(LevelFilter::TRACE, Duration::from_secs(60)).await;
    drop(conn);
    level_becomes(LevelFilter::INFO, Duration::from_secs(30)).await;
    assert!(!debug_callsite_on());

    // And the next window opens at once (the first one's lock went with it).
    let r = testkit::get(&format!("http://{addr}/debug/pprof/trace?seconds=1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    level_becomes(LevelFilter::INFO, Duration::from_secs(60)).await;
}
