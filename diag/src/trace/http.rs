//! The HTTP side of `/trace`: its typed query, the handler, and the mapping of trace
//! errors to Go-style answers.

use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use http::header;
use http::request::Parts;

use super::render::render;
use super::window::{self, TraceError};
use crate::error::ApiError;
use crate::params::Params;
use crate::state::Diag;

/// A trace's length unless `seconds` says otherwise.
pub(crate) const DEFAULT_SECONDS: u64 = 1;
/// The longest window accepted (a timeline is big; `seconds` is capped by this and by the
/// configured cap, whichever is lower).
pub(crate) const MAX_SECONDS: u64 = 60;

impl From<TraceError> for ApiError {
    fn from(e: TraceError) -> Self {
        match e {
            TraceError::NotInstalled(how) => ApiError::NotImplemented(how),
            TraceError::Busy => ApiError::Conflict(e.to_string()),
        }
    }
}

/// The query of `/trace`: `?seconds=N`, 1 to the lower of 60 and the configured cap.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TraceQuery {
    pub(crate) seconds: u64,
}

impl FromRequestParts<Diag> for TraceQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, d: &Diag) -> Result<Self, ApiError> {
        let params = Params::from_parts(parts);
        let max = d.cfg().max_seconds.min(MAX_SECONDS);
        let seconds = params.int_in("seconds", DEFAULT_SECONDS.min(max), 1, max)?;
        Ok(Self { seconds })
    }
}

/// `GET /trace?seconds=N`.
pub(crate) async fn trace(State(d): State<Diag>, q: TraceQuery) -> Result<Response, ApiError> {
    let session = window::claim()?;
    let _permit = d.heavy()?;
    let (records, window) = session.record(q.seconds, &d.cfg().shutdown).await;
    let body = crate::offload::run(move || {
        let program = std::env::args().next().unwrap_or_default();
        render(&records, &window, std::process::id(), &program)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("building the trace failed: {e}")))?;
    drop(session);
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"trace.json\"",
            ),
        ],
        body,
    )
        .into_response())
}
