//! [`Config::with_prefix`](super::Config::with_prefix)'s check: a prefix axum can route
//! and a request can match, or an error naming it.

use std::fmt;

/// Why [`Config::with_prefix`](super::Config::with_prefix) refused a prefix: it names the
/// prefix and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrefixError {
    /// The prefix as given.
    pub prefix: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid diag prefix {:?}: {}; a prefix is \"/\" or /-separated segments of ASCII \
             letters, digits and -._~ (not . or ..), such as \"/debug/pprof\"",
            self.prefix, self.reason
        )
    }
}

impl std::error::Error for PrefixError {}

/// `prefix` with a leading `/` and no trailing one (`""` for the root), or why it cannot
/// be one.
pub(super) fn normalise(prefix: &str) -> Result<String, PrefixError> {
    let error = |reason: String| PrefixError {
        prefix: prefix.to_owned(),
        reason,
    };
    if prefix.is_empty() || prefix == "/" {
        return Ok(String::new());
    }
    let body = prefix.strip_prefix('/').unwrap_or(prefix);
    let body = body.strip_suffix('/').unwrap_or(body);
    for segment in body.split('/') {
        if segment.is_empty() {
            return Err(error("it has an empty segment (\"//\")".to_owned()));
        }
        if segment == "." || segment == ".." {
            return Err(error(format!(
                "segment {segment:?} is a relative step, which clients resolve away"
            )));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        if let Some(c) = segment.chars().find(|&c| !allowed(c)) {
            return Err(error(format!("segment {segment:?} contains {c:?}")));
        }
    }
    Ok(format!("/{body}"))
}
