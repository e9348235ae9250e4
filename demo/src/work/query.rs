//! The endpoints' query parameters, and the 400 that names a bad one.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::text;

/// A 400 whose message names the parameter, the value received and what is allowed.
#[derive(Debug)]
pub(crate) struct BadRequest(pub(super) String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        text(StatusCode::BAD_REQUEST, self.0)
    }
}

pub(super) fn bad(name: &str, value: &str, allowed: &str) -> BadRequest {
    BadRequest(format!(
        "invalid value for {name:?}: {value:?}; allowed: {allowed}\n"
    ))
}

pub(super) fn int_param(
    q: &HashMap<String, String>,
    name: &str,
    max: u64,
) -> Result<Option<u64>, BadRequest> {
    match q.get(name) {
        None => Ok(None),
        Some(raw) => match raw.parse::<u64>() {
            Ok(v) if (1..=max).contains(&v) => Ok(Some(v)),
            _ => Err(bad(name, raw, &format!("an integer from 1 to {max}"))),
        },
    }
}
