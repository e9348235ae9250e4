//! The frame-pointer walk the signal handler runs, every read bounded.
//!
//! The walk starts at the interrupted instruction (so the function that was running is
//! the first frame), then follows the chain of frame records `[fp] = caller's fp,
//! [fp + 8] = return address` while each record lies inside `[sp, hi)`, the part of the
//! thread's stack in use, and each is above the last (so the walk always ends).
//!
//! A leaf without a frame of its own (libc's `write` and other system-call wrappers,
//! built without frame pointers on Debian; any function at its first instruction) leaves
//! `fp` at its caller's record, and a plain walk would skip that caller. So one more
//! frame is looked for: on x86_64 words just above `sp` (see [`leaf_callers`]), on
//! aarch64 the link register. It is taken as the caller's return address when it lies in
//! an executable mapping right after a call instruction and is not the first return
//! address the chain gives anyway.

use super::threads::ExecTable;

/// The registers a walk starts from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Regs {
    pub(crate) ip: usize,
    pub(crate) fp: usize,
    pub(crate) sp: usize,
    /// The link register (aarch64); 0 elsewhere.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) lr: usize,
}

/// The registers a walk needs, from the interrupted context.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn regs_of(ctx: *mut libc::c_void) -> Regs {
    // SAFETY: the kernel's ucontext for this signal.
    let g = unsafe { &(*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs };
    Regs {
        ip: g[libc::REG_RIP as usize] as usize,
        fp: g[libc::REG_RBP as usize] as usize,
        sp: g[libc::REG_RSP as usize] as usize,
        lr: 0,
    }
}

/// The registers a walk needs, from the interrupted context.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn regs_of(ctx: *mut libc::c_void) -> Regs {
    // SAFETY: the kernel's ucontext for this signal.
    let m = unsafe { &(*(ctx as *const libc::ucontext_t)).uc_mcontext };
    Regs {
        ip: m.pc as usize,
        fp: m.regs[29] as usize,
        sp: m.sp as usize,
        lr: m.regs[30] as usize,
    }
}

/// Reads a word of the stack. The caller has checked that `[addr, addr + 8)` lies within
/// the thread's stack range.
#[inline(always)]
unsafe fn read_word(addr: usize) -> usize {
    // SAFETY: the caller guarantees `addr` is within a mapped, readable stack range; the
    // stack is the interrupted thread's own, which cannot be unmapped while it is
    // interrupted. Unaligned reads are allowed on x86_64 and aarch64 for normal memory.
    unsafe { std::ptr::read_volatile(addr as *const usize) }
}

/// Walks the stack of `regs` within `[lo, hi)`, passing each address to `put(index,
/// address)`, at most `max` of them; returns how many were put. The first is the
/// interrupted address plus one (every address is then a "return address", whose
/// symbol lies at the byte before, as `go tool pprof` and diag's symbolizer assume).
///
/// # Safety
/// `[lo, hi)` must be mapped and readable for the whole call (the interrupted thread's
/// own stack, learned from `/proc/self/maps`), and `exec` must describe mappings that
/// stay mapped.
#[inline]
pub(crate) unsafe fn walk(
    regs: Regs,
    lo: usize,
    hi: usize,
    exec: &ExecTable,
    max: usize,
    mut put: impl FnMut(usize, usize),
) -> usize {
    if max == 0 {
        return 0;
    }
    put(0, regs.ip.wrapping_add(1));
    let mut n = 1;
    let word = core::mem::size_of::<usize>();
    let sp = regs.sp;
    if sp < lo || sp >= hi {
        return n;
    }
    // The first return address the chain gives, to tell a frameless leaf apart.
    let mut fp = regs.fp;
    let chain_ok = |fp: usize, floor: usize| {
        fp >= floor && fp % word == 0 && fp.checked_add(2 * word).is_some_and(|e| e <= hi)
    };
    let first_ret = if chain_ok(fp, sp) {
        // SAFETY: `[fp, fp + 16)` lies in `[sp, hi)`, inside the stack range.
        unsafe { read_word(fp + word) }
    } else {
        0
    };
    // SAFETY: as documented on this function.
    let (callers, found) = unsafe { leaf_callers(regs, hi, exec) };
    for &caller in &callers[..found] {
        if caller == first_ret || n >= max {
            break; // the chain gives this one and the rest
        }
        put(n, caller);
        n += 1;
    }
    let mut floor = sp;
    while n < max && chain_ok(fp, floor) {
        // SAFETY: `[fp, fp + 16)` lies in `[floor, hi)` ⊆ `[sp, hi)`.
        let (next, ret) = unsafe { (read_word(fp), read_word(fp + word)) };
        if ret == 0 {
            break;
        }
        put(n, ret);
        n += 1;
        if next <= fp {
            break;
        }
        floor = fp + 2 * word;
        fp = next;
    }
    n
}

/// Walks the calling thread's own stack, outside any signal handler: the first address is
/// the return address into the function that called this one (so it names the caller,
/// at its call), then the frame records above it, through [`walk`]. `[lo, hi)` bounds
/// every read; this function's own frame record must lie in it, else nothing is put.
/// Returns how many addresses were put.
///
/// jemalloc's heap-sample hook (`heap/unwinder.rs`) calls it; any code that wants its own
/// stack without libgcc's unwinder may.
///
/// # Safety
/// `[lo, hi)` must be the calling thread's stack, or a part of it holding the stack
/// pointer, mapped and readable.
#[inline(never)]
#[cfg_attr(not(feature = "heap"), allow(dead_code))]
pub(crate) unsafe fn walk_own_stack(
    lo: usize,
    hi: usize,
    max: usize,
    put: impl FnMut(usize, usize),
) -> usize {
    // This function's own frame record (`-C force-frame-pointers=yes`, needed by the
    // whole engine), read after its prologue.
    let fp = crate::fp::frame_pointer();
    let word = core::mem::size_of::<usize>();
    if fp < lo || fp % word != 0 || fp.checked_add(2 * word).is_none_or(|e| e > hi) {
        return 0;
    }
    // SAFETY: `[fp, fp + 16)` lies in `[lo, hi)`, the caller's readable stack.
    let (caller_fp, ret) = unsafe { (read_word(fp), read_word(fp + word)) };
    if caller_fp <= fp {
        return 0;
    }
    // Start as if interrupted in the caller at its call: ip + 1 is the return address.
    // The stack pointer is put at the caller's record, where no word before the first
    // return address can pass for one, so the leaf search adds nothing.
    let regs = Regs {
        ip: ret.wrapping_sub(1),
        fp: caller_fp,
        sp: caller_fp,
        lr: 0,
    };
    // SAFETY: `[caller_fp, hi)` ⊆ `[lo, hi)`, mapped and readable as the caller promised;
    // EXEC describes mappings the sampler thread found, which stay mapped.
    unsafe { walk(regs, lo, hi, &super::threads::EXEC, max, put) }
}

/// Words above the stack pointer searched for return addresses when the leaf is outside
/// the main program (glibc's `write` keeps a 0x28-byte frame below its return address in
/// a threaded process, and may be interrupted inside the helper it calls).
const LEAF_SCAN_WORDS: usize = 32;
/// Return addresses taken from that search at most.
pub(crate) const LEAF_CALLERS: usize = 4;

/// Return addresses of the frames a frame-pointer walk would skip: callers of a leaf
/// that has no frame of its own. For a leaf in the main program (built with frame
/// pointers; only a function's first instruction lacks its frame) the word at `[sp]`, if
/// it looks like a return address. For a leaf elsewhere (libc, built without them), the
/// words from `sp` up that look like return addresses, up to and including the first one
/// into the main program, below `fp` (the main program's caller's own frame record) and
/// at most [`LEAF_SCAN_WORDS`] words up. Returns them and how many there are.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn leaf_callers(regs: Regs, hi: usize, exec: &ExecTable) -> ([usize; LEAF_CALLERS], usize) {
    let mut found = [0usize; LEAF_CALLERS];
    let mut n = 0;
    let leaf_in_main = exec.in_main(regs.ip);
    let words = if leaf_in_main { 1 } else { LEAF_SCAN_WORDS };
    let mut end = regs.sp.saturating_add(words * 8).min(hi);
    if regs.fp > regs.sp {
        end = end.min(regs.fp);
    }
    let mut at = regs.sp;
    while n < LEAF_CALLERS && at.checked_add(8).is_some_and(|e| e <= end) {
        // SAFETY: `[at, at + 8)` lies in `[sp, hi)`, inside the stack range.
        let candidate = unsafe { read_word(at) };
        // SAFETY: `exec` describes mappings that stay mapped.
        if unsafe { looks_like_return_address(candidate, exec) } {
            found[n] = candidate;
            n += 1;
            if exec.in_main(candidate) {
                break;
            }
        }
        at += 8;
    }
    (found, n)
}

/// Whether `candidate` lies in an executable mapping right after a call instruction.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn looks_like_return_address(candidate: usize, exec: &ExecTable) -> bool {
    let Some((start, _)) = exec.containing(candidate) else {
        return false;
    };
    if candidate < start.saturating_add(8) {
        return false;
    }
    // SAFETY: `[candidate - 8, candidate)` lies in an executable, readable mapping.
    let before = unsafe { std::ptr::read_unaligned((candidate - 8) as *const [u8; 8]) };
    follows_a_call(&before)
}

/// The return address into the caller of a leaf that has no frame of its own: the link
/// register, if the instruction before it is a `bl` or `blr` and the leaf is outside the
/// main program (whose functions all keep frames; a framed leaf may have called since
/// and left the link register pointing into itself).
#[cfg(target_arch = "aarch64")]
#[inline]
unsafe fn leaf_callers(regs: Regs, _hi: usize, exec: &ExecTable) -> ([usize; LEAF_CALLERS], usize) {
    let mut found = [0usize; LEAF_CALLERS];
    if exec.in_main(regs.ip) {
        return (found, 0);
    }
    let candidate = regs.lr;
    let Some((start, _)) = exec.containing(candidate) else {
        return (found, 0);
    };
    if candidate < start.saturating_add(4) || candidate % 4 != 0 {
        return (found, 0);
    }
    // SAFETY: `[candidate - 4, candidate)` lies in an executable, readable mapping.
    let insn = unsafe { std::ptr::read((candidate - 4) as *const u32) };
    let bl = insn & 0xfc00_0000 == 0x9400_0000;
    let blr = insn & 0xffff_fc1f == 0xd63f_0000;
    if bl || blr {
        found[0] = candidate;
        return (found, 1);
    }
    (found, 0)
}

/// Whether the 8 bytes before an address end with an x86_64 call instruction: `call
/// rel32` (`e8` + 4 bytes) or an indirect `call` (`ff /2`, 2 to 7 bytes with its ModRM,
/// SIB and displacement).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn follows_a_call(before: &[u8; 8]) -> bool {
    if before[3] == 0xe8 {
        return true;
    }
    (2..=7).any(|len| {
        let op = before[8 - len];
        let modrm = before[8 - len + 1];
        let sib = before.get(8 - len + 2).copied().unwrap_or(0);
        op == 0xff && (modrm >> 3) & 7 == 2 && indirect_call_len(modrm, sib) == len
    })
}

/// The length of `ff /2` with this ModRM (and SIB byte, if any).
fn indirect_call_len(modrm: u8, sib: u8) -> usize {
    let md = modrm >> 6;
    let rm = modrm & 7;
    let sib_len = usize::from(md != 3 && rm == 4);
    let disp = match md {
        0 if rm == 5 => 4,
        0 if rm == 4 && sib & 7 == 5 => 4,
        1 => 1,
        2 => 4,
        _ => 0,
    };
    2 + sib_len + disp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_instructions_are_recognised() {
        // call rel32
        assert!(follows_a_call(&[0, 0, 0, 0xe8, 1, 2, 3, 4]));
        // call *%rax
        assert!(follows_a_call(&[0, 0, 0, 0, 0, 0, 0xff, 0xd0]));
        // call *0x10(%rax)
        assert!(follows_a_call(&[0, 0, 0, 0, 0, 0xff, 0x50, 0x10]));
        // call *0x1234(%rip)
        assert!(follows_a_call(&[0, 0, 0xff, 0x15, 0x34, 0x12, 0, 0]));
        // call *0x8(%rsp) (SIB)
        assert!(follows_a_call(&[0, 0, 0, 0, 0xff, 0x54, 0x24, 0x08]));
        // Not calls: padding, a ret, a push.
        assert!(!follows_a_call(&[0xcc; 8]));
        assert!(!follows_a_call(&[
            0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0xc3
        ]));
        assert!(!follows_a_call(&[0, 0, 0, 0, 0, 0, 0, 0x55]));
    }

    /// A fake stack of frame records, walked within its own bounds.
    #[test]
    fn the_walk_follows_records_and_stops_at_the_bounds() {
        let exec = ExecTable::empty_for_tests();
        let mut stack = vec![0usize; 16];
        let p = stack.as_mut_ptr();
        let base = p as usize;
        let at = |i: usize| base + i * 8;
        let set = |i: usize, v: usize| {
            assert!(i < 16);
            // SAFETY: `i` is within the vector, written through its one raw pointer.
            unsafe { p.add(i).write(v) }
        };
        // Records at 4 -> 8 -> 12, then a pointer outside the range.
        set(4, at(8));
        set(5, 0x1111);
        set(8, at(12));
        set(9, 0x2222);
        set(12, 0xdead_0000); // outside: the walk stops after this record
        set(13, 0x3333);
        let regs = Regs {
            ip: 0x1000,
            fp: at(4),
            sp: at(2),
            lr: 0,
        };
        let mut out = Vec::new();
        let hi = at(16);
        // SAFETY: the range is this test's own array.
        let n = unsafe { walk(regs, base, hi, &exec, 64, |_, a| out.push(a)) };
        assert_eq!(n, out.len());
        assert_eq!(out, [0x1001, 0x1111, 0x2222, 0x3333]);
        // A frame pointer below the stack pointer is not followed.
        let below = Regs { fp: at(1), ..regs };
        out.clear();
        // SAFETY: as above.
        unsafe { walk(below, base, hi, &exec, 64, |_, a| out.push(a)) };
        assert_eq!(out, [0x1001]);
        // At most `max` frames.
        out.clear();
        // SAFETY: as above.
        unsafe { walk(regs, base, hi, &exec, 2, |_, a| out.push(a)) };
        assert_eq!(out, [0x1001, 0x1111]);
        // A stack pointer outside the range: the address alone.
        out.clear();
        // SAFETY: as above.
        unsafe {
            walk(Regs { sp: hi, ..regs }, base, hi, &exec, 64, |_, a| {
                out.push(a)
            })
        };
        assert_eq!(out, [0x1001]);
        drop(stack);
    }
}
