//! `GET {prefix}/`: the index page, like Go's, plus what this build has and how to use it.

use std::fmt::Write;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use http::{HeaderMap, header};

use crate::router::ENDPOINTS;
use crate::state::Diag;

pub(crate) async fn index(State(d): State<Diag>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or("HOST:PORT");
    Html(page(&d, host)).into_response()
}

/// Escapes text for HTML (the Host header is the client's to choose).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(d: &Diag, host: &str) -> String {
    let cfg = d.cfg();
    let prefix = cfg.prefix();
    // With a token, show where it goes without ever printing it.
    let auth = if cfg.has_token() { ":$DIAG_TOKEN@" } else { "" };
    let base = format!("http://{auth}{host}{prefix}");
    let mut html = String::with_capacity(8 * 1024);
    html.push_str(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>/debug/pprof/</title>\n\
         <style>body{font-family:sans-serif;max-width:60em;margin:1em auto}\
         td{padding:.2em .6em;vertical-align:top}.no{color:#a00}.yes{color:#070}\
         pre{background:#f4f4f4;padding:.5em;overflow-x:auto}</style></head><body>\n",
    );
    let _ = writeln!(html, "<h1>{}/</h1>", esc(prefix));
    html.push_str("<p>Diagnostics for this process, served by diag.</p>\n<table>\n");
    html.push_str("<tr><th>endpoint</th><th>what it gives</th><th>here</th></tr>\n");
    for e in ENDPOINTS {
        let status = match (e.available)() {
            Ok(()) => "<span class=\"yes\">available</span>".to_owned(),
            Err(how) => format!("<span class=\"no\">not available</span>: {}", esc(&how)),
        };
        let _ = writeln!(
            html,
            "<tr><td><a href=\"{p}/{path}\">{path_or_index}</a></td><td>{summary}</td><td>{status}</td></tr>",
            p = esc(prefix),
            path = e.path,
            path_or_index = if e.path.is_empty() { "(index)" } else { e.path },
            summary = esc(e.summary),
        );
    }
    html.push_str("</table>\n");
    #[cfg(feature = "cpu")]
    {
        match crate::cpu::running() {
            Some((hz, readers, until)) => {
                let _ = writeln!(
                    html,
                    "<p>A CPU profile is running at {hz} Hz for {readers} reader(s) until {}. \
                     Others may join it at any frequency.</p>",
                    crate::util::utc(until)
                );
            }
            None => html.push_str("<p>No CPU profile is running.</p>\n"),
        }
        html.push_str(&recorder_line(cfg.cpu_recorder().is_some()));
    }
    html.push_str("<h2>Use it</h2>\n<pre>");
    let mut cmds = vec![
        (
            "CPU profile, 30 s, top functions",
            format!("go tool pprof -top '{base}/profile?seconds=30'"),
        ),
        (
            "CPU profile in the web UI",
            format!("go tool pprof -http=: '{base}/profile?seconds=30'"),
        ),
        (
            "CPU flamegraph SVG for a browser",
            format!("curl -o flamegraph.svg '{base}/flamegraph?seconds=30'"),
        ),
        (
            "folded stacks for inferno or speedscope",
            format!("curl -o cpu.folded '{base}/profile?seconds=30&format=folded'"),
        ),
    ];
    if cfg!(feature = "trace") {
        cmds.push((
            "a 2 s timeline of spans, events and task polls, for https://ui.perfetto.dev",
            format!("curl -o trace.json '{base}/trace?seconds=2'"),
        ));
    }
    if cfg!(feature = "taskdump") {
        cmds.extend([
            (
                "where every tokio task waits, grouped (a task dump)",
                format!("curl '{base}/tasks'"),
            ),
            (
                "the same for go tool pprof",
                format!("go tool pprof -top -cum '{base}/goroutine'"),
            ),
        ]);
    }
    if cfg!(feature = "heap") {
        cmds.extend([
            (
                "memory in use, by allocating stack (jemalloc)",
                format!("go tool pprof -top -cum '{base}/heap'"),
            ),
            (
                "what grew over 60 s",
                format!("go tool pprof -top -cum '{base}/heap?seconds=60'"),
            ),
            (
                "bytes allocated, by stack",
                format!("go tool pprof -top -cum '{base}/allocs'"),
            ),
            (
                "heap flamegraph SVG, in bytes",
                format!("curl -o heap.svg '{base}/heap?format=svg'"),
            ),
        ]);
    }
    for (what, cmd) in cmds {
        let _ = writeln!(html, "# {}\n{}\n", esc(what), esc(&cmd));
    }
    match &cfg.console_addr {
        Some(addr) => {
            let _ = writeln!(
                html,
                "# tokio-console is on: attach with\n{}",
                esc(&format!("tokio-console http://{addr}"))
            );
        }
        None => html.push_str(
            "# tokio-console is not on in this process: start it with diag's console \
             layer (the demo: --console), then run tokio-console http://127.0.0.1:6669\n",
        ),
    }
    html.push_str("</pre>\n");
    if cfg.has_token() {
        html.push_str(
            "<p>This server needs a token: send it as <code>Authorization: Bearer TOKEN</code>, \
             or as the password of Basic auth (<code>http://:TOKEN@host/...</code>, which is \
             what go tool pprof and browsers send).</p>\n",
        );
    }
    html.push_str("</body></html>\n");
    html
}

/// Whether the CPU recorder runs, at what rate, how far back it reaches and what it holds.
#[cfg(feature = "cpu")]
fn recorder_line(configured: bool) -> String {
    match crate::cpu::recorder_status() {
        Some(r) => format!(
            "<p>The CPU recorder is on: {} Hz, keeping the last {} s (it reaches back {} s now; \
             {} stacks, {:.1} MiB). Ask for the past with <code>profile?since=SECONDS</code> \
             or <code>profile?start=T&amp;end=T</code>.</p>\n",
            r.frequency,
            r.keep.as_secs(),
            r.reaches_back.as_secs(),
            r.stacks,
            r.bytes as f64 / (1024.0 * 1024.0),
        ),
        None if configured => "<p>The CPU recorder is configured but not running (stopped by \
                               shutdown, or it could not start: see the logs).</p>\n"
            .to_owned(),
        None => "<p>The CPU recorder is off (turn it on with \
                 <code>Config::with_cpu_recorder</code>).</p>\n"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn lists_every_endpoint_with_commands() {
        let d = Diag::new(Config::new());
        let html = page(&d, "127.0.0.1:6060");
        for e in ENDPOINTS {
            assert!(
                html.contains(&format!("/debug/pprof/{}\"", e.path)),
                "{}",
                e.path
            );
        }
        assert!(html.contains(
            "go tool pprof -top &#39;http://127.0.0.1:6060/debug/pprof/profile?seconds=30&#39;"
        ));
        assert!(html.contains("tokio-console"));
    }

    #[test]
    fn hostile_host_is_escaped_and_token_never_printed() {
        let d = Diag::new(Config::new().with_token("hunter2"));
        let html = page(&d, "<script>x</script>");
        assert!(!html.contains("<script>"));
        assert!(!html.contains("hunter2"));
        assert!(html.contains(":$DIAG_TOKEN@"));
    }

    #[test]
    #[cfg(all(feature = "heap", feature = "taskdump", feature = "trace"))]
    fn golden_page() {
        let d = Diag::new(Config::new().with_token("hunter2"));
        crate::golden::check("index.html", &page(&d, "127.0.0.1:6060"));
    }
}
