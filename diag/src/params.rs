//! Query parameters, parsed strictly: a bad value is a 400 that names the parameter, the
//! value received and what is allowed.

use std::str::FromStr;

use crate::error::ApiError;

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

    #[test]
    fn values_are_percent_decoded() {
        let p = Params::parse(Some("a=%20x+y"));
        assert_eq!(p.get("a"), Some(" x y"));
    }
}
