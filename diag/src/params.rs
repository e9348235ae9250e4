//! Query parameters, parsed strictly: a bad value is a 400 that names the parameter, the
//! value received and what is allowed.
//!
//! An endpoint's typed query (a struct in its profile's `http.rs`, implementing axum's
//! `FromRequestParts` with `Rejection = ApiError`) starts from [`Params::from_parts`] and
//! reads each field with [`Params::int_in`], [`Params::one_of`] (an enum implementing
//! [`Choice`]) or [`Params::get`]. A handler that wants the raw pairs takes `Params` itself.

use std::convert::Infallible;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use http::request::Parts;

use crate::error::ApiError;

/// A query value that is one of a fixed set of names: a format, a sample type, a debug
/// level. `CHOICES` lists them in the order a 400 names them.
///
/// ```ignore
/// #[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// enum Format { Proto, Svg, Folded }
/// impl Choice for Format {
///     const CHOICES: &'static [(&'static str, Self)] =
///         &[("proto", Self::Proto), ("svg", Self::Svg), ("folded", Self::Folded)];
/// }
/// let format = params.one_of("format", Format::Proto)?;
/// ```
pub(crate) trait Choice: Copy + 'static {
    /// Every value, with the name the query gives it.
    const CHOICES: &'static [(&'static str, Self)];
}

/// The decoded query string of one request.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub(crate) fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        Self { pairs }
    }

    /// The query of a request's head.
    pub(crate) fn from_parts(parts: &Parts) -> Self {
        Self::parse(parts.uri.query())
    }

    /// The first value given for `name`, as Go's `FormValue` takes it: a client that
    /// repeats a parameter gets what `go tool pprof` users get from Go.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An integer in `min..=max`, or `default` when absent.
    pub(crate) fn int_in<T>(
        &self,
        name: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ApiError>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => match raw.trim().parse::<T>() {
                Ok(v) if v >= min && v <= max => Ok(v),
                _ => Err(ApiError::bad_param(
                    name,
                    raw,
                    format!("an integer from {min} to {max}"),
                )),
            },
        }
    }

    /// One of `choices`, or `default` when absent.
    pub(crate) fn choice(
        &self,
        name: &'static str,
        default: &'static str,
        choices: &[&'static str],
    ) -> Result<&'static str, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => choices.iter().find(|c| **c == raw).copied().ok_or_else(|| {
                ApiError::bad_param(name, raw, format!("one of {}", choices.join(", ")))
            }),
        }
    }

    /// One of `T`'s [`Choice::CHOICES`], or `default` when absent; anything else is a 400
    /// worded as [`Params::choice`] words it ("one of a, b, c").
    pub(crate) fn one_of<T: Choice>(&self, name: &'static str, default: T) -> Result<T, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => T::CHOICES
                .iter()
                .find(|(n, _)| *n == raw)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let names: Vec<&str> = T::CHOICES.iter().map(|(n, _)| *n).collect();
                    ApiError::bad_param(name, raw, format!("one of {}", names.join(", ")))
                }),
        }
    }
}

/// `Params` as a handler's argument: the request's query, decoded (never rejected).
impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::from_parts(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_range_checked() {
        let p = Params::parse(Some("seconds=5&frequency=0&x=abc&neg=-1"));
        assert_eq!(p.int_in::<u64>("seconds", 30, 1, 300).ok(), Some(5));
        assert_eq!(p.int_in::<u64>("absent", 30, 1, 300).ok(), Some(30));
        let err = p.int_in::<u32>("frequency", 99, 1, 1000).unwrap_err();
        assert_eq!(
            err.message(),
            "invalid value for \"frequency\": \"0\"; allowed: an integer from 1 to 1000"
        );
        assert!(p.int_in::<u64>("x", 1, 1, 2).is_err());
        assert!(p.int_in::<u64>("neg", 1, 1, 2).is_err());
    }

    #[test]
    fn choices_list_what_is_allowed() {
        let p = Params::parse(Some("format=pdf"));
        let err = p.choice("format", "proto", &["proto", "svg"]).unwrap_err();
        assert!(
            err.message().contains("one of proto, svg"),
            "{}",
            err.message()
        );
        assert_eq!(
            Params::parse(None)
                .choice("format", "proto", &["proto"])
                .ok(),
            Some("proto")
        );
    }

    #[test]
    fn the_first_of_repeated_parameters_wins_as_in_go() {
        let p = Params::parse(Some("seconds=5&seconds=300&seconds=x"));
        assert_eq!(p.get("seconds"), Some("5"));
        assert_eq!(p.int_in::<u64>("seconds", 30, 1, 10).ok(), Some(5));
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Format {
        Proto,
        Svg,
        Folded,
    }

    impl Choice for Format {
        const CHOICES: &'static [(&'static str, Self)] = &[
            ("proto", Self::Proto),
            ("svg", Self::Svg),
            ("folded", Self::Folded),
        ];
    }

    #[test]
    fn enums_are_chosen_by_name_with_choice_s_wording() {
        let p = Params::parse(Some("format=svg&bad=pdf"));
        assert_eq!(p.one_of("format", Format::Proto).ok(), Some(Format::Svg));
        assert_eq!(
            p.one_of("absent", Format::Folded).ok(),
            Some(Format::Folded)
        );
        let typed = p.one_of("bad", Format::Proto).unwrap_err().message();
        let by_name = p
            .choice("bad", "proto", &["proto", "svg", "folded"])
            .unwrap_err()
            .message();
        assert_eq!(typed, by_name);
        assert_eq!(
            typed,
            "invalid value for \"bad\": \"pdf\"; allowed: one of proto, svg, folded"
        );
    }

    #[tokio::test]
    async fn a_request_head_s_query_is_decoded() {
        let req = http::Request::builder()
            .uri("/debug/pprof/heap?seconds=5&format=svg")
            .body(())
            .expect("request");
        let (mut parts, ()) = req.into_parts();
        assert_eq!(Params::from_parts(&parts).get("format"), Some("svg"));
        let Ok(p) = Params::from_request_parts(&mut parts, &()).await;
        assert_eq!(p.int_in::<u64>("seconds", 30, 1, 300).ok(), Some(5));
    }

    #[test]
    fn values_are_percent_decoded() {
        let p = Params::parse(Some("a=%20x+y"));
        assert_eq!(p.get("a"), Some(" x y"));
    }
}
