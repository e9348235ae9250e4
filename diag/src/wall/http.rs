//! `GET /wall`: its typed query, the handler and the answer's headers, and how the
//! wall-time module's errors are answered.

use std::time::{Duration, SystemTime};

use axum::extract::{FromRef, FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, header};

use super::encode::{achieved_hz, lowered};
use super::sampler::{DEFAULT_HZ, MAX_HZ, Options};
use super::{DEFAULT_SECONDS, WallError};
use crate::error::ApiError;
use crate::flamegraph::Format;
use crate::params::Params;
use crate::state::Diag;
use crate::tasks::DumpGuard;
use crate::util::utc;

/// The query of `/wall`: `seconds=N&hz=HZ&format=proto|svg|folded&threads=1|0`
/// (`threads=0`: the traced tasks alone, no signal sent to any thread).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallQuery {
    pub(crate) window: Duration,
    pub(crate) hz: u32,
    pub(crate) format: Format,
    pub(crate) threads: bool,
}

impl WallQuery {
    fn parse(d: &Diag, params: &Params) -> Result<Self, ApiError> {
        let seconds = d.seconds(params, DEFAULT_SECONDS)?;
        let hz = params.int_in("hz", DEFAULT_HZ, 1, MAX_HZ)?;
        let format = params.one_of("format", Format::Proto)?;
        let threads = params.choice("threads", "1", &["1", "0"])? == "1";
        Ok(Self {
            window: Duration::from_secs(seconds),
            hz,
            format,
            threads,
        })
    }
}

impl<S> FromRequestParts<S> for WallQuery
where
    Diag: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Self::parse(&Diag::from_ref(state), &Params::from_parts(parts))
    }
}

/// `GET /wall?seconds=N&hz=HZ&format=proto|svg|folded&threads=1|0`.
pub(crate) async fn wall(State(d): State<Diag>, q: WallQuery) -> Result<Response, ApiError> {
    super::available()?;
    let until = SystemTime::now() + q.window;
    let guard = DumpGuard::take(format!("a wall-time profile until {}", utc(until)))?;
    let _permit = d.heavy()?;
    let opts = Options {
        window: q.window,
        hz: q.hz,
        except: crate::tasks::traced::current(),
        threads: q.threads,
        shutdown: d.cfg().shutdown.clone(),
    };
    let capture = super::sample(opts, guard).await?;
    let (body, profile) = super::build(capture, q.format).await?;
    let ctype = match q.format {
        Format::Proto => "application/octet-stream",
        Format::Svg => "image/svg+xml",
        Format::Folded => "text/plain; charset=utf-8",
    };
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if q.format == Format::Proto {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"wall\""),
        );
    }
    let s = &profile.stats;
    h.insert("x-diag-samples", s.ticks.into());
    h.insert("x-diag-tasks-max", s.most_tasks.into());
    if let Ok(v) = HeaderValue::from_str(&format!("{:.1}", achieved_hz(&profile))) {
        h.insert("x-diag-sample-rate", v);
    }
    if s.lowered_ticks > 0 {
        if let Ok(v) = HeaderValue::from_str(&lowered(&profile)) {
            h.insert("x-diag-rate-lowered", v);
        }
    }
    if s.ended_early {
        h.insert("x-diag-ended-early", HeaderValue::from_static("shutdown"));
    }
    Ok(res)
}

impl From<WallError> for ApiError {
    fn from(e: WallError) -> Self {
        match e {
            WallError::Unavailable(_) => ApiError::NotImplemented(e.to_string()),
            WallError::Start(_)
            | WallError::Failed
            | WallError::Build(_)
            | WallError::Encode(_) => ApiError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_errors_answer_as_before() {
        let answer = |e: WallError| {
            let e = ApiError::from(e);
            (e.status().as_u16(), e.message())
        };
        assert_eq!(
            answer(WallError::Unavailable("this build lacks X".to_owned())),
            (
                501,
                "no wall-time profile: it samples the traced task dumps, and this build lacks X"
                    .to_owned()
            )
        );
        assert_eq!(
            answer(WallError::Failed),
            (500, "the wall sampler failed (see the logs)".to_owned())
        );
        assert_eq!(answer(WallError::Build("cancelled".to_owned())).0, 500);
    }

    #[test]
    fn the_query_names_each_bad_parameter() {
        let d = Diag::new(crate::Config::new());
        let err = |q: &str| match WallQuery::parse(&d, &Params::parse(Some(q))) {
            Ok(w) => panic!("{q}: accepted as {w:?}"),
            Err(e) => e.message(),
        };
        assert!(err("hz=0").contains("\"hz\": \"0\"; allowed: an integer from 1 to 100"));
        assert!(err("format=pdf").contains("allowed: one of proto, svg, folded"));
        assert!(err("threads=2").contains("\"threads\": \"2\"; allowed: one of 1, 0"));
        let q = WallQuery::parse(&d, &Params::parse(Some("format=folded&threads=0")));
        let q = q.map_err(|e| e.message()).unwrap();
        assert_eq!(
            (q.format, q.threads, q.hz),
            (Format::Folded, false, DEFAULT_HZ)
        );
        assert_eq!(q.window, Duration::from_secs(DEFAULT_SECONDS));
    }
}
