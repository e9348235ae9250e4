//! The frame-pointer register, read once the reading function's own frame record is set
//! up: the one way diag's walks (the CPU engine's from its own stack, the heap hook's,
//! a traced task's await stack) find where they start.

/// The frame pointer of the function this is inlined into (`rbp` on x86_64, `x29` on
/// aarch64), read after that function's prologue has run; 0 on other architectures.
///
/// Every function of this build keeps the register pointing at its own frame record
/// (`-C force-frame-pointers=yes`, in .cargo/config.toml), once its prologue has run. An
/// optimized build may move a prologue off the paths that need no frame (LLVM's
/// shrink-wrapping), and the compiler does not know that the asm reads the register, so
/// on such a path a plain read returns the caller's record. Declaring a callee-saved
/// register (r12, x20) clobbered makes the asm need the prologue, which saves that
/// register, and so run after it.
#[inline(always)]
pub(crate) fn frame_pointer() -> usize {
    let fp: usize;
    // SAFETY: reads a register into a local and declares another clobbered; touches no
    // memory.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!(
            "mov {}, rbp",
            out(reg) fp,
            out("r12") _,
            options(nomem, nostack, preserves_flags)
        );
    }
    // SAFETY: as above, with x29 and x20.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!(
            "mov {}, x29",
            out(reg) fp,
            out("x20") _,
            options(nomem, nostack, preserves_flags)
        );
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        fp = 0;
    }
    fp
}
