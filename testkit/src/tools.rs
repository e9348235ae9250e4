//! The real tools the tests drive: `go` (`go tool pprof`) and `tokio-console`.

use std::path::PathBuf;
use std::process::Command;

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
    let out = Command::new(go())
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

/// How long `go tool pprof` may wait for a profile it fetches over HTTP, unless the
/// arguments say (`-timeout=N`): its own default (the window plus a few seconds) is too
/// short for a debug build symbolizing on a loaded machine ("timeout awaiting response
/// headers" was seen for a 3 s profile).
const PPROF_FETCH_TIMEOUT: &str = "-timeout=120";

/// Runs `go tool pprof ARGS` and returns its stdout; panics with its stderr on failure.
/// When a source is a URL and no `-timeout` is given, `-timeout=120` is (pprof's own
/// default, the window plus a few seconds, gave up on a debug demo under load).
pub fn go_pprof(args: &[&str]) -> String {
    let fetches = args.iter().any(|a| a.starts_with("http://"));
    let timed = args.iter().any(|a| a.starts_with("-timeout"));
    let timeout = (fetches && !timed).then_some(PPROF_FETCH_TIMEOUT);
    let out = Command::new(go())
        .args(["tool", "pprof"])
        .args(timeout)
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
