//! The HTTP side of heap profiles: `/heap`, `/allocs` and `/heap/stats`, their typed
//! queries, and the mapping of heap errors to Go-style answers.

use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, header};

use super::capture::{self, HeapError, Request};
use super::jemalloc;
use super::profile::{Format, HeapProfile, Kind, SampleType};
use super::stats::{self, StatsFormat};
use crate::error::ApiError;
use crate::params::{Choice, Params};
use crate::state::Diag;

impl From<jemalloc::Error> for ApiError {
    fn from(e: jemalloc::Error) -> Self {
        match e {
            jemalloc::Error::Unsupported(why) => ApiError::NotImplemented(why),
            jemalloc::Error::Inactive => ApiError::Unavailable {
                message: e.to_string(),
                retry_after: None,
            },
            jemalloc::Error::Dump(why) => ApiError::Internal(why),
        }
    }
}

impl From<HeapError> for ApiError {
    fn from(e: HeapError) -> Self {
        match e {
            HeapError::Jemalloc(e) => e.into(),
            HeapError::NoAccum { .. } => ApiError::NotImplemented(e.to_string()),
            HeapError::Internal(why) => ApiError::Internal(why),
        }
    }
}

/// `sample_index=` takes Go's names, in Go's order.
impl Choice for SampleType {
    const CHOICES: &'static [(&'static str, Self)] = &[
        (Self::AllocObjects.name(), Self::AllocObjects),
        (Self::AllocSpace.name(), Self::AllocSpace),
        (Self::InuseObjects.name(), Self::InuseObjects),
        (Self::InuseSpace.name(), Self::InuseSpace),
    ];
}

impl Choice for StatsFormat {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("text", Self::Text), ("prometheus", Self::Prometheus)];
}

/// `?debug=`: only Go's binary form is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DebugLevel {
    /// `debug=0`: profile.proto (or what `format` asks for).
    Binary,
}

/// The query of `/heap` and `/allocs`:
/// `?seconds=N&format=proto|svg|folded&sample_index=TYPE&debug=0&gc=0|1`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeapQuery {
    pub(crate) format: Format,
    /// `None`: the endpoint's default.
    pub(crate) sample_type: Option<SampleType>,
    pub(crate) debug: DebugLevel,
    /// A delta over this many seconds; `None` for the heap as it is.
    pub(crate) seconds: Option<u64>,
}

impl HeapQuery {
    fn parse(params: &Params, d: &Diag) -> Result<Self, ApiError> {
        let format = params.one_of("format", Format::Proto)?;
        let sample_type = match params.get("sample_index") {
            None => None,
            Some(_) => Some(params.one_of("sample_index", SampleType::InuseSpace)?),
        };
        // Go's legacy text format (debug=1) is not served; `gc` means nothing without a GC.
        params.choice("debug", "0", &["0"]).map_err(|_| {
            ApiError::bad_param(
                "debug",
                params.get("debug").unwrap_or_default(),
                "0 (Go's legacy text format is not served: read the profile with \
                 go tool pprof -raw, or ask for format=folded)",
            )
        })?;
        params.choice("gc", "0", &["0", "1"])?;
        let seconds = match params.get("seconds") {
            None => None,
            Some(_) => Some(d.seconds(params, 1)?),
        };
        Ok(Self {
            format,
            sample_type,
            debug: DebugLevel::Binary,
            seconds,
        })
    }

    fn request(self, kind: Kind) -> Request {
        let DebugLevel::Binary = self.debug;
        Request {
            kind,
            format: self.format,
            sample_type: self.sample_type.unwrap_or(kind.default_sample_type()),
            seconds: self.seconds,
        }
    }
}

impl FromRequestParts<Diag> for HeapQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, d: &Diag) -> Result<Self, ApiError> {
        Self::parse(&Params::from_parts(parts), d)
    }
}

/// The query of `/heap/stats`: `?format=text|prometheus`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StatsQuery {
    pub(crate) format: StatsFormat,
}

impl<S: Send + Sync> FromRequestParts<S> for StatsQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let params = Params::from_parts(parts);
        Ok(Self {
            format: params.one_of("format", StatsFormat::Text)?,
        })
    }
}

/// `GET /heap/stats?format=text|prometheus`: jemalloc's allocated, active, resident,
/// mapped, retained and metadata bytes.
pub(crate) async fn heap_stats(q: StatsQuery) -> Result<Response, ApiError> {
    let stats = stats::stats().map_err(|why| ApiError::NotImplemented(why.to_string()))?;
    let ctype = match q.format {
        StatsFormat::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        StatsFormat::Text => "text/plain; charset=utf-8",
    };
    Ok((
        [(header::CONTENT_TYPE, ctype)],
        stats::render(&stats, q.format),
    )
        .into_response())
}

/// `GET /heap?seconds=N&format=proto|svg|folded&sample_index=TYPE`.
pub(crate) async fn heap(State(d): State<Diag>, q: HeapQuery) -> Result<Response, ApiError> {
    respond(&d, q.request(Kind::Heap)).await
}

/// `GET /allocs`: the heap profile with `alloc_space` as its default sample type.
pub(crate) async fn allocs(State(d): State<Diag>, q: HeapQuery) -> Result<Response, ApiError> {
    respond(&d, q.request(Kind::Allocs)).await
}

async fn respond(d: &Diag, req: Request) -> Result<Response, ApiError> {
    let settings = capture::ready(&req)?;
    let _permit = d.heavy()?;
    let (body, profile) = capture::take(req, settings, d.cfg().shutdown.clone()).await?;
    Ok(response(body, &profile, &req))
}

fn response(body: Vec<u8>, profile: &HeapProfile, req: &Request) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    let ctype = match req.format {
        Format::Proto => "application/octet-stream",
        Format::Svg => "image/svg+xml",
        Format::Folded => "text/plain; charset=utf-8",
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if req.format == Format::Proto {
        let name = match (req.kind, req.seconds.is_some()) {
            (Kind::Heap, false) => "attachment; filename=\"heap\"",
            (Kind::Heap, true) => "attachment; filename=\"heap-delta\"",
            (Kind::Allocs, false) => "attachment; filename=\"allocs\"",
            (Kind::Allocs, true) => "attachment; filename=\"allocs-delta\"",
        };
        h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(name));
    }
    h.insert("x-diag-heap-stacks", profile.stacks.len().into());
    h.insert(
        "x-diag-heap-unwinder",
        HeaderValue::from_static(profile.unwinder.name()),
    );
    if profile.ended_early {
        h.insert("x-diag-ended-early", HeaderValue::from_static("shutdown"));
    }
    res
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn an_unwritable_temp_dir_is_a_clear_error() {
        let e = jemalloc::dump_to_temp_dir(Path::new("/nonexistent/diag-heap")).unwrap_err();
        let e = ApiError::from(e);
        assert_eq!(e.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let m = e.message();
        assert!(m.contains("/nonexistent/diag-heap/diag-heap-"), "{m}");
        assert!(m.contains("could not be written"), "{m}");
        assert!(m.contains("TMPDIR"), "{m}");
    }

    #[test]
    fn queries_name_the_bad_parameter_as_before() {
        let d = Diag::new(crate::Config::default());
        let bad = |q: &str| {
            HeapQuery::parse(&Params::parse(Some(q)), &d)
                .unwrap_err()
                .message()
        };
        assert_eq!(
            bad("sample_index=x"),
            "invalid value for \"sample_index\": \"x\"; allowed: one of alloc_objects, \
             alloc_space, inuse_objects, inuse_space"
        );
        assert_eq!(
            bad("format=pdf"),
            "invalid value for \"format\": \"pdf\"; allowed: one of proto, svg, folded"
        );
        assert!(bad("debug=1").contains("legacy text format"));
        let q = HeapQuery::parse(&Params::parse(Some("sample_index=alloc_objects")), &d).unwrap();
        assert_eq!(q.request(Kind::Heap).sample_type, SampleType::AllocObjects);
        let q = HeapQuery::parse(&Params::parse(None), &d).unwrap();
        assert_eq!(q.request(Kind::Allocs).sample_type, SampleType::AllocSpace);
        assert_eq!(q.request(Kind::Heap).sample_type, SampleType::InuseSpace);
    }
}
