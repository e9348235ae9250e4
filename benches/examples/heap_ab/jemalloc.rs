//! What heap_ab asks of jemalloc through its mallctl names: the switch, the sample count,
//! and the unwinder in its hook.

use std::ffi::{c_uint, c_void};

use tikv_jemalloc_ctl::raw;

/// jemalloc's `MALLCTL_ARENAS_ALL`: statistics summed over every arena.
const ARENAS_ALL: u32 = 4096;

const HOOK: &[u8] = b"experimental.hooks.prof_backtrace\0";

/// jemalloc's `prof_backtrace_hook_t`.
type Hook = unsafe extern "C" fn(*mut *mut c_void, *mut c_uint, c_uint);

/// Switches jemalloc's sampling on or off.
pub(crate) fn set_sampling(active: bool) -> Result<(), String> {
    // SAFETY: prof.active is a bool.
    unsafe { raw::write(b"prof.active\0", active) }.map_err(|e| {
        format!("cannot set prof.active ({e}): jemalloc needs prof:true in its settings")
    })
}

/// jemalloc's rate: one sample per `2^lg` bytes allocated, on average.
pub(crate) fn lg_prof_sample() -> Result<usize, String> {
    // SAFETY: opt.lg_prof_sample reads as size_t.
    unsafe { raw::read::<usize>(b"opt.lg_prof_sample\0") }
        .map_err(|e| format!("opt.lg_prof_sample: {e}"))
}

/// Counts jemalloc's samples of objects up to 4 KiB. In jemalloc 5.3.1 a sampled small
/// object gets a page-sized extent of its own (jemalloc.c `imalloc_sample`), counted in
/// the allocations of the bin of its rounded-up size, 4 KiB here
/// (arena.c `arena_large_malloc_stats_update`), whereas the objects thread caches hand
/// out are counted there only when a cache is refilled, which `/churn`'s 4 KiB blocks,
/// freed at once, hardly need.
pub(crate) struct Samples {
    name: Vec<u8>,
}

impl Samples {
    pub(crate) fn new() -> Result<Self, String> {
        // SAFETY: arenas.nbins reads as unsigned, arenas.bin.<i>.size as size_t.
        let bins = unsafe { raw::read::<c_uint>(b"arenas.nbins\0") }
            .map_err(|e| format!("arenas.nbins: {e}"))?;
        let bin = (0..bins)
            .find(|i| {
                let name = format!("arenas.bin.{i}.size\0");
                // SAFETY: as above.
                unsafe { raw::read::<usize>(name.as_bytes()) }.ok() == Some(4096)
            })
            .ok_or("jemalloc has no small size class of 4096 bytes")?;
        let samples = Self {
            name: format!("stats.arenas.{ARENAS_ALL}.bins.{bin}.nmalloc\0").into_bytes(),
        };
        samples.read()?;
        Ok(samples)
    }

    /// The count so far, refreshed.
    pub(crate) fn read(&self) -> Result<u64, String> {
        // SAFETY: "epoch" takes a u64 (writing it refreshes the statistics); the count
        // reads as uint64_t.
        unsafe {
            raw::update(b"epoch\0", 1u64).map_err(|e| format!("epoch: {e}"))?;
            raw::read::<u64>(&self.name)
        }
        .map_err(|e| {
            let name = String::from_utf8_lossy(&self.name[..self.name.len() - 1]);
            format!("{name}: {e} (is jemalloc built with statistics?)")
        })
    }
}

/// The hook in jemalloc's place now, as an address (0 for none).
pub(crate) fn hook() -> Result<usize, String> {
    // SAFETY: experimental.hooks.prof_backtrace reads as a prof_backtrace_hook_t, a
    // nullable function pointer of this signature.
    unsafe { raw::read::<Option<Hook>>(HOOK) }
        .map(|h| h.map_or(0, |f| f as usize))
        .map_err(|e| format!("reading experimental.hooks.prof_backtrace: {e}"))
}

/// A `prof_backtrace_hook_t` that unwinds nothing: one frame, always the same (an
/// address inside this function, as a return address would be).
unsafe extern "C" fn one_frame(vec: *mut *mut c_void, len: *mut c_uint, max_len: c_uint) {
    // SAFETY: jemalloc passes room for max_len frames and a valid len.
    unsafe {
        if max_len > 0 {
            *vec = (one_frame as *const () as usize + 1) as *mut c_void;
            *len = 1;
        } else {
            *len = 0;
        }
    }
}

/// Puts [`one_frame`] in jemalloc's place; returns its address.
pub(crate) fn install_one_frame() -> Result<usize, String> {
    // SAFETY: experimental.hooks.prof_backtrace takes a prof_backtrace_hook_t.
    unsafe { raw::write::<Option<Hook>>(HOOK, Some(one_frame)) }
        .map_err(|e| format!("writing experimental.hooks.prof_backtrace: {e}"))?;
    Ok(one_frame as *const () as usize)
}
