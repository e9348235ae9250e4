//! Labels on CPU samples over real sockets, read by the real `go tool pprof`: routes
//! labelled by `RouteLabels`, labels inherited by spawned tasks, a task that moves
//! between worker threads, samples outside any request. The profiler is process-global:
//! this binary holds one test that takes every capture it needs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get as route_get;
use diag::labels::{self, LabelSet};
use http::StatusCode;
use testkit::{get, go_pprof, temp_dir, thread_cpu};

macro_rules! burner {
    ($name:ident, $salt:expr) => {
        /// Burns `cpu` of this thread's CPU time under its own name (the salt keeps an
        /// optimized build from merging the burners' otherwise identical code under one).
        #[inline(never)]
        fn $name(cpu: Duration) -> u64 {
            let end = thread_cpu() + cpu;
            let mut x = std::hint::black_box(1u64);
            while thread_cpu() < end {
                for i in 0..10_000u64 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(i ^ $salt);
                }
            }
            x
        }
    };
}
burner!(burn_route_a, 1);
burner!(burn_route_b, 2);
burner!(burn_spawned_child, 3);
burner!(burn_migrating, 4);
burner!(burn_outside_requests, 5);

const MS: Duration = Duration::from_millis(1);

/// Thread ids each `/migrate` request ran on, by request.
static MIGRATIONS: Mutex<Vec<HashSet<std::thread::ThreadId>>> = Mutex::new(Vec::new());

fn app() -> Router {
    Router::new()
        .route(
            "/a",
            route_get(|| async { burn_route_a(10 * MS).to_string() }),
        )
        .route(
            "/b",
            route_get(|| async { burn_route_b(30 * MS).to_string() }),
        )
        .route(
            "/spawned",
            route_get(|| async {
                // A child task inherits the request's labels, with one of its own added.
                let child =
                    labels::spawn(labels::scope(LabelSet::new([("job", "child")]), async {
                        burn_spawned_child(20 * MS)
                    }));
                child.await.unwrap_or(0).to_string()
            }),
        )
        .route(
            "/migrate",
            route_get(|| async {
                let mut seen = HashSet::new();
                let mut x = 0;
                for _ in 0..20 {
                    seen.insert(std::thread::current().id());
                    x ^= burn_migrating(MS);
                    tokio::task::yield_now().await;
                }
                MIGRATIONS.lock().unwrap().push(seen);
                x.to_string()
            }),
        )
        .layer(labels::RouteLabels::new())
        .merge(diag::router(diag::Config::default()))
}

/// Requests `paths` one after another until `on` is cleared.
fn client(addr: SocketAddr, paths: &'static [&'static str], on: Arc<AtomicBool>) {
    tokio::spawn(async move {
        while on.load(Ordering::Relaxed) {
            for p in paths {
                let r = get(&format!("http://{addr}{p}")).await;
                assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.text());
            }
        }
    });
}

/// `-tags` output: the share of each value of `key`, in percent.
fn tag_shares(tags: &str, key: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in tags.lines() {
        let t = line.trim();
        if t.starts_with(&format!("{key}:")) {
            inside = true;
            continue;
        }
        if inside {
            // `  2.61s (74.29%): /b`
            let Some((left, value)) = t.split_once("%): ") else {
                if !t.is_empty() {
                    inside = false;
                }
                continue;
            };
            let pct = left.rsplit('(').next().and_then(|p| p.trim().parse().ok());
            out.insert(value.trim().to_owned(), pct.unwrap_or(0.0));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_reach_go_tool_pprof() {
    let addr = testkit::serve(app()).await;
    let dir = temp_dir("labels");

    // First window: only /a and /b. Three clients each alternate /a (10 ms of CPU) and
    // /b (30 ms): 1:3. Ten seconds, so /a gets some hundreds of samples.
    let on = Arc::new(AtomicBool::new(true));
    for _ in 0..3 {
        client(addr, &["/a", "/b"], on.clone());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = get(&format!(
        "http://{addr}/debug/pprof/profile?seconds=10&frequency=250"
    ))
    .await;
    on.store(false, Ordering::Relaxed);
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let ratio_file = dir.join("ratio.pb.gz");
    std::fs::write(&ratio_file, &r.body).unwrap();
    let ratio_file = ratio_file.to_str().unwrap();

    // -tags: /b's share is three times /a's, within 10 %.
    let tags = go_pprof(&["-tags", ratio_file]);
    let routes = tag_shares(&tags, "http.route");
    let (a, b) = (routes.get("/a"), routes.get("/b"));
    let (Some(&a), Some(&b)) = (a, b) else {
        panic!("no /a or /b in -tags:\n{tags}");
    };
    let ratio = b / a;
    eprintln!("/b:/a in -tags: {ratio:.3}");
    assert!(
        (2.7..=3.3).contains(&ratio),
        "/b:/a = {ratio:.2}, want 3 within 10 %:\n{tags}"
    );
    let methods = tag_shares(&tags, "http.method");
    assert_eq!(methods.keys().collect::<Vec<_>>(), ["GET"], "{tags}");

    // Second window: a spawned child, tasks moving between workers, a thread outside
    // any request; two readers share it (the proto, and folded stacks rooted by route).
    let on = Arc::new(AtomicBool::new(true));
    client(addr, &["/a", "/b"], on.clone());
    client(addr, &["/spawned"], on.clone());
    for _ in 0..4 {
        client(addr, &["/migrate"], on.clone());
    }
    let outside = on.clone();
    std::thread::Builder::new()
        .name("outside".into())
        .spawn(move || {
            while outside.load(Ordering::Relaxed) {
                burn_outside_requests(5 * MS);
                std::thread::sleep(5 * MS);
            }
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let proto_url = format!("http://{addr}/debug/pprof/profile?seconds=4&frequency=250");
    let folded_url = format!("{proto_url}&format=folded&tagroot=http.route");
    let (proto, folded) = tokio::join!(get(&proto_url), get(&folded_url));
    on.store(false, Ordering::Relaxed);
    assert_eq!(proto.status, StatusCode::OK, "{}", proto.text());
    assert_eq!(folded.status, StatusCode::OK, "{}", folded.text());
    let file = dir.join("cpu.pb.gz");
    std::fs::write(&file, &proto.body).unwrap();
    let file = file.to_str().unwrap();
    let tags = go_pprof(&["-tags", file]);
    // The child's own label, on top of the route it inherited.
    let jobs = tag_shares(&tags, "job");
    assert!(jobs.contains_key("child"), "{tags}");

    // -tagfocus keeps only /a's stacks.
    let top = go_pprof(&["-top", "-tagfocus=http.route=^/a$", file]);
    assert!(top.contains("burn_route_a"), "{top}");
    for other in [
        "burn_route_b",
        "burn_spawned_child",
        "burn_migrating",
        "burn_outside_requests",
    ] {
        assert!(!top.contains(other), "{other} under -tagfocus /a:\n{top}");
    }

    // Samples outside any request carry no route: any route at all drops them, and
    // ignoring every route keeps them and nothing of the requests.
    let routed = go_pprof(&["-top", "-tagfocus=http.route=.", file]);
    assert!(routed.contains("burn_route_a"), "{routed}");
    assert!(
        !routed.contains("burn_outside_requests"),
        "a sample outside any request carries a route:\n{routed}"
    );
    let unrouted = go_pprof(&["-top", "-tagignore=http.route=.", file]);
    assert!(unrouted.contains("burn_outside_requests"), "{unrouted}");
    for inside in ["burn_route_a", "burn_route_b", "burn_migrating"] {
        assert!(
            !unrouted.contains(inside),
            "{inside} without a route:\n{unrouted}"
        );
    }

    // Folded with tagroot: every stack of each burner is rooted at the right route.
    let text = folded.text();
    let mut seen = HashMap::<&str, i64>::new();
    for line in text.lines() {
        let root = line.split(';').next().unwrap_or("");
        for (func, want) in [
            ("burn_route_a", "http.route=/a"),
            ("burn_route_b", "http.route=/b"),
            ("burn_spawned_child", "http.route=/spawned"),
            ("burn_migrating", "http.route=/migrate"),
            ("burn_outside_requests", "http.route=(none)"),
        ] {
            if line.contains(func) {
                assert_eq!(root, want, "{func} rooted wrongly: {line}");
                *seen.entry(func).or_default() += 1;
            }
        }
    }
    for func in [
        "burn_route_a",
        "burn_spawned_child",
        "burn_migrating",
        "burn_outside_requests",
    ] {
        assert!(seen.contains_key(func), "no samples of {func}:\n{text}");
    }
    // The /migrate tasks did move between worker threads while labelled.
    let moved = MIGRATIONS
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.len() > 1)
        .count();
    assert!(moved > 0, "no /migrate request ran on more than one thread");

    // A bad tagroot is a Go-style error naming the parameter.
    let bad = get(&format!(
        "http://{addr}/debug/pprof/profile?seconds=1&tagroot=http.route"
    ))
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text().contains("tagroot"), "{}", bad.text());
    let _ = std::fs::remove_dir_all(dir);
}

/// Unmatched requests and odd methods fold into bounded values; bad label input never
/// panics.
#[tokio::test]
async fn bad_input_is_bounded() {
    let app = Router::new()
        .route(
            "/who",
            route_get(|| async {
                let huge = "v".repeat(1 << 20);
                let set = LabelSet::new([("", "x"), ("k", huge.as_str()), (huge.as_str(), "y")]);
                labels::scope(set, async { labels::current() })
                    .await
                    .iter()
                    .map(|(k, v)| format!("{}={}\n", k.len(), v.len()))
                    .collect::<String>()
            }),
        )
        .layer(labels::RouteLabels::new());
    let addr = testkit::serve(app).await;
    let r = get(&format!("http://{addr}/who")).await;
    assert_eq!(r.status, StatusCode::OK);
    // http.method, http.route, k and the cut long key: four labels, each bounded.
    assert_eq!(r.text().lines().count(), 4, "{}", r.text());
    for line in r.text().lines() {
        let (k, v) = line.split_once('=').unwrap();
        assert!(k.parse::<usize>().unwrap() <= labels::MAX_KEY_LEN, "{line}");
        assert!(
            v.parse::<usize>().unwrap() <= labels::MAX_VALUE_LEN,
            "{line}"
        );
    }
}
