//! # diag: Go's `/debug/pprof` for Rust services
//!
//! Mount the endpoints Go services have always had onto an axum app, any tower stack, plain
//! hyper, or a sidecar listener of their own, and drive them with the clients you know:
//! `go tool pprof`, a browser, `curl`.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // 1. Merged into an axum app (no fallback of its own, so yours is kept):
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .merge(diag::router(diag::Config::default().with_default_env()));
//!
//! // 2. Or on its own loopback listener, stopping with the app:
//! let stop = diag::Shutdown::new();
//! let sidecar = diag::serve(
//!     diag::Config::default().with_shutdown(stop.clone()),
//!     diag::server::DEFAULT_SIDECAR_ADDR,
//! )
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Then `go tool pprof -top http://127.0.0.1:6060/debug/pprof/profile?seconds=30`.
//! A third way, [`DiagLayer`], answers under the prefix in front of any tower service.
//!
//! The crate root holds the everyday items ([`router`], [`Config`], [`serve`],
//! [`DiagLayer`], [`Shutdown`]); everything else lives in the module it belongs to:
//! [`config`] (the settings and their parts), [`server`] (the sidecar), [`layer`] (the tower
//! middleware), [`conn`] (connection limits), and one module per optional feature.
//!
//! ## Features
//! | feature | default | gives |
//! |---|---|---|
//! | `cpu` | yes | `/profile`, `/flamegraph`, `/symbol` (diag's own sampler: Linux x86_64/aarch64); [`labels`] on CPU samples |
//! | `console` | no | [`console::bind`]: tokio-console's layer for your subscriber, and its server, bound and served by diag |
//! | `trace` | no | `/trace`: spans, events and task polls over a window as Chrome trace-event JSON, recorded by [`trace::layer()`] |
//! | `taskdump` | no | `/goroutine`, `/tasks`: where each traced tokio task waits ([`tasks::spawn`], [`tasks::TracedLayer`]; no runtime-wide pause); `/wall`: where they spend wall time, awaiting included |
//! | `criterion` | no | [`criterion::Flamegraphs`]: criterion 0.8's profiler hook, a flamegraph and a profile per benchmark under `cargo bench -- --profile-time N` |
//! | `heap` | no | `/heap`, `/allocs`, `/heap/stats` from jemalloc's sampling, and [`heap`]'s statistics (the application installs tikv-jemallocator as its global allocator and starts with `prof:true`) |
//!
//! Endpoints, parameters and errors are listed in the repository's `docs/endpoints.md`;
//! protection (token, caps, binding) in `docs/security.md`; every public item, by module,
//! in `docs/internals.md` ("Public API").
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
// Without a profiling backend, the shared machinery for heavy endpoints (parameters,
// limits, dates) has no user yet.
#![cfg_attr(
    not(all(
        feature = "cpu",
        feature = "heap",
        feature = "taskdump",
        feature = "trace"
    )),
    allow(dead_code)
)]

mod auth;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
pub mod config;
pub mod conn;
#[cfg(feature = "console")]
#[cfg_attr(docsrs, doc(cfg(feature = "console")))]
pub mod console;
#[cfg(feature = "cpu")]
mod cpu;
#[cfg(feature = "criterion")]
#[cfg_attr(docsrs, doc(cfg(feature = "criterion")))]
pub mod criterion;
mod endpoints;
mod error;
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
mod flamegraph;
mod fp;
#[cfg(test)]
mod golden;
#[cfg(feature = "heap")]
#[cfg_attr(docsrs, doc(cfg(feature = "heap")))]
pub mod heap;
mod index;
#[cfg(feature = "cpu")]
#[cfg_attr(docsrs, doc(cfg(feature = "cpu")))]
pub mod labels;
pub mod layer;
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
mod maps;
#[cfg(any(
    feature = "cpu",
    feature = "heap",
    feature = "taskdump",
    feature = "trace"
))]
mod offload;
mod params;
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
mod proto;
mod router;
pub mod server;
mod shutdown;
mod state;
#[cfg(any(feature = "cpu", feature = "heap", feature = "taskdump"))]
mod symbols;
#[cfg(feature = "taskdump")]
#[cfg_attr(docsrs, doc(cfg(feature = "taskdump")))]
pub mod tasks;
#[cfg(feature = "trace")]
#[cfg_attr(docsrs, doc(cfg(feature = "trace")))]
pub mod trace;
mod util;
#[cfg(feature = "taskdump")]
mod wall;

/// docs/guide.md's Rust blocks, compiled (and run, where not `no_run`) as doctests so the
/// guide cannot drift from the API.
#[cfg(all(
    doctest,
    feature = "heap",
    feature = "taskdump",
    feature = "trace",
    feature = "console",
    feature = "criterion"
))]
#[doc = include_str!("../../docs/guide.md")]
mod guide {}

pub use config::Config;
pub use layer::DiagLayer;
pub use router::router;
pub use server::serve;
pub use shutdown::Shutdown;
