//! The token check: with a token configured, every request under the prefix presents it,
//! as `Authorization: Bearer TOKEN` or as the password of Basic auth (what `go tool pprof`
//! and browsers send for `http://:TOKEN@host/...`), compared in constant time.

use base64::Engine;
use http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// `Ok` when no token is configured or the request presents it; else the 401 to answer.
pub(crate) fn require(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    match token {
        Some(token) if !authorized(headers, token) => Err(ApiError::Unauthorized),
        _ => Ok(()),
    }
}

/// Whether the request presents `token`: as `Bearer TOKEN`, or as the password of Basic
/// auth (any user name), compared in constant time.
pub(crate) fn authorized(headers: &HeaderMap, token: &str) -> bool {
    presented(headers).is_some_and(|p| {
        // `ct_eq` on slices of different lengths is false without comparing contents; the
        // token's length is not the secret.
        bool::from(p.as_slice().ct_eq(token.as_bytes()))
    })
}

/// The secret the request's `Authorization` header carries, if it is Bearer or Basic.
fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.as_bytes().to_vec())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        Some(decoded[colon + 1..].to_vec())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().expect("header value"));
        h
    }

    #[test]
    fn bearer_and_basic_password_are_accepted() {
        let basic = base64::engine::general_purpose::STANDARD.encode(":s3cret");
        let basic_user = base64::engine::general_purpose::STANDARD.encode("alloy:s3cret");
        assert!(authorized(&with_auth("Bearer s3cret"), "s3cret"));
        assert!(authorized(&with_auth(&format!("Basic {basic}")), "s3cret"));
        assert!(authorized(
            &with_auth(&format!("basic {basic_user}")),
            "s3cret"
        ));
    }

    #[test]
    fn wrong_or_missing_credentials_are_refused() {
        let basic_user_only = base64::engine::general_purpose::STANDARD.encode("s3cret");
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
        assert!(!authorized(&with_auth("Bearer s3cre"), "s3cret"));
        assert!(!authorized(&with_auth("Bearer s3cretx"), "s3cret"));
        assert!(!authorized(
            &with_auth(&format!("Basic {basic_user_only}")),
            "s3cret"
        ));
        assert!(!authorized(&with_auth("Basic !!!"), "s3cret"));
        assert!(!authorized(&with_auth("Token s3cret"), "s3cret"));
    }

    #[test]
    fn without_a_token_everything_passes() {
        assert!(require(None, &HeaderMap::new()).is_ok());
        assert!(matches!(
            require(Some("s3cret"), &HeaderMap::new()),
            Err(ApiError::Unauthorized)
        ));
        assert!(require(Some("s3cret"), &with_auth("Bearer s3cret")).is_ok());
    }
}
