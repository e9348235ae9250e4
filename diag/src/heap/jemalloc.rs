//! What diag asks jemalloc, through `mallctl` (tikv-jemalloc-ctl): whether heap profiling
//! can work in this process, its settings, a heap dump, and the allocator's statistics.
//!
//! diag cannot choose the application's allocator, so everything is found out at run
//! time, in an order where no question can panic: `config.*` (what jemalloc was built
//! with) first, then whether Rust's global allocator is jemalloc at all, then `opt.*`
//! (what it was started with), then `prof.active` (what it does now).

use std::alloc::{Layout, alloc, dealloc};
use std::ffi::{CString, c_char};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tikv_jemalloc_ctl::raw;

/// The settings every heap profile is read with.
pub(crate) const RECOMMENDED_CONF: &str =
    "prof:true,prof_active:true,lg_prof_sample:19,prof_accum:true";

/// How to install jemalloc as the allocator and start it with profiling on.
const HOW_TO_ENABLE: &str = "install tikv-jemallocator (features \"profiling\", \"stats\") \
     as the global allocator (#[global_allocator] static GLOBAL: tikv_jemallocator::Jemalloc \
     = tikv_jemallocator::Jemalloc;) and start the process with \
     _RJEM_MALLOC_CONF=prof:true,prof_active:true,lg_prof_sample:19,prof_accum:true (or \
     export those settings as the `_rjem_malloc_conf` static); see docs/guide.md";

/// Why jemalloc cannot give a heap profile, or what failed while it gave one. The HTTP
/// side answers each as Go would (see `heap/http.rs`).
#[derive(Debug)]
pub(crate) enum Error {
    /// It takes a rebuild or a restart: the allocator, its build or its start options
    /// (501), with how to fix it.
    Unsupported(String),
    /// Profiling is enabled but inactive: nothing is sampled now (503).
    Inactive,
    /// Taking or reading the dump failed (500).
    Dump(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsupported(why) | Self::Dump(why) => f.write_str(why),
            Self::Inactive => f.write_str(
                "jemalloc heap profiling is enabled but inactive (prof.active is \
                 false), so no allocations are being sampled: start with \
                 prof_active:true in _RJEM_MALLOC_CONF, or activate it at run time \
                 (mallctl \"prof.active\" = true, e.g. \
                 tikv_jemalloc_ctl::raw::write(b\"prof.active\\0\", true))",
            ),
        }
    }
}

impl std::error::Error for Error {}

/// jemalloc's profiling settings in this process, once it can profile.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Profiling {
    /// Whether cumulative (allocated-ever) counts are kept: `prof_accum`.
    pub(crate) accum: bool,
}

/// Reads one `mallctl` value.
pub(super) fn read<T: Copy>(name: &'static str) -> Result<T, tikv_jemalloc_ctl::Error> {
    debug_assert!(name.ends_with('\0'));
    // SAFETY: every name read through here is documented by jemalloc (jemalloc.3) with
    // the type it is read as: bool for config.*, opt.prof*, prof.active; size_t for
    // lg_prof_sample; uint64_t for thread.allocated; size_t for stats.*.
    unsafe { raw::read(name.as_bytes()) }
}

/// Whether Rust's global allocator is jemalloc: allocate through it and see whether
/// jemalloc's count of this thread's allocated bytes moved. Needs `config.stats`.
fn jemalloc_is_global_allocator() -> Result<bool, String> {
    const SIZE: usize = 1 << 16;
    let layout = Layout::from_size_align(SIZE, 16).map_err(|e| e.to_string())?;
    let before: u64 = read("thread.allocated\0").map_err(|e| e.to_string())?;
    // SAFETY: the layout has a non-zero size; the block is freed with the same layout.
    let p = unsafe { alloc(layout) };
    if p.is_null() {
        return Err("out of memory".to_owned());
    }
    std::hint::black_box(p);
    let after = read::<u64>("thread.allocated\0");
    // SAFETY: allocated above with this layout, not freed yet.
    unsafe { dealloc(p, layout) };
    Ok(after.map_err(|e| e.to_string())?.wrapping_sub(before) >= SIZE as u64)
}

/// Whether jemalloc, built with statistics, is Rust's global allocator here (asked once:
/// the allocator cannot change while the process runs).
pub(super) fn allocator() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            if read::<bool>("config.stats\0") != Ok(true) {
                return Err(format!(
                    "the linked jemalloc was built without statistics: enable the \
                     \"stats\" feature of tikv-jemallocator; {HOW_TO_ENABLE}"
                ));
            }
            match jemalloc_is_global_allocator() {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "jemalloc is not this process's global allocator, so it sees none of \
                     its memory: {HOW_TO_ENABLE}"
                )),
                Err(e) => Err(format!(
                    "could not ask jemalloc whether it is the global allocator \
                     (thread.allocated: {e}): {HOW_TO_ENABLE}"
                )),
            }
        })
        .clone()
}

/// Why the heap endpoints cannot answer in this build or process, if they cannot: it
/// takes a rebuild or a restart ([`Error::Unsupported`]), or profiling is merely inactive
/// ([`Error::Inactive`]).
pub(crate) fn profiling() -> Result<Profiling, Error> {
    allocator().map_err(Error::Unsupported)?;
    if read::<bool>("config.prof\0") != Ok(true) {
        return Err(Error::Unsupported(format!(
            "the linked jemalloc was built without heap profiling: enable the \
             \"profiling\" feature of tikv-jemallocator; {HOW_TO_ENABLE}"
        )));
    }
    if !read::<bool>("opt.prof\0").unwrap_or(false) {
        return Err(Error::Unsupported(format!(
            "jemalloc heap profiling is off in this process (opt.prof is false), and it can \
             only be turned on at start: restart with \
             _RJEM_MALLOC_CONF={RECOMMENDED_CONF} in the environment (or export those \
             settings as the `_rjem_malloc_conf` static); see docs/guide.md"
        )));
    }
    if !read::<bool>("prof.active\0").unwrap_or(false) {
        return Err(Error::Inactive);
    }
    Ok(Profiling {
        accum: read::<bool>("opt.prof_accum\0").unwrap_or(false),
    })
}

/// Returns the freed pages of every jemalloc arena to the system, when jemalloc is the
/// global allocator (`arena.<MALLCTL_ARENAS_ALL>.purge`, 4096 naming every arena).
pub(crate) fn purge() {
    command(c"arena.4096.purge");
}

/// Returns what the calling thread's cache holds to its arena, when jemalloc is the
/// global allocator (`thread.tcache.flush`): a thread that now waits keeps nothing cached.
pub(crate) fn flush_thread_cache() {
    command(c"thread.tcache.flush");
}

/// Runs a jemalloc command that takes and gives nothing, when jemalloc is the global
/// allocator; what it answers is of no use to its callers, so it is not returned.
fn command(name: &std::ffi::CStr) {
    if allocator().is_ok() {
        // SAFETY: `name` is one of jemalloc's documented commands that take and give
        // nothing (`arena.<i>.purge`, `thread.tcache.flush`): every pointer is NULL and
        // the length 0, as jemalloc requires of them.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }
}

/// Whether the heap endpoints can answer now, for the index page.
pub(crate) fn available() -> Result<(), String> {
    profiling().map(|_| ()).map_err(|e| e.to_string())
}

/// Asks jemalloc for a heap dump and returns its text.
///
/// jemalloc writes dumps only to a path it opens itself. diag hands it an anonymous
/// in-memory file (`memfd_create`, reopened through `/proc/self/fd`), so nothing touches
/// the disk and the temp directory does not matter; where that is not possible, a file in
/// the temp directory, removed afterwards.
pub(crate) fn dump() -> Result<String, Error> {
    match dump_to_memfd() {
        Ok(Some(text)) => Ok(text),
        Ok(None) => dump_to_temp_dir(&std::env::temp_dir()),
        Err(e) => Err(e),
    }
}

/// `Ok(None)` when this system cannot give jemalloc an in-memory file.
fn dump_to_memfd() -> Result<Option<String>, Error> {
    // SAFETY: a NUL-terminated name and valid flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"diag-heap-dump".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Ok(None);
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    if !Path::new(&path).exists() {
        return Ok(None);
    }
    if prof_dump(&path).is_err() {
        return Ok(None);
    }
    read_back(&mut file).map(Some).map_err(|e| {
        Error::Dump(format!(
            "reading jemalloc's heap dump back from memory: {e}"
        ))
    })
}

/// Dumps through a file of our own in `dir`.
pub(crate) fn dump_to_temp_dir(dir: &Path) -> Result<String, Error> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        "diag-heap-{}-{}.heap",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let unwritable = |e: std::io::Error| {
        Error::Dump(format!(
            "jemalloc writes its heap dump through a file, and {} could not be written ({e}): \
             make the temp directory writable or point TMPDIR at one that is",
            path.display()
        ))
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(unwritable)?;
    let result = match path.to_str() {
        Some(p) => prof_dump(p).map_err(|e| {
            unwritable(std::io::Error::other(format!(
                "jemalloc's prof.dump failed: {e}"
            )))
        }),
        None => Err(unwritable(std::io::Error::other("the path is not UTF-8"))),
    }
    .and_then(|()| {
        read_back(&mut file).map_err(|e| Error::Dump(format!("reading {}: {e}", path.display())))
    });
    let _ = std::fs::remove_file(&path);
    result
}

fn prof_dump(path: &str) -> Result<(), String> {
    let c = CString::new(path).map_err(|e| e.to_string())?;
    let ptr: *const c_char = c.as_ptr();
    // SAFETY: "prof.dump" takes a `const char *` naming the file to write; `c` outlives
    // the call.
    unsafe { raw::write(b"prof.dump\0", ptr) }.map_err(|e| e.to_string())
}

fn read_back(file: &mut File) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwritable_temp_dir_is_a_clear_error() {
        let e = dump_to_temp_dir(Path::new("/nonexistent/diag-heap")).unwrap_err();
        // A failed dump is the server's fault: 500 (the mapping is tested in heap/http.rs).
        assert!(matches!(e, Error::Dump(_)), "{e:?}");
        let m = e.to_string();
        assert!(m.contains("/nonexistent/diag-heap/diag-heap-"), "{m}");
        assert!(m.contains("could not be written"), "{m}");
        assert!(m.contains("TMPDIR"), "{m}");
    }
}
