//! Heap profiles from jemalloc's own sampling: `/heap`, `/allocs`, `/heap/stats`.
//!
//! jemalloc samples one allocation per `2^lg_prof_sample` bytes on average and keeps, per
//! allocating stack, what is still in use and (with `prof_accum`) what was ever
//! allocated. diag asks for a dump, reads all four figures (Go's `alloc_objects`,
//! `alloc_space`, `inuse_objects`, `inuse_space`), symbolizes the stacks with the same
//! cache as CPU profiles, drops the allocator's own frames and answers as Go does.
//! Nothing is reset: a delta (`?seconds=N`) is the difference of two dumps, so other
//! readers and scrapers are never disturbed.

mod dump;
mod jemalloc;
#[cfg(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod unwinder;
/// Without diag's CPU engine there is no walker to give jemalloc: its own stays.
#[cfg(not(all(
    feature = "cpu",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod unwinder {
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(crate) enum Unwinder {
        Jemalloc(String),
    }
    impl Unwinder {
        pub(crate) fn name(&self) -> &'static str {
            "jemalloc"
        }
        pub(crate) fn describe(&self) -> String {
            let Self::Jemalloc(why) = self;
            format!("stacks unwound by jemalloc's own unwinder ({why})")
        }
    }
    pub(crate) fn apply(_on: bool) {}
    pub(crate) fn refresh() {}
    pub(crate) fn current() -> Unwinder {
        Unwinder::Jemalloc(
            "diag's frame-pointer walker needs the cpu feature on Linux x86_64 or aarch64"
                .to_owned(),
        )
    }
}

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

use crate::error::ApiError;
use crate::flamegraph;
use crate::params::Params;
use crate::proto::{self, ProfileBuilder};
use crate::state::Diag;
use crate::symbols::{self, Resolved};
use crate::util::{unix_nanos, utc};

use dump::{Counts, Snapshot};

pub(crate) use jemalloc::available;
#[cfg(feature = "cpu")]
pub(crate) use jemalloc::purge;
pub use jemalloc::{HeapStats, HeapUnavailable, heap_stats};
pub(crate) use unwinder::apply as apply_unwinder;

/// Go's heap sample types, in Go's order: `(type, unit)`.
const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// `GET /heap/stats?format=text|prometheus`: jemalloc's allocated, active, resident,
/// mapped, retained and metadata bytes.
pub(crate) async fn stats(RawQuery(q): RawQuery) -> Response {
    let params = Params::parse(q.as_deref());
    let format = match params.choice("format", "text", &["text", "prometheus"]) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let stats = match heap_stats() {
        Ok(s) => s,
        Err(why) => return ApiError::NotImplemented(why.to_string()).into_response(),
    };
    let mut body = String::new();
    for (name, help, value) in stats.fields() {
        if format == "prometheus" {
            body.push_str(&format!(
                "# HELP jemalloc_{name}_bytes {help}\n# TYPE jemalloc_{name}_bytes gauge\n\
                 jemalloc_{name}_bytes {value}\n"
            ));
        } else {
            body.push_str(&format!(
                "{name:<10} {value:>14} bytes  {}\n",
                human_bytes(value as i64)
            ));
        }
    }
    let ctype = if format == "prometheus" {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, ctype)], body).into_response()
}

/// Which endpoint asked: they serve the same profile with a different default type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Heap,
    Allocs,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Heap => "heap",
            Self::Allocs => "allocs",
        }
    }

    fn default_sample_type(self) -> &'static str {
        match self {
            Self::Heap => "inuse_space",
            Self::Allocs => "alloc_space",
        }
    }
}

/// `GET /heap?seconds=N&format=proto|svg|folded&sample_index=TYPE`.
pub(crate) async fn heap(State(d): State<Diag>, RawQuery(q): RawQuery) -> Response {
    respond(d, Params::parse(q.as_deref()), Kind::Heap).await
}

/// `GET /allocs`: the heap profile with `alloc_space` as its default sample type.
pub(crate) async fn allocs(State(d): State<Diag>, RawQuery(q): RawQuery) -> Response {
    respond(d, Params::parse(q.as_deref()), Kind::Allocs).await
}

/// What one request asked for.
#[derive(Debug)]
struct Request {
    kind: Kind,
    format: &'static str,
    sample_type: &'static str,
    seconds: Option<u64>,
}

fn request(d: &Diag, params: &Params, kind: Kind) -> Result<Request, ApiError> {
    let format = params.choice("format", "proto", &["proto", "svg", "folded"])?;
    let names: Vec<&'static str> = SAMPLE_TYPES.iter().map(|(t, _)| *t).collect();
    let sample_type = params.choice("sample_index", kind.default_sample_type(), &names)?;
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
    Ok(Request {
        kind,
        format,
        sample_type,
        seconds,
    })
}

async fn respond(d: Diag, params: Params, kind: Kind) -> Response {
    let req = match request(&d, &params, kind) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match run(&d, &req).await {
        Ok((body, profile)) => {
            let mut res = body.into_response();
            let h = res.headers_mut();
            let ctype = match req.format {
                "proto" => "application/octet-stream",
                "svg" => "image/svg+xml",
                _ => "text/plain; charset=utf-8",
            };
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
            if req.format == "proto" {
                let name = match (kind, req.seconds.is_some()) {
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
        Err(e) => e.into_response(),
    }
}

async fn run(d: &Diag, req: &Request) -> Result<(Vec<u8>, HeapProfile), ApiError> {
    let settings = jemalloc::profiling()?;
    if !settings.accum && req.sample_type.starts_with("alloc_") {
        return Err(ApiError::NotImplemented(format!(
            "{} needs jemalloc's cumulative counts (what was ever allocated), which it keeps \
             only with prof_accum:true, and this process runs with it off: restart with \
             _RJEM_MALLOC_CONF={}. Without it, /heap serves the memory in use \
             (inuse_space, inuse_objects).",
            if req.kind == Kind::Allocs {
                "/allocs".to_owned()
            } else {
                format!("sample_index={}", req.sample_type)
            },
            jemalloc::RECOMMENDED_CONF
        )));
    }
    let _permit = d.heavy()?;
    unwinder::refresh();
    let unwinder = unwinder::current();
    let started = SystemTime::now();
    let mono = Instant::now();
    let first = snapshot().await?;
    let (snap, ended_early) = match req.seconds {
        None => (first, false),
        Some(s) => {
            let shutdown = d.cfg().shutdown.clone();
            let ended_early = tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(s)) => false,
                () = shutdown.triggered() => true,
            };
            let end = snapshot().await?;
            (dump::delta(&first, end), ended_early)
        }
    };
    let duration = req.seconds.map(|_| mono.elapsed());
    let kind = req.kind;
    let format = req.format;
    let sample_type = req.sample_type;
    tokio::task::spawn_blocking(move || {
        let profile = HeapProfile::resolve(
            snap,
            settings.accum,
            started,
            duration,
            ended_early,
            unwinder,
        );
        let body = match format {
            "proto" => profile.to_proto(kind, sample_type),
            "svg" => profile.to_svg(kind, sample_type),
            _ => Ok(profile.to_folded(sample_type).join("\n").into_bytes()),
        };
        body.map(|b| (b, profile))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("building the heap profile failed: {e}")))?
    .map_err(|e| ApiError::Internal(format!("encoding the heap profile failed: {e}")))
}

/// One heap dump, taken and parsed off the async workers.
async fn snapshot() -> Result<Snapshot, ApiError> {
    tokio::task::spawn_blocking(|| {
        let text = jemalloc::dump()?;
        dump::parse(&text).map_err(|e| ApiError::Internal(format!("reading jemalloc's dump: {e}")))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the heap dump failed: {e}")))?
}

/// A symbolized heap profile, ready to encode in any format.
#[derive(Debug)]
struct HeapProfile {
    /// Stacks (leaf first, allocator frames dropped) and their counts.
    stacks: Vec<(Vec<usize>, Counts)>,
    symbols: HashMap<usize, Resolved>,
    accum: bool,
    sample_period: u64,
    total: Counts,
    start: SystemTime,
    /// The window of a delta profile; `None` for the heap as it is.
    duration: Option<Duration>,
    ended_early: bool,
    /// Who unwinds jemalloc's samples (when the profile was asked for).
    unwinder: unwinder::Unwinder,
}

impl HeapProfile {
    fn resolve(
        snap: Snapshot,
        accum: bool,
        start: SystemTime,
        duration: Option<Duration>,
        ended_early: bool,
        unwinder: unwinder::Unwinder,
    ) -> Self {
        let symbols = symbols::resolve_all(snap.stacks.keys().flatten().copied());
        let mut merged: HashMap<Vec<usize>, Counts> = HashMap::with_capacity(snap.stacks.len());
        for (mut ips, counts) in snap.stacks {
            strip_allocator_frames(&mut ips, &symbols);
            if !ips.is_empty() {
                *merged.entry(ips).or_default() += counts;
            }
        }
        let mut stacks: Vec<_> = merged.into_iter().collect();
        stacks.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            stacks,
            symbols,
            accum,
            sample_period: snap.sample_period,
            total: snap.total,
            start,
            duration,
            ended_early,
            unwinder,
        }
    }

    fn value(&self, c: &Counts, sample_type: &str) -> i64 {
        match sample_type {
            "alloc_objects" => c.alloc_objects,
            "alloc_space" => c.alloc_bytes,
            "inuse_objects" => c.inuse_objects,
            _ => c.inuse_bytes,
        }
    }

    fn subtitle(&self, sample_type: &str) -> String {
        let what = match self.duration {
            Some(d) => format!(
                "change over {:.1} s from {}{}",
                d.as_secs_f64(),
                utc(self.start),
                if self.ended_early {
                    ", ended early by shutdown"
                } else {
                    ""
                }
            ),
            None => format!("at {}", utc(self.start)),
        };
        format!(
            "{sample_type} {what}: {} in use in all, {} allocated ever{}; jemalloc samples \
             every {} KiB on average",
            human_bytes(self.total.inuse_bytes),
            human_bytes(self.total.alloc_bytes),
            if self.accum {
                ""
            } else {
                " (not kept: prof_accum is off)"
            },
            self.sample_period / 1024,
        )
    }

    /// gzipped profile.proto with Go's heap sample types (only the in-use pair without
    /// `prof_accum`), `sample_type` as the default.
    fn to_proto(&self, kind: Kind, sample_type: &str) -> std::io::Result<Vec<u8>> {
        let types: &[(&str, &str)] = if self.accum {
            &SAMPLE_TYPES
        } else {
            &SAMPLE_TYPES[2..]
        };
        let mut b = ProfileBuilder::new(
            types,
            ("space", "bytes"),
            self.sample_period as i64,
            crate::maps::current(),
        );
        b.time(
            unix_nanos(self.start),
            self.duration.map_or(0, |d| d.as_nanos() as i64),
        );
        b.comment(&format!(
            "diag {} profile from jemalloc: {}",
            kind.name(),
            self.subtitle(sample_type)
        ));
        b.comment(&self.unwinder.describe());
        b.default_sample_type(sample_type);
        for (ips, c) in &self.stacks {
            let locations = ips
                .iter()
                .map(|ip| b.location(*ip as u64, self.symbols.get(ip).map_or(&[][..], |l| &l[..])))
                .collect();
            let values = if self.accum {
                vec![
                    c.alloc_objects,
                    c.alloc_bytes,
                    c.inuse_objects,
                    c.inuse_bytes,
                ]
            } else {
                vec![c.inuse_objects, c.inuse_bytes]
            };
            b.sample(locations, values, &[]);
        }
        proto::gzip(&b.encode())
    }

    /// Collapsed stacks, root first, weighed by `sample_type`. Stacks whose value is zero
    /// or negative (memory freed during a delta window) are left out: the folded format
    /// and flamegraphs have no negative widths.
    fn to_folded(&self, sample_type: &str) -> Vec<String> {
        flamegraph::fold(
            self.stacks
                .iter()
                .map(|(ips, c)| ("", &ips[..], self.value(c, sample_type)))
                .filter(|(_, _, v)| *v > 0),
            &self.symbols,
        )
    }

    fn to_svg(&self, kind: Kind, sample_type: &str) -> std::io::Result<Vec<u8>> {
        let title = match kind {
            Kind::Heap => "Heap flamegraph",
            Kind::Allocs => "Allocations flamegraph",
        };
        let title = if self.duration.is_some() {
            format!("{title} (growth during the window)")
        } else {
            title.to_owned()
        };
        flamegraph::render(
            &self.to_folded(sample_type),
            &flamegraph::Labels {
                title: &title,
                subtitle: &self.subtitle(sample_type),
                count_name: if sample_type.ends_with("_space") {
                    "bytes"
                } else {
                    "objects"
                },
            },
        )
    }
}

/// `1.5 MiB`-style sizes for titles.
fn human_bytes(b: i64) -> String {
    let mag = b.unsigned_abs() as f64;
    let sign = if b < 0 { "-" } else { "" };
    if mag >= (1u64 << 30) as f64 {
        format!("{sign}{:.1} GiB", mag / (1u64 << 30) as f64)
    } else if mag >= (1u64 << 20) as f64 {
        format!("{sign}{:.1} MiB", mag / (1u64 << 20) as f64)
    } else if mag >= 1024.0 {
        format!("{sign}{:.1} KiB", mag / 1024.0)
    } else {
        format!("{sign}{mag} B")
    }
}

/// Whether a function is an allocator entry point: Rust's global-allocator shims, the
/// tikv-jemallocator glue, and jemalloc's public functions (prefixed `_rjem_` on Linux;
/// the C names when jemalloc replaces the system allocator).
fn is_allocator_entry(name: &str) -> bool {
    const C_ENTRIES: &[&str] = &[
        "malloc",
        "calloc",
        "realloc",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "mallocx",
        "rallocx",
        "xallocx",
        "sdallocx",
    ];
    let shim = name.strip_prefix("__rustc::").unwrap_or(name);
    name.starts_with("_rjem_")
        || shim.starts_with("__rust_alloc")
        || shim.starts_with("__rust_realloc")
        || name.starts_with("__rdl_")
        || name.contains("tikv_jemallocator::")
        || C_ENTRIES.contains(&name)
}

/// Drops the allocator's frames from the leaf end of a stack: everything up to and
/// including the outermost allocator entry point (jemalloc's sampling and backtrace code,
/// `_rjem_malloc`, the `__rust_alloc` shims), so stacks begin at the code that allocated.
fn strip_allocator_frames(ips: &mut Vec<usize>, symbols: &HashMap<usize, Resolved>) {
    /// Allocator frames sit at the leaf end; no need to look far.
    const SEARCH: usize = 24;
    let last_entry = ips[..ips.len().min(SEARCH)].iter().rposition(|ip| {
        symbols
            .get(ip)
            .is_some_and(|lines| lines.iter().any(|l| is_allocator_entry(&l.function)))
    });
    if let Some(i) = last_entry {
        ips.drain(..=i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Line;

    fn line(f: &str) -> Resolved {
        vec![Line {
            function: f.into(),
            file: String::new(),
            line: 0,
        }]
        .into()
    }

    #[test]
    fn allocator_frames_are_dropped_up_to_the_outermost_entry() {
        let symbols = HashMap::from([
            (1, line("prof_backtrace_impl")),
            (2, line("_rjem_je_prof_backtrace")),
            (3, line("_rjem_malloc")),
            (4, line("__rustc::__rust_alloc")),
            (5, line("alloc::raw_vec::RawVec<T>::allocate_in")),
            (6, line("demo::work::hold_memory")),
        ]);
        let mut ips = vec![1, 2, 3, 4, 5, 6];
        strip_allocator_frames(&mut ips, &symbols);
        assert_eq!(ips, [5, 6]);
        // A stack with no allocator frame is left as it is.
        let mut ips = vec![5, 6];
        strip_allocator_frames(&mut ips, &symbols);
        assert_eq!(ips, [5, 6]);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(-1536), "-1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
