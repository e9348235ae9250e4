//! `scripts/profile.sh` against the running demo: every kind lands in a timestamped file
//! that its reader opens (go tool pprof, a JSON parser, an XML parser), the printed command
//! names the file, `DIAG_TOKEN` is honoured, and bad input gets a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::{Demo, go_pprof, temp_dir};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_demo"))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/profile.sh")
}

fn run(args: &[&str], dir: &Path, token: Option<&str>) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .args(args)
        .env("DIAG_PROFILE_DIR", dir)
        .env_remove("DIAG_TOKEN");
    if let Some(t) = token {
        cmd.env("DIAG_TOKEN", t);
    }
    cmd.output().expect("run scripts/profile.sh")
}

/// The file the script printed on stdout, after checking it succeeded.
fn fetched(out: &Output) -> PathBuf {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "profile.sh failed: {stderr}");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "{} is not a file", path.display());
    assert!(
        stderr.contains(path.to_str().unwrap()),
        "the command to open it names the file: {stderr}"
    );
    path
}

#[test]
fn every_kind_lands_in_a_file_its_reader_opens() {
    let demo = Demo::start(bin(), &[], &[]);
    let host = demo.diag_addr.to_string();
    let dir = temp_dir("profile-script");

    for (kind, seconds, expect) in [
        ("cpu", "1", "demo"),
        ("heap", "", "inuse_space"),
        ("allocs", "", "alloc_space"),
        ("goroutine", "", "goroutine"),
    ] {
        let mut args = vec![host.as_str(), kind];
        if !seconds.is_empty() {
            args.push(seconds);
        }
        let file = fetched(&run(&args, &dir, None));
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with(&format!("{kind}-")), "{name}");
        assert!(name.ends_with(".pb.gz"), "{name}");
        let raw = go_pprof(&["-raw", file.to_str().unwrap()]);
        assert!(
            raw.contains(expect),
            "{kind}: go tool pprof -raw lacks {expect}:\n{raw}"
        );
    }

    let trace = fetched(&run(&[&host, "trace", "1"], &dir, None));
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&trace).unwrap()).expect("trace is JSON");
    assert!(doc["traceEvents"].is_array());

    let svg = fetched(&run(
        &[&format!("http://{host}"), "flamegraph", "1"],
        &dir,
        None,
    ));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<?xml") && text.contains("<svg"),
        "{}",
        &text[..80]
    );

    // Two fetches of one kind within a second get files of their own.
    let again = fetched(&run(&[&host, "goroutine"], &dir, None));
    let first = fetched(&run(&[&host, "goroutine"], &dir, None));
    assert_ne!(again, first);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        8,
        "one file per fetch"
    );
}

#[test]
fn the_token_is_sent_and_errors_are_plain() {
    let demo = Demo::start(bin(), &[], &[("DIAG_TOKEN", "s3cret-token")]);
    let host = demo.diag_addr.to_string();
    let dir = temp_dir("profile-script-token");

    let out = run(&[&host, "goroutine"], &dir, Some("s3cret-token"));
    fetched(&out);

    // Without it: diag's 401, shown to the user, nothing left behind.
    let out = run(&[&host, "goroutine"], &dir, None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("diag answered 401"), "{err}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no file for a 401"
    );

    // Bad input: exit 2 with what is allowed.
    let out = run(&[&host, "block"], &dir, None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown kind 'block'") && err.contains("cpu, heap, allocs"),
        "{err}"
    );
    let out = run(&[&host, "cpu", "ten"], &dir, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("positive whole number"));

    // diag's own 400 for a window over its cap comes through with its message.
    let out = run(&[&host, "trace", "600"], &dir, Some("s3cret-token"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("diag answered 400") && err.contains("seconds"),
        "{err}"
    );

    // Nothing listening there.
    let out = run(&["127.0.0.1:1", "cpu", "1"], &dir, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not reach"));
}
