//! Helpers for the workspace's integration tests: a real HTTP/1.1 client over real sockets,
//! the demo binary as a real process, and the real `go tool pprof`.
//!
//! Nothing here fakes a server or a tool: every helper talks to something running. Every
//! helper is re-exported at the root (`testkit::get`, `testkit::Demo`, ...); the modules
//! group them by concern.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod demo;
pub mod mem;
mod parsers;
mod redis;
pub mod sched;
mod temp;
mod tmux;
mod tools;

pub use bytes::Bytes;
pub use http::{HeaderMap, Method, StatusCode};

pub use client::{
    REQUEST_TIMEOUT, Reply, basic_auth, get, get_with, profile_running, request, serve, try_request,
};
pub use demo::Demo;
pub use mem::rss_mib;
pub use parsers::{folded, json_field, pprof_cum_mib, svg_titles};
pub use redis::{RedisServer, Resp, redis_server_bin};
pub use sched::thread_cpu;
pub use temp::temp_dir;
pub use tmux::Tmux;
pub use tools::{go, go_pprof, go_pprof_async, go_tool, tokio_console};
