//! `GET {prefix}/`: the index page, like Go's, plus what this build has and how to use it.
//!
//! The page lists [`ENDPOINTS`] and their commands; what it shows of the process (which
//! endpoints can answer now, a CPU profile running, the recorder) is gathered first into
//! [`Facts`], so the rendering itself reads nothing and has a golden file.

use std::fmt::Write;
#[cfg(feature = "cpu")]
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use http::{HeaderMap, header};

use crate::config::Config;
use crate::endpoints::{ENDPOINTS, Unavailable};
use crate::state::Diag;

pub(crate) async fn index(State(d): State<Diag>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or("HOST:PORT");
    Html(page(d.cfg(), &Facts::now(), host)).into_response()
}

/// What the page says about the process, read when it is asked for.
#[derive(Debug)]
pub(crate) struct Facts {
    /// Each endpoint of [`ENDPOINTS`], in order: here, or why not.
    available: Vec<Result<(), Unavailable>>,
    /// The CPU profile running, if any: its rate, its readers and when it ends.
    #[cfg(feature = "cpu")]
    running: Option<(u32, usize, SystemTime)>,
    /// The CPU recorder, if it runs.
    #[cfg(feature = "cpu")]
    recorder: Option<Recorder>,
}

/// What the page shows of the CPU recorder.
#[cfg(feature = "cpu")]
#[derive(Debug, Clone, Copy)]
struct Recorder {
    frequency: u32,
    keep: Duration,
    reaches_back: Duration,
    stacks: usize,
    bytes: usize,
}

impl Facts {
    /// The facts as they are now.
    pub(crate) fn now() -> Self {
        Self {
            available: ENDPOINTS.iter().map(|e| e.part.check()).collect(),
            #[cfg(feature = "cpu")]
            running: crate::cpu::running(),
            #[cfg(feature = "cpu")]
            recorder: crate::cpu::recorder_status().map(|r| Recorder {
                frequency: r.frequency,
                keep: r.keep,
                reaches_back: r.reaches_back,
                stacks: r.stacks,
                bytes: r.bytes,
            }),
        }
    }
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

/// The page for `cfg` and `facts`, as a client that asked `host` sees it.
fn page(cfg: &Config, facts: &Facts, host: &str) -> String {
    let prefix = cfg.prefix();
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
    table(&mut html, prefix, &facts.available);
    html.push_str("</table>\n");
    #[cfg(feature = "cpu")]
    cpu_lines(&mut html, facts, cfg.cpu_recorder().is_some());
    html.push_str("<h2>Use it</h2>\n<pre>");
    // With a token, show where it goes without ever printing it.
    let auth = if cfg.has_token() { ":$DIAG_TOKEN@" } else { "" };
    let base = format!("http://{auth}{host}{prefix}");
    for c in crate::endpoints::commands() {
        let _ = writeln!(html, "# {}\n{}\n", esc(c.what), esc(&c.at(&base)));
    }
    console_line(&mut html, cfg);
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

/// One row per endpoint: its link, what it gives, and whether it is here.
fn table(html: &mut String, prefix: &str, available: &[Result<(), Unavailable>]) {
    for (e, here) in ENDPOINTS.iter().zip(available) {
        let status = match here {
            Ok(()) => "<span class=\"yes\">available</span>".to_owned(),
            Err(how) => format!(
                "<span class=\"no\">not available</span>: {}",
                esc(&how.to_string())
            ),
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
}

/// The CPU profile running, and the recorder.
#[cfg(feature = "cpu")]
fn cpu_lines(html: &mut String, facts: &Facts, recorder_configured: bool) {
    match facts.running {
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
    html.push_str(&recorder_line(facts.recorder, recorder_configured));
}

/// How to attach tokio-console, or how to turn it on.
fn console_line(html: &mut String, cfg: &Config) {
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
}

/// Whether the CPU recorder runs, at what rate, how far back it reaches and what it holds.
#[cfg(feature = "cpu")]
fn recorder_line(recorder: Option<Recorder>, configured: bool) -> String {
    match recorder {
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

    #[test]
    fn lists_every_endpoint_with_commands() {
        let html = page(&Config::new(), &Facts::now(), "127.0.0.1:6060");
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
        let cfg = Config::new().with_token("hunter2");
        let html = page(&cfg, &Facts::now(), "<script>x</script>");
        assert!(!html.contains("<script>"));
        assert!(!html.contains("hunter2"));
        assert!(html.contains(":$DIAG_TOKEN@"));
    }

    /// Fixed facts: the heap and trace parts unavailable, a CPU profile running, the
    /// recorder on; nothing read from the process.
    #[cfg(all(
        feature = "cpu",
        feature = "heap",
        feature = "taskdump",
        feature = "trace"
    ))]
    fn fixed_facts() -> Facts {
        use crate::endpoints::Part;
        Facts {
            available: ENDPOINTS
                .iter()
                .map(|e| match e.part {
                    Part::Heap | Part::Trace => Err(e.part.missing()),
                    _ => Ok(()),
                })
                .collect(),
            running: Some((
                99,
                2,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            )),
            recorder: Some(Recorder {
                frequency: 19,
                keep: Duration::from_secs(600),
                reaches_back: Duration::from_secs(42),
                stacks: 1234,
                bytes: 3 << 20,
            }),
        }
    }

    #[test]
    #[cfg(all(
        feature = "cpu",
        feature = "heap",
        feature = "taskdump",
        feature = "trace"
    ))]
    fn golden_page() {
        let cfg = Config::new().with_token("hunter2");
        crate::golden::check("index.html", &page(&cfg, &fixed_facts(), "127.0.0.1:6060"));
    }
}
