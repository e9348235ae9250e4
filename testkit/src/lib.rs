//! Helpers for the workspace's integration tests: a real HTTP/1.1 client over real sockets,
//! the demo binary as a real process, and the real `go tool pprof`.
//!
//! Nothing here fakes a server or a tool: every helper talks to something running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod mem;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
pub use bytes::Bytes;
pub use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One HTTP answer, read to the end.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How long any one request may take before the test fails instead of hanging.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends a request and reads the whole answer; panics (failing the test) on a transport
/// error or after [`REQUEST_TIMEOUT`].
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    try_request(method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Like [`request`], but returns transport errors (refused connections, resets).
pub async fn try_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let res = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}

/// `GET url`.
pub async fn get(url: &str) -> Reply {
    request(Method::GET, url, &[], b"").await
}

/// `GET url` with extra headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::GET, url, headers, b"").await
}

/// The `Authorization` value `go tool pprof` and browsers send for `http://user:pass@host`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Serves `app` on 127.0.0.1, on a free port, in a background task; returns its address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The demo binary, started as a real process with JSON logs, and its log lines.
#[derive(Debug)]
pub struct Demo {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// The service's address.
    pub addr: SocketAddr,
    /// Where diag answers (the sidecar's address, or `addr` when mounted on main or off).
    pub diag_addr: SocketAddr,
    /// Where tokio-console attaches, when the demo serves it (`--console`).
    pub console_addr: Option<SocketAddr>,
}

impl Demo {
    /// Starts `bin` with `args` (on free ports and with JSON logs unless the args say
    /// otherwise) and waits until it logs that it listens.
    pub fn start(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Demo {
        let mut cmd = Command::new(bin);
        // Defaults through the environment, so that `args` can override any of them.
        cmd.env("DEMO_LISTEN", "127.0.0.1:0")
            .env("DEMO_DIAG_LISTEN", "127.0.0.1:0")
            .env("DEMO_LOG_FORMAT", "json")
            .args(args)
            .env_remove("DIAG_TOKEN")
            .env_remove("_RJEM_MALLOC_CONF")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the demo binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("\"listening\""))
                .cloned();
            if let Some(line) = found {
                let addr = json_field(&line, "addr").expect("addr in the listening line");
                let addr: SocketAddr = addr.parse().unwrap();
                let diag = json_field(&line, "diag").expect("diag in the listening line");
                // `--diag-listen off` logs "off (...)": diag is then nowhere, and its
                // paths on the service's address answer 404.
                let diag_addr = diag
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap_or(addr);
                let console_addr = json_field(&line, "console")
                    .and_then(|c| c.strip_prefix("tokio-console http://").map(str::to_owned))
                    .map(|a| a.parse().unwrap());
                return Demo {
                    child,
                    logs,
                    addr,
                    diag_addr,
                    console_addr,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the demo exited with {status} before listening; its output:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not log `listening` within 30 s; its output:\n{}",
                logs.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://ADDR` of the service.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://DIAG_ADDR` of diag.
    pub fn diag_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.diag_addr)
    }

    /// Every line the process has printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"TERM"`, `"INT"`, `"HUP"`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit within {timeout:?}; its output:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The string value of a field anywhere in a JSON log line (`"name":"value"`), without
/// a JSON dependency in this crate.
pub fn json_field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key)? + key.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

/// The `go` binary. Tests that need it fail with instructions when it is missing, rather
/// than pass without checking: `scripts/test.sh` installs it.
pub fn go() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("go"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`go` is not on PATH: this test drives the real `go tool pprof`. \
                 Run scripts/test.sh (it installs Debian's golang-go), or apt-get install golang-go"
            )
        })
}

/// The binary behind `go tool NAME` (`go tool -n NAME` prints its path), for a test that
/// must stop the tool itself: killing the `go` wrapper would leave the tool running.
pub fn go_tool(name: &str) -> PathBuf {
    let out = std::process::Command::new(go())
        .args(["tool", "-n", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go tool -n {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The `tokio-console` binary. Tests that need it fail with instructions when it is
/// missing: `scripts/test.sh` installs it with `cargo install tokio-console --locked`.
pub fn tokio_console() -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string())
    }) {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    dirs.into_iter()
        .map(|dir| dir.join("tokio-console"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`tokio-console` is not installed: this test drives the real one. Run \
                 scripts/test.sh (it installs it), or cargo install tokio-console --locked"
            )
        })
}

/// A terminal program running in a detached tmux session of its own, for tests that read
/// what it shows. The session is killed when this is dropped.
#[derive(Debug)]
pub struct Tmux {
    session: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a `width` x `height` terminal.
    pub fn start(command: &str, width: u16, height: u16) -> Tmux {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = format!("diag-test-{}-{seq}", std::process::id());
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .status()
            .expect("run tmux (scripts/test.sh installs it; or apt-get install tmux)");
        assert!(status.success(), "tmux new-session failed: {status}");
        Tmux { session }
    }

    /// What the terminal shows now, as text.
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `keys` (tmux key names, e.g. `q` or `Enter`).
    pub fn send_keys(&self, keys: &str) {
        let _ = Command::new("tmux")
            .args(["send-keys", "-t", &self.session, keys])
            .status();
    }

    /// Waits until the screen satisfies `ok`, up to `timeout`; returns the last screen.
    pub fn wait_for(&self, timeout: Duration, ok: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                return Err(screen);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // The program may have quit already, taking its session with it.
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `go tool pprof ARGS` and returns its stdout; panics with its stderr on failure.
pub fn go_pprof(args: &[&str]) -> String {
    let out = Command::new(go())
        .args(["tool", "pprof"])
        .args(args)
        .env("PPROF_TMPDIR", std::env::temp_dir())
        .output()
        .expect("run go tool pprof");
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`go_pprof`] on a blocking thread, for async tests.
pub async fn go_pprof_async(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        go_pprof(&args)
    })
    .await
    .unwrap()
}

/// The `cum` column, in MiB, of `go tool pprof -top -cum -unit=MB` output for the function
/// whose name ends with `name` (`MB` there means MiB, as pprof counts).
pub fn pprof_cum_mib(top: &str, name: &str) -> Option<f64> {
    let line = top.lines().find(|l| {
        l.split_whitespace()
            .last()
            .is_some_and(|f| f.ends_with(name))
    })?;
    line.split_whitespace()
        .nth(3)?
        .strip_suffix("MB")?
        .parse()
        .ok()
}

/// The `<title>` of every frame of a flamegraph SVG, after checking it is well-formed XML
/// whose root is `<svg>` (inferno's SVG starts with a DOCTYPE, which roxmltree refuses
/// unless told).
pub fn svg_titles(svg: &str) -> Vec<String> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(svg, opts).expect("valid XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text())
        .map(str::to_owned)
        .collect()
}

/// Starts the CPU profile at `profile_url` (its window in the URL) in the background and
/// returns once diag's index page (`index_url`) shows it running, with its answer still
/// to come.
///
/// A point fixed by the sampler's own order, for reading memory between back-to-back
/// profiles: diag starts a profile only after the previous one's stop has finished (a
/// stop runs after its answer goes out), so the process holds exactly one collector here.
pub async fn profile_running(profile_url: &str, index_url: &str) -> tokio::task::JoinHandle<Reply> {
    let url = profile_url.to_owned();
    let profile = tokio::spawn(async move { get(&url).await });
    for _ in 0..500 {
        if get(index_url)
            .await
            .text()
            .contains("A CPU profile is running")
        {
            return profile;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{profile_url} never showed as running on {index_url} (10 s)");
}

/// The resident memory of process `pid` in MiB (`VmRSS`).
pub fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        / 1024
}

/// A fresh, empty directory under the system temp dir for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("diag-test-{name}-{}-{seq}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

mod redis;
pub use redis::{RedisServer, Resp, redis_server_bin};
