//! One error type, answered the way Go's net/http/pprof answers errors.
//!
//! Every error is `text/plain; charset=utf-8` with `X-Go-Pprof: 1` (so `go tool pprof`
//! shows the message to its user) and no `Content-Disposition`.

use std::fmt;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// The header `go tool pprof` looks for before it shows an error body to its user.
pub(crate) const X_GO_PPROF: &str = "x-go-pprof";

/// What went wrong with a request to diag, turned into a status and a message at the edge.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// A query parameter was unparsable or out of range (400).
    BadParam {
        name: &'static str,
        value: String,
        allowed: String,
    },
    /// No valid token was presented (401, `WWW-Authenticate: Basic`).
    Unauthorized,
    /// No endpoint at this path (404, listing the known ones).
    NotFound { path: String, known: Vec<String> },
    /// A method the endpoint does not take (405).
    MethodNotAllowed { allowed: &'static str },
    /// The request conflicts with work already running (409).
    Conflict(String),
    /// The heavy-operation cap is reached (429 with `Retry-After`).
    TooManyRequests { limit: usize, retry_after: Duration },
    /// The process is shutting down, or a resource is busy for a while (503).
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// This build or this process lacks the feature (501), with how to enable it.
    #[cfg_attr(feature = "cpu", allow(dead_code))]
    NotImplemented(String),
    /// Something failed inside diag or below it (500).
    Internal(String),
}

impl ApiError {
    /// A 400 naming the parameter, the value received (cut to [`MAX_ECHO`] bytes, so a
    /// 2 MiB bad input is not sent back whole) and what is allowed.
    pub(crate) fn bad_param(
        name: &'static str,
        value: impl Into<String>,
        allowed: impl Into<String>,
    ) -> Self {
        Self::BadParam {
            name,
            value: truncated(value.into()),
            allowed: allowed.into(),
        }
    }

    /// A 501 with `e`'s text (what is missing and how to enable it).
    pub(crate) fn not_implemented(e: impl fmt::Display) -> Self {
        Self::NotImplemented(e.to_string())
    }

    /// The status it is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadParam { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body it is answered with (without the final newline).
    pub(crate) fn message(&self) -> String {
        match self {
            Self::BadParam {
                name,
                value,
                allowed,
            } => format!("invalid value for {name:?}: {value:?}; allowed: {allowed}"),
            Self::Unauthorized => "unauthorized: this endpoint needs the diag token, as \
                 `Authorization: Bearer TOKEN` or as the password of Basic auth \
                 (go tool pprof http://:TOKEN@host/...)"
                .to_owned(),
            Self::NotFound { path, known } => {
                let mut text = format!("unknown profile: {path:?}\nknown endpoints:\n");
                for k in known {
                    text.push_str("  ");
                    text.push_str(k);
                    text.push('\n');
                }
                text
            }
            Self::MethodNotAllowed { allowed } => {
                format!("method not allowed; allowed: {allowed}")
            }
            Self::Conflict(m) | Self::NotImplemented(m) | Self::Internal(m) => m.clone(),
            Self::Unavailable { message, .. } => message.clone(),
            Self::TooManyRequests { limit, retry_after } => format!(
                "too many diagnostics operations in flight (the limit is {limit}); \
                 retry after {} s",
                retry_after.as_secs().max(1)
            ),
        }
    }
}

/// The message, as the body says it: for logs and tests.
impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ApiError {}

/// The most of a client's bad input an error echoes back.
pub(crate) const MAX_ECHO: usize = 120;

/// `s` cut to at most [`MAX_ECHO`] bytes (at a character boundary), saying how much was
/// left out.
pub(crate) fn truncated(mut s: String) -> String {
    if s.len() <= MAX_ECHO {
        return s;
    }
    let mut cut = MAX_ECHO;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let left = s.len() - cut;
    s.truncate(cut);
    s.push_str(&format!("... ({left} more bytes)"));
    s
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.message();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        let mut res = (self.status(), body).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(X_GO_PPROF, HeaderValue::from_static("1"));
        let retry = match &self {
            Self::TooManyRequests { retry_after, .. } => Some(*retry_after),
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        };
        if let Some(after) = retry {
            headers.insert(header::RETRY_AFTER, after.as_secs().max(1).into());
        }
        match self {
            Self::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"diag\", charset=\"UTF-8\""),
                );
            }
            Self::MethodNotAllowed { allowed } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
            }
            _ => {}
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_param_names_parameter_value_and_range() {
        let e = ApiError::bad_param("seconds", "abc", "an integer from 1 to 300");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.message(),
            "invalid value for \"seconds\": \"abc\"; allowed: an integer from 1 to 300"
        );
    }

    #[test]
    fn long_bad_input_is_echoed_truncated() {
        let long = "é".repeat(1 << 20);
        let e = ApiError::bad_param("address", long, "hexadecimal addresses");
        let msg = e.message();
        assert!(msg.len() < 400, "{} bytes", msg.len());
        assert!(msg.contains("more bytes)"), "{msg}");
        assert_eq!(truncated("short".into()), "short");
    }

    #[test]
    fn display_is_the_body_s_text() {
        let e = ApiError::not_implemented("enable the feature");
        assert_eq!(e.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(e.to_string(), "enable the feature");
    }

    #[test]
    fn responses_carry_go_headers() {
        let res = ApiError::TooManyRequests {
            limit: 4,
            retry_after: Duration::from_secs(5),
        }
        .into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[X_GO_PPROF], "1");
        assert_eq!(res.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert!(!res.headers().contains_key(header::CONTENT_DISPOSITION));
    }
}
