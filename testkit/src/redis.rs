//! A real `redis-server` for one test: on a free loopback port, persistence off, in a
//! temporary directory of its own; killed and its directory removed when dropped.
//!
//! The tests talk to it through a few lines of RESP over a plain socket
//! ([`RedisServer::command`]), not through the client the demo uses, so that what they
//! read does not depend on the code under test.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One RESP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// A bulk string; `None` for nil.
    Bulk(Option<String>),
}

/// The `redis-server` binary. Tests that need it fail with instructions when it is missing:
/// `scripts/test.sh` installs Debian's redis-server.
pub fn redis_server_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`redis-server` is not on PATH: this test runs a real Redis. Run \
                 scripts/test.sh (it installs Debian's redis-server), or apt-get install redis-server"
            )
        })
}

/// A `redis-server` process of this test's own.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts Redis with persistence off (`--save '' --appendonly no`) on a free port of
    /// 127.0.0.1 and waits until it answers PING.
    pub fn start() -> RedisServer {
        let dir = crate::temp_dir("redis");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
            };
            // Another process may take the port between its release and Redis' bind.
            if server.spawn().is_ok() {
                return server;
            }
            server.child = None;
        }
        panic!("redis-server did not start on any of 5 free ports; see {dir:?}/redis.log");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let child = Command::new(redis_server_bin())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        // Generous: a wait for progress on a loaded machine (it ends at the first PONG).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.command(&["PING"]) == Ok(Resp::Simple("PONG".to_owned())) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    return Err(format!("redis-server exited with {status}:\n{log}"));
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 60 s; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills Redis (SIGKILL) and waits for it: a crash, so with persistence off its data
    /// is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops Redis if it runs and starts a new one on the same port (empty: persistence
    /// is off), waiting until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The old socket may linger a moment.
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    self.child = None;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("redis-server did not restart on port {}: {e}", self.port),
            }
        }
    }

    /// Freezes Redis (SIGSTOP): connections stay open and commands wait in its socket
    /// buffers unanswered, as with a hung or overloaded server; [`RedisServer::resume`]
    /// runs them.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes Redis after [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.pid().expect("redis-server is running");
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} {pid} failed");
    }

    /// Bytes sent to Redis that it has not read yet: the receive queues of its
    /// established connections (`/proc/net/tcp`). While Redis is paused, a command a
    /// client sent shows here: a point to wait for, where a sleep would only guess.
    pub fn unread_bytes(&self) -> u64 {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
                let established = *f.get(3)? == "01";
                let rx = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
                (port == self.port && established).then_some(rx)
            })
            .sum()
    }

    /// Sends one command on a new connection and reads its answer (30 s at most).
    pub fn command(&self, args: &[&str]) -> Result<Resp, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream
            .write_all(req.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(Resp::Simple(rest.to_owned())),
            "-" => Ok(Resp::Error(rest.to_owned())),
            ":" => rest.parse().map(Resp::Int).map_err(|e| e.to_string()),
            "$" => {
                let len: i64 = rest.parse().map_err(|e| format!("{e}: {line:?}"))?;
                if len < 0 {
                    return Ok(Resp::Bulk(None));
                }
                let mut body = vec![0; len as usize + 2];
                std::io::Read::read_exact(&mut reader, &mut body).map_err(|e| e.to_string())?;
                body.truncate(len as usize);
                Ok(Resp::Bulk(Some(
                    String::from_utf8_lossy(&body).into_owned(),
                )))
            }
            _ => Err(format!("unexpected answer {line:?}")),
        }
    }

    /// `GET key` as a number (`None` when the key is absent).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.command(&["GET", key]) {
            Ok(Resp::Bulk(None)) => None,
            Ok(Resp::Bulk(Some(v))) => Some(v.parse().unwrap_or_else(|_| panic!("{key} = {v:?}"))),
            other => panic!("GET {key}: {other:?}"),
        }
    }

    /// Redis' `run_id` (INFO server): a new one on every start.
    pub fn run_id(&self) -> String {
        match self.command(&["INFO", "server"]) {
            Ok(Resp::Bulk(Some(info))) => info
                .lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .map(|s| s.trim().to_owned())
                .expect("run_id in INFO server"),
            other => panic!("INFO server: {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a paused (SIGSTOPped) Redis too.
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
