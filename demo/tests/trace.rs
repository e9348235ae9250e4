//! `/debug/pprof/trace` on the running demo: a window taken during traffic is Chrome
//! trace-event JSON holding each request's span with its id and a duration that agrees
//! with what the client saw, and tokio's task polls per worker thread.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;
use testkit::{Demo, get, request};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_during_traffic_holds_the_requests_with_their_ids_and_durations() {
    let demo = Demo::start(bin(), &[], &[]);
    let url = demo.diag_url("/debug/pprof/trace?seconds=5");
    let window = tokio::spawn(async move { get(&url).await });
    // Requests one after another until the window has answered, whenever it opened: the
    // ones it holds must be a run of them with no gap. (request id, client-side duration)
    let mut sent: Vec<(String, Duration)> = Vec::new();
    while !window.is_finished() {
        let path = if sent.len() % 2 == 0 {
            "/sleep?ms=150"
        } else {
            "/"
        };
        let t = Instant::now();
        let r = request(Method::GET, &demo.url(path), &[], b"").await;
        let took = t.elapsed();
        assert_eq!(r.status, StatusCode::OK);
        sent.push((r.header("x-request-id").to_owned(), took));
    }
    let r = window.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), "application/json");
    let doc: Value = serde_json::from_slice(&r.body).expect("valid JSON");
    let events = doc["traceEvents"].as_array().expect("traceEvents");
    for e in events {
        for key in ["ph", "pid", "tid", "name"] {
            assert!(e.get(key).is_some(), "{key} missing in {e}");
        }
    }
    // Each request's span: a begin and an end with its request id.
    let mut begins: HashMap<String, (f64, String)> = HashMap::new();
    let mut ends: HashMap<String, f64> = HashMap::new();
    for e in events.iter().filter(|e| e["name"] == "request") {
        let id = e["id"].as_str().unwrap().to_owned();
        match e["ph"].as_str().unwrap() {
            "b" => {
                let rid = e["args"]["request_id"].as_str().unwrap().to_owned();
                begins.insert(id, (e["ts"].as_f64().unwrap(), rid));
            }
            "e" => {
                ends.insert(id, e["ts"].as_f64().unwrap());
            }
            other => panic!("unexpected ph {other}"),
        }
    }
    let span_of: HashMap<&str, &str> = begins
        .iter()
        .map(|(id, (_, rid))| (rid.as_str(), id.as_str()))
        .collect();
    // The requests the window holds, by the order they were sent: one run, no gap.
    let held: Vec<usize> = (0..sent.len())
        .filter(|&i| span_of.contains_key(sent[i].0.as_str()))
        .collect();
    assert!(
        !held.is_empty(),
        "no request in the window: {begins:?} vs {sent:?}"
    );
    let (first, last) = (held[0], held[held.len() - 1]);
    assert_eq!(
        held,
        (first..=last).collect::<Vec<_>>(),
        "every request in the window: {begins:?} vs {sent:?}"
    );
    let mut matched = 0;
    for (i, (rid, client)) in sent.iter().enumerate().take(last + 1).skip(first) {
        let id = span_of[rid.as_str()];
        let Some(end) = ends.get(id) else {
            // Only the last one may still run when the window closes.
            assert_eq!(i, last, "{rid}: no end of its span");
            continue;
        };
        let server_us = end - begins[id].0;
        assert!(server_us > 0.0, "{rid}: {server_us} µs");
        // The server's span lies within what the client waited.
        assert!(
            server_us <= client.as_secs_f64() * 1e6,
            "{rid}: span {server_us} µs, client {client:?}"
        );
        matched += 1;
    }
    assert!(
        matched >= 6,
        "{matched} whole requests in the window: {sent:?}"
    );
    // /sleep's spans last at least the sleep.
    let sleeps = begins
        .iter()
        .filter(|(id, (start, _))| ends.get(*id).is_some_and(|end| end - start >= 150_000.0))
        .count();
    assert!(sleeps >= 3, "{begins:?} / {ends:?}");
    // Task polls, on worker threads that are named.
    let polls: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    assert!(!polls.is_empty(), "no task polls recorded");
    assert!(polls.iter().all(|p| p["dur"].as_f64().unwrap() >= 0.0));
    assert!(
        polls.iter().any(|p| p["name"] == "demo::sleep"),
        "the named sleep tasks' polls"
    );
    let names: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("tokio")), "{names:?}");
    assert_eq!(doc["otherData"]["events_dropped"], 0);
}

#[tokio::test]
async fn bad_parameters_and_one_window_at_a_time() {
    let demo = Demo::start(bin(), &[], &[]);
    for (query, expect) in [
        ("seconds=0", "an integer from 1 to 60"),
        ("seconds=61", "an integer from 1 to 60"),
        ("seconds=x", "an integer from 1 to 60"),
    ] {
        let r = get(&demo.diag_url(&format!("/debug/pprof/trace?{query}"))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(r.text().contains(expect), "{query}: {}", r.text());
    }
    // Two windows asked for at once (within 5 s of each other however slow the machine):
    // whichever comes first records, the other is refused while it is open.
    let windows: Vec<_> = (0..2)
        .map(|_| {
            let url = demo.diag_url("/debug/pprof/trace?seconds=5");
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let mut answers = Vec::new();
    for w in windows {
        answers.push(w.await.unwrap());
    }
    answers.sort_by_key(|r| r.status);
    let (first, second) = (&answers[0], &answers[1]);
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(second.status, StatusCode::CONFLICT, "{}", second.text());
    assert!(second.text().contains("already open"), "{}", second.text());
}

#[tokio::test]
async fn without_the_layer_the_answer_says_how_to_install_it() {
    let demo = Demo::start(bin(), &["--no-trace-layer"], &[]);
    let r = get(&demo.diag_url("/debug/pprof/trace?seconds=1")).await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED);
    assert!(r.text().contains("diag::trace::layer()"), "{}", r.text());
    assert_eq!(get(&demo.url("/")).await.status, StatusCode::OK);
}
