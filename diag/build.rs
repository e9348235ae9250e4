//! One name, `diag_engine`, for the platforms diag's own signal-based samplers run on
//! (Linux on x86_64 or aarch64: the CPU engine, the heap unwinder, wall-time thread
//! samples, task-dump frames), so that the source says `#[cfg(diag_engine)]` instead of
//! spelling the pair out at every item.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(diag_engine)");
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os == "linux" && (arch == "x86_64" || arch == "aarch64") {
        println!("cargo::rustc-cfg=diag_engine");
    }
}
