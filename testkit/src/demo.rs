//! The demo binary as a real process: started on free ports, its JSON log lines kept.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::parsers::json_field;

/// The demo binary, started as a real process with JSON logs, and its log lines.
#[derive(Debug)]
pub struct Demo {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// The threads reading its stdout and stderr into `logs`: they end at the pipes' end.
    readers: Vec<std::thread::JoinHandle<()>>,
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
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let logs = logs.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            }));
        }
        // A debug build starting cold on a loaded machine: generous, it is a wait for
        // progress (the loop ends as soon as the line comes).
        let deadline = Instant::now() + Duration::from_secs(120);
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
                    readers,
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
                "the demo did not log `listening` within 120 s; its output:\n{}",
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

    /// Waits until a line the process printed satisfies `ok` (lines reach [`Demo::logs`]
    /// through a reader thread, a moment after the process writes them) and returns it;
    /// fails the test after `within`.
    pub fn wait_for_log(&self, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| ok(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no such line within {within:?}; the output:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until diag's per-task dump (`/debug/pprof/goroutine?debug=2`) shows `frame`
    /// `n` times or more, e.g. `demo::work::nap` for requests inside `/sleep`, and returns
    /// the dump; fails the test after 60 s. The demo must be started with
    /// `--dump-interval 0s`, or it serves the same dump again for a minute.
    pub async fn wait_for_tasks(&self, frame: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = crate::get(&self.diag_url("/debug/pprof/goroutine?debug=2"))
                .await
                .text();
            if text.matches(frame).count() >= n {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {n} tasks in {frame} within 60 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the process has a thread named `name` (`/proc/PID/task/*/comm`), e.g.
    /// `diag-wall`, which samples exactly while a wall-time window is open; fails the test
    /// after 60 s.
    pub fn wait_for_thread(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
                .into_iter()
                .flatten()
                .flatten()
                .any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == name)
                });
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no thread named {name} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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

    /// Waits for the process to exit, failing the test after `timeout`. Once it returns,
    /// [`Demo::logs`] holds every line the process printed (its last lines are read to
    /// the pipes' end, not left to the reader threads' timing).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // A process the demo started could hold the pipes open: a minute at most.
                let read_until = Instant::now() + Duration::from_secs(60);
                while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < read_until {
                    std::thread::sleep(Duration::from_millis(10));
                }
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
