//! The HTTP side of task dumps: `/goroutine` and `/tasks`, their typed query, their guards
//! (one dump at a time, a minimum interval between dumps with the last one served again
//! meanwhile, a check for stuck workers, a timeout), the answer in each format, and
//! [`TracedLayer`](layer::TracedLayer), which wraps each request.

pub(crate) mod layer;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, header};

use super::dump::{self, TaskDump, Wait};
use super::format::header_line;
// Also the paths the golden tests (crate::golden) use.
pub(crate) use super::format::{to_grouped_text, to_per_task_text, to_proto};
use super::guard::{self, Busy, DumpGuard, available};
use super::stuck::{Stuck, stuck_workers};
use crate::error::ApiError;
use crate::params::{Choice, Params};
use crate::state::Diag;

/// How long a dump may take unless `timeout` says otherwise.
pub(crate) const DEFAULT_TIMEOUT_S: u64 = 5;
/// The longest `timeout` accepted.
pub(crate) const MAX_TIMEOUT_S: u64 = 60;

impl From<Busy> for ApiError {
    fn from(e: Busy) -> Self {
        ApiError::Unavailable {
            message: e.to_string(),
            retry_after: Some(Duration::from_secs(1)),
        }
    }
}

impl From<Stuck> for ApiError {
    fn from(e: Stuck) -> Self {
        ApiError::Unavailable {
            message: e.to_string(),
            retry_after: Some(Duration::from_secs(1)),
        }
    }
}

/// `?debug=`: which of Go's goroutine formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DebugLevel {
    /// `0`: profile.proto, for `go tool pprof`.
    Proto,
    /// `1`: stacks grouped, most common first.
    Grouped,
    /// `2`: every task on its own.
    PerTask,
}

impl Choice for DebugLevel {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("0", Self::Proto),
        ("1", Self::Grouped),
        ("2", Self::PerTask),
    ];
}

/// The query of `/goroutine` and `/tasks`: `?debug=0|1|2&timeout=S&force=0|1`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DumpQuery {
    /// `None`: the endpoint's default.
    pub(crate) debug: Option<DebugLevel>,
    pub(crate) timeout: Duration,
    /// Dump even when workers look stuck.
    pub(crate) force: bool,
}

impl DumpQuery {
    fn parse(params: &Params) -> Result<Self, ApiError> {
        let debug = match params.get("debug") {
            None => None,
            Some(_) => Some(params.one_of("debug", DebugLevel::Proto)?),
        };
        let timeout = params.int_in("timeout", DEFAULT_TIMEOUT_S, 1, MAX_TIMEOUT_S)?;
        let force = params.choice("force", "0", &["0", "1"])? == "1";
        Ok(Self {
            debug,
            timeout: Duration::from_secs(timeout),
            force,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for DumpQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Self::parse(&Params::from_parts(parts))
    }
}

/// `GET /goroutine?debug=0|1|2&timeout=S&force=1`.
pub(crate) async fn goroutine(State(d): State<Diag>, q: DumpQuery) -> Result<Response, ApiError> {
    run(&d, q, DebugLevel::Proto).await
}

/// `GET /tasks`: the readable alias, `debug=1` unless told otherwise.
pub(crate) async fn tasks(State(d): State<Diag>, q: DumpQuery) -> Result<Response, ApiError> {
    run(&d, q, DebugLevel::Grouped).await
}

async fn run(d: &Diag, q: DumpQuery, default_debug: DebugLevel) -> Result<Response, ApiError> {
    let debug = q.debug.unwrap_or(default_debug);
    available().map_err(ApiError::NotImplemented)?;
    let min_interval = d.cfg().min_dump_interval;
    if let Some(last) = guard::recent(min_interval) {
        return Ok(render(&last, debug, min_interval, false));
    }
    let _flight = DumpGuard::take("a task dump".to_owned())?;
    // Another request may have dumped while this one waited for the lock.
    if let Some(last) = guard::recent(min_interval) {
        return Ok(render(&last, debug, min_interval, false));
    }
    let _permit = d.heavy()?;
    let current = tokio::runtime::Handle::current();
    let app = d.cfg().app_runtime.clone();
    // Mounted in the application (no runtime of its own), diag runs on the app's workers,
    // whose timer a blocked worker can hold up: wait on a thread of diag's own then (not the
    // application's blocking pool, which may be full when the service is in trouble).
    let wait = match &app {
        Some(app) if app.id() != current.id() => Wait::Timer,
        _ => Wait::OffloadThread,
    };
    if !q.force {
        if let Some(stuck) = stuck_workers(app.as_ref().unwrap_or(&current)).await {
            return Err(Stuck(stuck).into());
        }
    }
    let raw = dump::collect(q.timeout, wait).await;
    // Resolving addresses reads debug info: off the async workers.
    let dump = crate::offload::run(move || dump::symbolize(raw))
        .await
        .map_err(|e| ApiError::Internal(format!("resolving the task dump failed: {e}")))?;
    let dump = Arc::new(dump);
    guard::remember(dump.clone());
    Ok(render(&dump, debug, min_interval, true))
}

fn render(dump: &TaskDump, debug: DebugLevel, min_interval: Duration, fresh: bool) -> Response {
    let age = dump.at.elapsed();
    let header_line = header_line(dump, age, min_interval);
    let mut res = match debug {
        DebugLevel::Proto => match to_proto(dump, &header_line, crate::maps::current()) {
            Ok(body) => (
                [
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"goroutine\"",
                    ),
                ],
                body,
            )
                .into_response(),
            Err(e) => {
                return ApiError::Internal(format!("encoding the task dump failed: {e}"))
                    .into_response();
            }
        },
        DebugLevel::Grouped => text(to_grouped_text(dump, &header_line)),
        DebugLevel::PerTask => text(to_per_task_text(dump, &header_line)),
    };
    let h = res.headers_mut();
    h.insert("x-diag-dump-age-seconds", age.as_secs().into());
    h.insert("x-diag-tasks", dump.tasks.len().into());
    h.insert("x-diag-tasks-missing", dump.missing.len().into());
    if !fresh {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "the last dump, {} s old (min interval {} s)",
            age.as_secs(),
            min_interval.as_secs()
        )) {
            h.insert("x-diag-dump-reused", v);
        }
    }
    res
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_levels_keep_their_names_and_errors() {
        let q = DumpQuery::parse(&Params::parse(Some("debug=2&timeout=7&force=1"))).unwrap();
        assert_eq!(q.debug, Some(DebugLevel::PerTask));
        assert_eq!(q.timeout, Duration::from_secs(7));
        assert!(q.force);
        assert_eq!(DumpQuery::parse(&Params::parse(None)).unwrap().debug, None);
        let e = DumpQuery::parse(&Params::parse(Some("debug=3"))).unwrap_err();
        assert_eq!(
            e.message(),
            "invalid value for \"debug\": \"3\"; allowed: one of 0, 1, 2"
        );
        let e = DumpQuery::parse(&Params::parse(Some("timeout=61"))).unwrap_err();
        assert_eq!(
            e.message(),
            "invalid value for \"timeout\": \"61\"; allowed: an integer from 1 to 60"
        );
    }
}
