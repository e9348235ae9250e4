//! The symbolizer CPU profiles, heap profiles and `/symbol` share. It keeps no parsed
//! debug info: each batch of new addresses is resolved in one pass and only the results
//! are cached, in a bounded cache.
//!
//! - The program's own code: function names from the ELF symbol table (`.symtab`, full
//!   demangled paths such as `demo::work::spin_for`), files, lines and inlined frames from
//!   one DWARF pass over only the units holding the addresses ([`dwarf`]); the file is
//!   mapped for the pass ([`elf`]).
//! - Exported functions of shared libraries (libc, libgcc, the loader, the vDSO): named by
//!   the loader (`dladdr1`), with no file or line.
//! - Anything else: its address in hex.
//!
//! docs/internals.md ("Symbolization") gives the design and docs/performance.md the
//! figures.

mod cache;
mod dwarf;
mod elf;
#[cfg(feature = "cpu")]
pub(crate) mod http;
mod loader;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use crate::proto::Line;

#[cfg(test)]
use cache::{CAPACITY, MAX_BYTES};
#[cfg(feature = "bench")]
pub(crate) use elf::keep_mapped;

/// Source lines per code address, innermost first.
pub(crate) type Resolved = Arc<[Line]>;

/// Resolved addresses, bounded (see [`cache`]).
static CACHE: LazyLock<Mutex<cache::Cache>> = LazyLock::new(Mutex::default);

/// One pass at a time: concurrent profiles would each hold a pass's working memory.
static PASS: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves every address in `ips` (return addresses: each is looked up at `ip - 1`),
/// through the cache; the addresses not cached are resolved in one pass and cached.
pub(crate) fn resolve_all(ips: impl IntoIterator<Item = usize>) -> HashMap<usize, Resolved> {
    let mut out = HashMap::new();
    let mut misses = Vec::new();
    {
        let mut cache = lock(&CACHE);
        for ip in ips {
            if out.contains_key(&ip) {
                continue;
            }
            match cache.get(ip) {
                Some(lines) => {
                    out.insert(ip, lines);
                }
                None => misses.push(ip),
            }
        }
    }
    misses.sort_unstable();
    misses.dedup();
    if misses.is_empty() {
        return out;
    }
    // Profiles that end together (a scraper's and a person's) wait here for each other's
    // pass: what the passes before this one resolved is taken from the cache, not again.
    let _pass = lock(&PASS);
    {
        let mut cache = lock(&CACHE);
        misses.retain(|&ip| match cache.get(ip) {
            Some(lines) => {
                out.insert(ip, lines);
                false
            }
            None => true,
        });
    }
    if misses.is_empty() {
        return out;
    }
    let resolved = resolve_locked(&misses);
    let program = loader::program();
    let mut cache = lock(&CACHE);
    for (ip, lines) in misses.into_iter().zip(resolved) {
        // An address outside the program that nobody could name is cheap to look up again
        // (the loader's tables only): not cached, so that clients sending made-up
        // addresses do not push real ones out.
        let in_program = program.is_some_and(|p| p.contains(ip.wrapping_sub(1)));
        if in_program || !is_hex(&lines) {
            cache.insert(ip, lines.clone());
        }
        out.insert(ip, lines);
    }
    drop(cache);
    release_freed_memory();
    out
}

/// Hands the memory a pass freed back to the system. glibc's allocator keeps freed
/// memory in the arena of the thread that freed it, and passes run on whichever blocking
/// thread asked: measured over 400 `/symbol` requests, memory in use stayed at 8–13 MiB
/// while the arenas grew to 64 MiB. `malloc_trim` returns the free pages of every arena
/// (a few milliseconds). Under another global allocator (jemalloc) it finds nothing to do.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether `lines` is only the address in hex (nothing knew it).
fn is_hex(lines: &[Line]) -> bool {
    matches!(lines, [l] if l.line == 0 && l.file.is_empty() && l.function.starts_with("0x"))
}

/// Resolves one address without the cache; an unknown address gets its hex as its name.
/// (Profiles resolve in batches with [`resolve_all`]; this is for a single address.)
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn resolve(ip: usize) -> Resolved {
    resolve_uncached(&[ip])
        .pop()
        .unwrap_or_else(|| hex(ip).into())
}

/// How many addresses the cache holds and its accounted bytes.
#[cfg(test)]
pub(crate) fn cached() -> (usize, usize) {
    let cache = lock(&CACHE);
    (cache.len(), cache.bytes())
}

/// Resolves `ips` (return addresses) in one pass, without the cache: one result each, in
/// order.
pub(crate) fn resolve_uncached(ips: &[usize]) -> Vec<Resolved> {
    let _pass = lock(&PASS);
    resolve_locked(ips)
}

/// [`resolve_uncached`], the pass lock held.
fn resolve_locked(ips: &[usize]) -> Vec<Resolved> {
    let program = loader::program();
    let mut out: Vec<Option<Resolved>> = vec![None; ips.len()];
    // (address in the file, index in `ips`) of the program's own code.
    let mut own: Vec<(u64, usize)> = Vec::new();
    for (i, &ip) in ips.iter().enumerate() {
        let Some(pc) = ip.checked_sub(1) else {
            continue;
        };
        match program {
            Some(p) if p.contains(pc) => own.push(((pc - p.bias) as u64, i)),
            _ => {
                out[i] = loader::exported_function(pc).map(|function| {
                    vec![Line {
                        function,
                        file: String::new(),
                        line: 0,
                    }]
                    .into()
                });
            }
        }
    }
    if !own.is_empty() {
        own.sort_unstable();
        let addrs: Vec<u64> = own.iter().map(|(a, _)| *a).collect();
        let mut unique = addrs.clone();
        unique.dedup();
        let mut lines = program_lines(&unique);
        // An address whose byte before lies in no function is the first instruction of
        // one, interrupted by a sample (the padding between functions never runs): it is
        // looked up where it is, not as a return address.
        let unnamed: Vec<usize> = (0..unique.len()).filter(|&k| lines[k].is_none()).collect();
        if !unnamed.is_empty() {
            let at: Vec<u64> = unnamed.iter().map(|&k| unique[k] + 1).collect();
            for (k, found) in unnamed.into_iter().zip(program_lines(&at)) {
                lines[k] = found;
            }
        }
        for (addr, i) in own {
            if let Ok(k) = unique.binary_search(&addr) {
                out[i] = lines.get(k).cloned().flatten();
            }
        }
    }
    out.into_iter()
        .zip(ips)
        .map(|(lines, &ip)| lines.unwrap_or_else(|| hex(ip).into()))
        .collect()
}

/// Lines for addresses of the program's own code (sorted, unique, in the file's address
/// space); `None` where neither the symbol table nor DWARF knows the address.
fn program_lines(addrs: &[u64]) -> Vec<Option<Resolved>> {
    let image = match elf::Image::program() {
        Ok(image) => image,
        Err(e) => {
            warn_once(&format!("cannot read the program's file to symbolize: {e}"));
            return vec![None; addrs.len()];
        }
    };
    let file = match object::File::parse(image.data()) {
        Ok(file) => file,
        Err(e) => {
            warn_once(&format!(
                "cannot parse the program's ELF file to symbolize: {e}"
            ));
            return vec![None; addrs.len()];
        }
    };
    let names = elf::function_names(&file, addrs);
    let frames = dwarf::frames(&file, addrs).unwrap_or_else(|e| {
        warn_once(&format!("no source lines in profiles: {e}"));
        Vec::new()
    });
    names
        .into_iter()
        .enumerate()
        .map(|(k, name)| {
            let frames = frames.get(k).map_or(&[][..], |f| &f[..]);
            let Some((outer, inner)) = frames.split_last() else {
                return name.map(|function| {
                    vec![Line {
                        function,
                        file: String::new(),
                        line: 0,
                    }]
                    .into()
                });
            };
            let unnamed = || format!("{:#x}", addrs[k]);
            let mut lines: Vec<Line> = inner
                .iter()
                .map(|f| Line {
                    function: f.function.clone().unwrap_or_else(unnamed),
                    file: f.file.clone(),
                    line: f.line,
                })
                .collect();
            // The outer function is named from the symbol table (full path) when it can be.
            lines.push(Line {
                function: name
                    .or_else(|| outer.function.clone())
                    .unwrap_or_else(unnamed),
                file: outer.file.clone(),
                line: outer.line,
            });
            Some(lines.into())
        })
        .collect()
}

/// One line naming the address in hex.
fn hex(ip: usize) -> Vec<Line> {
    vec![Line {
        function: format!("{ip:#x}"),
        file: String::new(),
        line: 0,
    }]
}

/// A symbol's name demangled (Rust's legacy and v0 schemes), without the hash suffix;
/// other names as they are.
fn demangle(raw: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(raw))
}

/// Logs a symbolization failure once per process (it would repeat on every profile).
fn warn_once(message: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!("diag: {message}");
    }
}

#[cfg(test)]
mod tests;
