//! `/symbol`: Go's symbol protocol over the shared symbolizer.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{Method, header};

use crate::error::ApiError;
use crate::state::Diag;

/// Addresses looked up in one request at most.
pub(crate) const MAX_ADDRESSES: usize = 10_000;

/// How much of a rejected word the error echoes (characters).
const ECHO_CHARS: usize = 64;

/// `GET` or `POST /symbol`: Go's protocol. `GET` without addresses answers
/// `num_symbols: 1`; addresses (`0x1234+0x5678`, in the body of a POST or the query of a
/// GET) answer one `0x<addr> <function>` line each. A request with addresses counts
/// against the heavy-operation cap, as profiles do: resolving new addresses reads debug
/// info.
pub(crate) async fn symbol(
    State(d): State<Diag>,
    method: Method,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input = if method == Method::POST {
        String::from_utf8_lossy(&body).into_owned()
    } else {
        q.unwrap_or_default()
    };
    let words = parse(&input)?;
    if words.is_empty() {
        return Ok(text(String::from("num_symbols: 1\n")));
    }
    let permit = d.heavy()?;
    let answer = crate::offload::run(move || {
        let _permit = permit;
        lookup(&words)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("symbolizing failed: {e}")))?;
    Ok(text(answer))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// The addresses of a request: hexadecimal words joined by `+`, at most
/// [`MAX_ADDRESSES`].
fn parse(input: &str) -> Result<Vec<u64>, ApiError> {
    let mut words = Vec::new();
    for word in input.split('+').map(str::trim).filter(|w| !w.is_empty()) {
        let hex = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X"));
        match hex.and_then(|h| u64::from_str_radix(h, 16).ok()) {
            Some(addr) => words.push(addr),
            None => {
                return Err(ApiError::bad_param(
                    "address",
                    truncated(word),
                    "hexadecimal addresses like 0x4a1f20, joined by +",
                ));
            }
        }
        if words.len() > MAX_ADDRESSES {
            return Err(ApiError::bad_param(
                "address",
                format!("more than {MAX_ADDRESSES} addresses"),
                format!("at most {MAX_ADDRESSES} per request"),
            ));
        }
    }
    Ok(words)
}

/// `word` as an error may echo it: whole when short, else its start and its length.
fn truncated(word: &str) -> String {
    match word.char_indices().nth(ECHO_CHARS) {
        None => word.to_owned(),
        Some((end, _)) => format!("{}… ({} bytes)", &word[..end], word.len()),
    }
}

/// The answer's text: one line per address the symbolizer names.
fn lookup(words: &[u64]) -> String {
    let mut text = String::from("num_symbols: 1\n");
    // The symbolizer treats addresses as return addresses and looks up the byte before;
    // Go's protocol asks about the address itself, so ask about the one after it.
    let key = |a: u64| (a as usize).wrapping_add(1);
    let resolved = super::resolve_all(words.iter().map(|a| key(*a)));
    for addr in words {
        if let Some(lines) = resolved.get(&key(*addr)) {
            // The outermost line is the function the address belongs to.
            if let Some(l) = lines.last().filter(|l| !l.function.starts_with("0x")) {
                text.push_str(&format!("{addr:#x} {}\n", l.function));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bad_words_are_echoed_truncated() {
        let long = "z".repeat(2 << 20);
        let e = parse(&format!("0x10+{long}")).expect_err("a bad word");
        let message = e.message();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains(&format!("{}… (2097152 bytes)", "z".repeat(64))));
        // Short ones whole.
        let e = parse("0xzz+12").expect_err("a bad word");
        assert!(
            e.message().contains("\"address\": \"0xzz\""),
            "{}",
            e.message()
        );
    }

    #[test]
    fn too_many_addresses_are_refused() {
        let many = vec!["0x1"; MAX_ADDRESSES + 1].join("+");
        let e = parse(&many).expect_err("too many");
        assert!(
            e.message().contains("at most 10000 per request"),
            "{}",
            e.message()
        );
        assert_eq!(parse(&many[4..]).map(|w| w.len()).ok(), Some(MAX_ADDRESSES));
    }
}
