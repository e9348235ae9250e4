//! Heap profiles from jemalloc's own sampling: `/heap`, `/allocs`, `/heap/stats`, and
//! jemalloc's statistics for the application ([`stats()`]).
//!
//! jemalloc samples one allocation per `2^lg_prof_sample` bytes on average and keeps, per
//! allocating stack, what is still in use and (with `prof_accum`) what was ever
//! allocated. diag asks for a dump, reads all four figures (Go's `alloc_objects`,
//! `alloc_space`, `inuse_objects`, `inuse_space`), symbolizes the stacks with the same
//! cache as CPU profiles, drops the allocator's own frames and answers as Go does.
//! Nothing is reset: a delta (`?seconds=N`) is the difference of two dumps, so other
//! readers and scrapers are never disturbed.
//!
//! The parts: `jemalloc` asks the allocator (`mallctl`, the dump), `dump` reads a dump,
//! `capture` takes one or two, `profile` encodes the result (pure: the mappings are
//! passed in), `unwinder` lends jemalloc diag's frame-pointer walk, `http` answers.

mod capture;
mod dump;
mod frames;
#[cfg(test)]
mod golden_tests;
mod http;
mod jemalloc;
mod profile;
mod stats;
#[cfg(all(feature = "cpu", diag_engine))]
mod unwinder;
#[cfg(not(all(feature = "cpu", diag_engine)))]
#[path = "no_unwinder.rs"]
mod unwinder;

pub(crate) use http::{allocs, heap, heap_stats};
pub(crate) use jemalloc::available;
pub(crate) use jemalloc::flush_thread_cache;
#[cfg(feature = "cpu")]
pub(crate) use jemalloc::purge;
pub use stats::{Stats, Unavailable, stats};
pub(crate) use unwinder::apply as apply_unwinder;
