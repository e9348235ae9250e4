//! Builds the ring with loom's atomics and cell (`--cfg diag_loom`, for this crate only:
//! loom's own dependencies and anything else keep their usual build), weakened as
//! `DIAG_LOOM_MUTANT` says when it is set.

fn main() {
    println!("cargo::rustc-cfg=diag_loom");
    println!("cargo::rerun-if-env-changed=DIAG_LOOM_MUTANT");
    if let Ok(mutant) = std::env::var("DIAG_LOOM_MUTANT") {
        println!("cargo::rustc-cfg=diag_loom_mutant=\"{mutant}\"");
    }
}
