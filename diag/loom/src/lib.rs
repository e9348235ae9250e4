//! diag's sample ring under loom: the very file diag builds
//! (`diag/src/cpu/engine/ring.rs`), with loom's atomics and `UnsafeCell` in place of
//! std's (`--cfg diag_loom`, set by this crate's build script). loom runs each test
//! under every interleaving of the threads and every value a relaxed or acquire load
//! may return, and checks each access to a slot's payload against the happens-before
//! order of the ring's atomics: a missing `Release`/`Acquire` is a reported data race.

#[path = "../../src/cpu/engine/ring.rs"]
#[allow(dead_code, unreachable_pub)]
mod ring;

#[cfg(test)]
mod tests;
