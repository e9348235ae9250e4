//! Taking a heap profile: one dump, or the difference of two dumps a window apart,
//! symbolized and encoded off the async workers.

use std::time::{Duration, Instant, SystemTime};

use super::dump::{self, Snapshot};
use super::jemalloc::{self, Profiling};
use super::profile::{Format, HeapProfile, Kind, SampleType, Taken};
use super::unwinder;
use crate::shutdown::Shutdown;

/// Why a heap profile could not be given. The HTTP side answers each as Go would (see
/// `heap/http.rs`).
#[derive(Debug)]
pub(crate) enum HeapError {
    /// What jemalloc said (profiling off or inactive, a dump that failed).
    Jemalloc(jemalloc::Error),
    /// Cumulative counts were asked for (`what`: `/allocs` or `sample_index=alloc_…`)
    /// and jemalloc does not keep them in this process (501).
    NoAccum { what: String },
    /// Something failed inside diag (500).
    Internal(String),
}

impl std::fmt::Display for HeapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Jemalloc(e) => e.fmt(f),
            Self::NoAccum { what } => write!(
                f,
                "{what} needs jemalloc's cumulative counts (what was ever allocated), which it \
                 keeps only with prof_accum:true, and this process runs with it off: restart \
                 with _RJEM_MALLOC_CONF={}. Without it, /heap serves the memory in use \
                 (inuse_space, inuse_objects).",
                jemalloc::RECOMMENDED_CONF
            ),
            Self::Internal(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for HeapError {}

impl From<jemalloc::Error> for HeapError {
    fn from(e: jemalloc::Error) -> Self {
        Self::Jemalloc(e)
    }
}

/// What one request asked for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub(crate) kind: Kind,
    pub(crate) format: Format,
    pub(crate) sample_type: SampleType,
    /// A delta over this many seconds; `None` for the heap as it is.
    pub(crate) seconds: Option<u64>,
}

/// Whether `req` can be answered in this process: jemalloc profiles, and keeps the
/// cumulative counts if `req` asks for them.
pub(crate) fn ready(req: &Request) -> Result<Profiling, HeapError> {
    let settings = jemalloc::profiling()?;
    if !settings.accum && req.sample_type.is_cumulative() {
        let what = if req.kind == Kind::Allocs {
            "/allocs".to_owned()
        } else {
            format!("sample_index={}", req.sample_type.name())
        };
        return Err(HeapError::NoAccum { what });
    }
    Ok(settings)
}

/// Takes the profile `req` asks for and encodes it; a delta window ends early when
/// `shutdown` is triggered.
pub(crate) async fn take(
    req: Request,
    settings: Profiling,
    shutdown: Shutdown,
) -> Result<(Vec<u8>, HeapProfile), HeapError> {
    unwinder::refresh();
    let unwinder = unwinder::current();
    let start = SystemTime::now();
    let mono = Instant::now();
    let first = snapshot().await?;
    let (snap, ended_early) = match req.seconds {
        None => (first, false),
        Some(s) => {
            let ended_early = tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(s)) => false,
                () = shutdown.triggered() => true,
            };
            let end = snapshot().await?;
            (dump::delta(&first, end), ended_early)
        }
    };
    let taken = Taken {
        start,
        duration: req.seconds.map(|_| mono.elapsed()),
        ended_early,
    };
    crate::offload::run(move || {
        let profile = HeapProfile::resolve(snap, settings.accum, taken, unwinder);
        let mappings = if req.format == Format::Proto {
            crate::maps::current()
        } else {
            Vec::new()
        };
        profile
            .encode(req.format, req.kind, req.sample_type, mappings)
            .map(|body| (body, profile))
    })
    .await
    .map_err(|e| HeapError::Internal(format!("building the heap profile failed: {e}")))?
    .map_err(|e| HeapError::Internal(format!("encoding the heap profile failed: {e}")))
}

/// One heap dump, taken and parsed off the async workers.
async fn snapshot() -> Result<Snapshot, HeapError> {
    crate::offload::run(|| {
        let text = jemalloc::dump()?;
        dump::parse(&text).map_err(|e| HeapError::Internal(format!("reading jemalloc's dump: {e}")))
    })
    .await
    .map_err(|e| HeapError::Internal(format!("the heap dump failed: {e}")))?
}
