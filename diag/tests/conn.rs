//! The sidecar's connection limits over real sockets: a head trickled in byte by byte is
//! cut at the header-read timeout, an idle keep-alive connection at the idle timeout
//! (while a long profile in flight is not), one connection past the cap is answered 503
//! at once, and a trickling client cannot hold the shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use diag::conn::ConnLimits;

async fn sidecar(limits: ConnLimits) -> (diag::server::Sidecar, SocketAddr) {
    let sidecar = diag::serve(
        diag::Config::default().with_conn_limits(limits),
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let addr = sidecar.local_addr();
    (sidecar, addr)
}

/// Reads until the peer closes, or fails the test after `within`; returns what was read
/// and how long the close took.
fn read_to_close(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, t.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, t.elapsed()),
            Err(e) => panic!("the connection stayed open {:?}: {e}", t.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_at_the_header_read_timeout() {
    let limits = ConnLimits::default().with_header_read_timeout(Duration::from_millis(800));
    let (_sidecar, addr) = sidecar(limits).await;
    let cut = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        // One byte every 100 ms: the connection is never quiet, but the head never ends.
        let head =
            b"GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in head.iter().cycle() {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            // Cut at 0.8 s; a loaded machine may be late, but a head never cut goes on.
            assert!(t.elapsed() < Duration::from_secs(60), "never cut");
        }
        t.elapsed()
    })
    .await
    .unwrap();
    assert!(cut >= Duration::from_millis(800), "cut after {cut:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_but_a_long_answer_is_not() {
    let limits = ConnLimits::default().with_idle_timeout(Duration::from_millis(700));
    let (_sidecar, addr) = sidecar(limits).await;
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        // A request that takes longer than the idle timeout to answer.
        s.write_all(
            b"GET /debug/pprof/profile?seconds=2&format=folded HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        // The answer comes after the 2 s window and a symbolization pass, which takes
        // seconds cold on a loaded machine.
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let n = s.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // Then idle: closed after ~0.7 s, with nothing more said (a loaded machine may
        // be late; a connection never closed would stay the default 60 s and more).
        let (rest, took) = read_to_close(&mut s, Duration::from_secs(30));
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("HTTP/1.1"), "{rest}");
        assert!(took < Duration::from_secs(30), "closed after {took:?}");
    })
    .await
    .unwrap();
}

/// A keep-alive connection that has had one answer: the sidecar holds it.
fn answered_once(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /debug/pprof/cmdline HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_past_the_cap_is_refused_at_once_in_go_style() {
    let limits = ConnLimits::default().with_max_connections(3);
    let (_sidecar, addr) = sidecar(limits).await;
    tokio::task::spawn_blocking(move || {
        // Each of the three held connections answered once (kept alive): the sidecar has
        // accepted and counts all three before the fourth comes.
        let held: Vec<TcpStream> = (0..3).map(|_| answered_once(addr)).collect();
        let mut fourth = TcpStream::connect(addr).unwrap();
        // At once: without a request, and well before the 10 s header-read timeout that
        // would otherwise end a silent connection.
        let (answer, took) = read_to_close(&mut fourth, Duration::from_secs(9));
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("x-go-pprof: 1"), "{answer}");
        assert!(answer.contains("too many connections"), "{answer}");
        assert!(took < Duration::from_secs(9), "refused after {took:?}");
        // Once they close, a new one is served: the sidecar sees the closes a moment
        // later, and until then refuses as above.
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(
                b"GET /debug/pprof/cmdline HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            let (answer, _) = read_to_close(&mut s, Duration::from_secs(60));
            let answer = String::from_utf8_lossy(&answer);
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            assert!(Instant::now() < deadline, "still refused: {answer}");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_client_cannot_hold_the_shutdown() {
    // Timeouts far longer than the test: only the shutdown can end the connection.
    let limits = ConnLimits::default()
        .with_header_read_timeout(Duration::from_secs(60))
        .with_shutdown_grace(Duration::from_secs(30));
    let (sidecar, addr) = sidecar(limits).await;
    let (started, trickling) = std::sync::mpsc::channel();
    let trickler = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        for (i, b) in
            b"GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .iter()
                .enumerate()
        {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            if i == 4 {
                let _ = started.send(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // The shutdown starts once the trickler is connected and sending its head.
    tokio::task::spawn_blocking(move || trickling.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the trickler started");
    let t = Instant::now();
    // Not held for the 30 s grace (nor the 60 s header timeout), however slow the machine.
    tokio::time::timeout(Duration::from_secs(25), sidecar.shutdown())
        .await
        .expect("the sidecar stopped before the grace ran out")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(25), "{:?}", t.elapsed());
    trickler.join().unwrap();
}

/// curl's answer for `url` with `flag` (`--http1.1` or `--http2-prior-knowledge`): the
/// protocol it spoke, the status and the body.
fn curl(flag: &str, url: &str) -> (String, String, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            flag,
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {flag} {url}: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (version, code) = tail.split_once(' ').unwrap();
    (version.to_owned(), code.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_and_h2c_with_prior_knowledge_are_both_served() {
    let (sidecar, addr) = sidecar(ConnLimits::default()).await;
    let url = format!("http://{addr}/debug/pprof/cmdline");
    let (h1, h2) = tokio::task::spawn_blocking(move || {
        (
            curl("--http1.1", &url),
            curl("--http2-prior-knowledge", &url),
        )
    })
    .await
    .unwrap();
    assert_eq!((h1.0.as_str(), h1.1.as_str()), ("1.1", "200"), "{h1:?}");
    assert_eq!((h2.0.as_str(), h2.1.as_str()), ("2", "200"), "{h2:?}");
    assert!(!h1.2.is_empty(), "an empty cmdline over HTTP/1.1");
    assert_eq!(h1.2, h2.2, "the two protocols answered differently");
    sidecar.shutdown().await.unwrap();
}
