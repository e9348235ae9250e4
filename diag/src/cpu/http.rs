//! `GET /profile` and `GET /flamegraph`: their typed queries, the handlers, the answers'
//! headers, and how the CPU module's errors are answered.

use std::time::{Duration, SystemTime};

use axum::extract::{FromRef, FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, header};

use super::engine::EngineError;
use super::past::{Asked, StretchError};
use super::{CaptureError, CpuProfile, DEFAULT_FREQUENCY, DEFAULT_SECONDS, MAX_FREQUENCY, When};
use crate::error::ApiError;
use crate::flamegraph::Format;
use crate::params::Params;
use crate::state::Diag;
use crate::util::utc;

/// The query of `/profile`: `seconds=N&frequency=HZ` (a live window) or
/// `since=SECONDS` / `start=T&end=T` (the recorder's past), `format=proto|svg|folded`,
/// `tagroot=KEY[,KEY]`.
#[derive(Debug)]
pub(crate) struct ProfileQuery {
    pub(crate) when: When,
    pub(crate) format: Format,
    /// Label keys whose values root the svg and folded stacks.
    pub(crate) tagroot: Vec<String>,
}

/// The query of `/flamegraph`: `/profile`'s without `format` (always the SVG).
#[derive(Debug)]
pub(crate) struct FlamegraphQuery(pub(crate) ProfileQuery);

impl ProfileQuery {
    /// Reads `params`, each error naming the parameter; `fixed`: the format, when the
    /// endpoint takes no `format`.
    fn parse(d: &Diag, params: &Params, fixed: Option<Format>) -> Result<Self, ApiError> {
        let format = match fixed {
            Some(f) => f,
            None => params.one_of("format", Format::Proto)?,
        };
        let when = match asked(params).stretch(SystemTime::now())? {
            Some(stretch) => When::Past(stretch),
            None => When::Live {
                window: Duration::from_secs(d.seconds(params, DEFAULT_SECONDS)?),
                frequency: params.int_in("frequency", DEFAULT_FREQUENCY, 1, MAX_FREQUENCY)?,
            },
        };
        let tagroot = tagroot(params, format)?;
        Ok(Self {
            when,
            format,
            tagroot,
        })
    }
}

impl<S> FromRequestParts<S> for ProfileQuery
where
    Diag: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Self::parse(&Diag::from_ref(state), &Params::from_parts(parts), None)
    }
}

impl<S> FromRequestParts<S> for FlamegraphQuery
where
    Diag: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = Params::from_parts(parts);
        ProfileQuery::parse(&Diag::from_ref(state), &params, Some(Format::Svg)).map(Self)
    }
}

/// The parameters that ask for the recorder's past.
pub(super) fn asked(params: &Params) -> Asked<'_> {
    let live = ["seconds", "frequency"]
        .into_iter()
        .find_map(|name| params.get(name).map(|v| (name, v)));
    Asked {
        since: params.get("since"),
        start: params.get("start"),
        end: params.get("end"),
        live,
    }
}

/// The most keys `tagroot` takes.
const MAX_TAGROOT_KEYS: usize = 8;

/// `tagroot=KEY[,KEY]`: label keys whose values become the root frames of svg and folded
/// output (Go's `-tagroot`). A proto profile carries every label already.
fn tagroot(params: &Params, format: Format) -> Result<Vec<String>, ApiError> {
    let Some(raw) = params.get("tagroot") else {
        return Ok(Vec::new());
    };
    let keys: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if format == Format::Proto {
        return Err(ApiError::bad_param(
            "tagroot",
            raw,
            "tagroot only with format=svg or format=folded (a proto profile carries the labels: use go tool pprof -tagroot)",
        ));
    }
    if keys.is_empty()
        || keys.len() > MAX_TAGROOT_KEYS
        || keys.iter().any(|k| k.len() > crate::labels::MAX_KEY_LEN)
    {
        return Err(ApiError::bad_param(
            "tagroot",
            raw,
            format!(
                "1 to {MAX_TAGROOT_KEYS} comma-separated label keys of at most {} bytes, such as http.route",
                crate::labels::MAX_KEY_LEN
            ),
        ));
    }
    Ok(keys)
}

/// `GET /profile?seconds=N&frequency=HZ&format=proto|svg|folded&tagroot=KEY[,KEY]`, or
/// `since=SECONDS` / `start=T&end=T` for the recorder's past.
pub(crate) async fn profile(
    State(d): State<Diag>,
    query: ProfileQuery,
) -> Result<Response, ApiError> {
    respond(&d, query, false).await
}

/// `GET /flamegraph?seconds=N&frequency=HZ&tagroot=KEY[,KEY]`: the SVG as a download.
pub(crate) async fn flamegraph(
    State(d): State<Diag>,
    FlamegraphQuery(query): FlamegraphQuery,
) -> Result<Response, ApiError> {
    respond(&d, query, true).await
}

async fn respond(d: &Diag, query: ProfileQuery, download: bool) -> Result<Response, ApiError> {
    let _permit = d.heavy()?;
    let recorder = d.cfg().cpu_recorder().is_some();
    let capture = super::capture(query.when, d.cfg().shutdown(), recorder).await?;
    let (body, profile) = super::build(capture, query.tagroot, query.format).await?;
    let mut res = body.into_response();
    let h = res.headers_mut();
    let (ctype, disposition) = match (query.format, download) {
        (Format::Proto, _) => (
            "application/octet-stream",
            Some("attachment; filename=\"profile\""),
        ),
        (Format::Svg, true) => (
            "image/svg+xml",
            Some("attachment; filename=\"flamegraph.svg\""),
        ),
        (Format::Svg, false) => ("image/svg+xml", None),
        (Format::Folded, _) => ("text/plain; charset=utf-8", None),
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Some(disp) = disposition {
        h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(disp));
    }
    describe(h, &profile);
    Ok(res)
}

/// The `x-diag-*` headers: what the profile sampled, at what rate, and from where.
fn describe(h: &mut http::HeaderMap, profile: &CpuProfile) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    put("x-diag-samples", profile.samples.to_string());
    put(
        "x-diag-sample-rate",
        format!("{:.1}", profile.achieved_hz()),
    );
    // The process's CPU time over the window (all threads), which the samples stand for:
    // a client can compare it with what the profile sampled.
    put(
        "x-diag-cpu-seconds",
        format!("{:.3}", profile.cpu_used.as_secs_f64()),
    );
    if profile.ended_early {
        put("x-diag-ended-early", "shutdown".to_owned());
    }
    if let Some(past) = &profile.recorded {
        let end = profile.start + profile.duration;
        put(
            "x-diag-recorded",
            format!("{} to {}", utc(profile.start), utc(end)),
        );
        if let Some(asked) = past.asked_from {
            let kept = SystemTime::now()
                .duration_since(past.kept_from)
                .unwrap_or_default();
            put(
                "x-diag-recorder-short",
                format!(
                    "asked from {}, kept from {} ({:.0} s)",
                    utc(asked),
                    utc(past.kept_from),
                    kept.as_secs_f64()
                ),
            );
        }
    }
}

impl From<StretchError> for ApiError {
    fn from(e: StretchError) -> Self {
        let (param, value, allowed) = e.parts();
        ApiError::bad_param(param, value, allowed)
    }
}

impl From<CaptureError> for ApiError {
    fn from(e: CaptureError) -> Self {
        match e {
            CaptureError::Engine(EngineError::Unsupported) => {
                ApiError::NotImplemented(e.to_string())
            }
            CaptureError::Refused(refused) => refused.into(),
            CaptureError::Engine(_) | CaptureError::Build(_) | CaptureError::Encode(_) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::cpu::past::Stretch;

    /// The stretch `q` asks for, read as `/profile` reads its query.
    fn stretch(q: &str) -> Result<Option<Stretch>, StretchError> {
        asked(&Params::parse(Some(q))).stretch(SystemTime::now())
    }

    fn err(q: &str) -> String {
        match stretch(q) {
            Err(e) => ApiError::from(e).message(),
            Ok(s) => panic!("{q}: accepted as {s:?}"),
        }
    }

    #[test]
    fn no_recorder_parameter_is_a_live_profile() {
        assert!(matches!(stretch("seconds=5"), Ok(None)));
    }

    #[test]
    fn bad_values_name_the_parameter_and_what_is_allowed() {
        assert!(err("since=0").contains("\"since\": \"0\"; allowed: an integer from 1 to"));
        assert!(err("since=abc").contains("\"since\""));
        assert!(err("since=30&start=-60").contains("not both"));
        assert!(err("since=30&seconds=5").contains("\"seconds\""));
        assert!(err("since=30&frequency=99").contains("\"frequency\""));
        assert!(err("start=yesterday").contains("\"start\": \"yesterday\"; allowed: a Unix time"));
        assert!(err("start=0").contains("\"start\""));
        assert!(err("end=99999999999").contains("\"end\""));
        assert!(err("start=-60&end=-120").contains("\"end\": \"-120\"; allowed: a time later"));
    }

    #[test]
    fn negative_times_count_back_from_now() {
        let Ok(Some(s)) = stretch("start=-600&end=-300") else {
            panic!("refused");
        };
        let ago = |t: SystemTime| SystemTime::now().duration_since(t).unwrap_or_default();
        assert!((599..=601).contains(&ago(s.from).as_secs()));
        assert!((299..=301).contains(&ago(s.to.unwrap_or(UNIX_EPOCH)).as_secs()));
    }

    #[test]
    fn tagroot_is_for_svg_and_folded_and_bounded() {
        let keys = |q: &str, f| tagroot(&Params::parse(Some(q)), f).map_err(|e| e.message());
        assert_eq!(keys("", Format::Proto), Ok(vec![]));
        assert_eq!(
            keys("tagroot=http.route,%20tenant", Format::Folded),
            Ok(vec!["http.route".to_owned(), "tenant".to_owned()])
        );
        let proto = keys("tagroot=a", Format::Proto).unwrap_err();
        assert!(proto.contains("\"tagroot\": \"a\"; allowed: tagroot only with format=svg"));
        let many = keys("tagroot=a,b,c,d,e,f,g,h,i", Format::Svg).unwrap_err();
        assert!(many.contains("allowed: 1 to 8 comma-separated label keys of at most 64"));
        assert!(keys("tagroot=,", Format::Svg).is_err());
    }

    #[test]
    fn capture_errors_answer_as_before() {
        let answer = |e: CaptureError| {
            let e = ApiError::from(e);
            (e.status().as_u16(), e.message())
        };
        let unsupported = answer(CaptureError::Engine(EngineError::Unsupported));
        assert_eq!(unsupported.0, 501);
        assert_eq!(unsupported.1, EngineError::Unsupported.to_string());
        assert_eq!(answer(CaptureError::Engine(EngineError::Lost)).0, 500);
        let off = StretchError::RecorderOff {
            param: "since",
            value: "60".to_owned(),
        };
        let (status, text) = answer(CaptureError::Refused(off.clone()));
        assert_eq!((status, text), (400, off.to_string()));
        assert!(off.to_string().starts_with(
            "invalid value for \"since\": \"60\"; allowed: nothing: the CPU recorder is off"
        ));
        let encode = CaptureError::Encode(std::io::Error::other("disk full"));
        assert_eq!(
            answer(encode),
            (500, "encoding the CPU profile failed: disk full".to_owned())
        );
    }
}
