//! What the signal handler knows about the process, published lock-free by the
//! `diag-sampler` thread: each sampled thread's stack range, and the executable mappings.
//!
//! Both tables are fixed arrays of atomics in `static`s, written only by the sampler
//! thread under a sequence counter (a seqlock): the handler reads the counter, the
//! fields, and the counter again, and treats a torn or in-progress read as "not known".
//! Learning the facts (reading `/proc/self/maps`, listing `/proc/self/task`) allocates and
//! calls the system, so it happens here, outside the handler, never inside it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Threads sampled at once at most; threads beyond it are not sampled (and counted).
pub(crate) const MAX_THREADS: usize = 1024;
/// Executable mappings remembered at most.
const MAX_EXEC: usize = 256;

/// One thread's entry: its id and the stack range `[lo, hi)` its frames may lie in.
struct ThreadEntry {
    seq: AtomicU32,
    tid: AtomicU32,
    lo: AtomicUsize,
    hi: AtomicUsize,
}

/// The per-thread table, indexed by the slot number each thread's timer carries.
pub(crate) struct ThreadTable {
    entries: [ThreadEntry; MAX_THREADS],
}

/// The executable (`r-x`) mappings, sorted, and the main program's text.
pub(crate) struct ExecTable {
    seq: AtomicU32,
    len: AtomicUsize,
    main_lo: AtomicUsize,
    main_hi: AtomicUsize,
    ranges: [(AtomicUsize, AtomicUsize); MAX_EXEC],
}

pub(crate) static THREADS: ThreadTable = ThreadTable::new();
pub(crate) static EXEC: ExecTable = ExecTable::new();

impl ThreadTable {
    const fn new() -> Self {
        Self {
            entries: [const {
                ThreadEntry {
                    seq: AtomicU32::new(0),
                    tid: AtomicU32::new(0),
                    lo: AtomicUsize::new(0),
                    hi: AtomicUsize::new(0),
                }
            }; MAX_THREADS],
        }
    }

    /// The thread id in `slot` and its stack range when known and consistent.
    /// Async-signal-safe.
    #[inline]
    pub(crate) fn read(&self, slot: usize) -> Option<(u32, Option<(usize, usize)>)> {
        let e = self.entries.get(slot)?;
        let s1 = e.seq.load(Ordering::Acquire);
        let tid = e.tid.load(Ordering::Relaxed);
        let lo = e.lo.load(Ordering::Relaxed);
        let hi = e.hi.load(Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Acquire);
        let s2 = e.seq.load(Ordering::Relaxed);
        if s1 != s2 || s1 % 2 == 1 {
            return Some((tid, None));
        }
        Some((tid, (hi > lo).then_some((lo, hi))))
    }

    /// Sets slot `slot` to thread `tid` with `range` (`None`: not known yet). Only the
    /// sampler thread writes.
    pub(crate) fn set(&self, slot: usize, tid: u32, range: Option<(usize, usize)>) {
        let Some(e) = self.entries.get(slot) else {
            return;
        };
        let (lo, hi) = range.unwrap_or((0, 0));
        let s = e.seq.load(Ordering::Relaxed);
        e.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        e.tid.store(tid, Ordering::Relaxed);
        e.lo.store(lo, Ordering::Relaxed);
        e.hi.store(hi, Ordering::Relaxed);
        e.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

impl ExecTable {
    /// An empty table (the wall-time sampler keeps one of its own).
    pub(crate) const fn new() -> Self {
        Self {
            seq: AtomicU32::new(0),
            len: AtomicUsize::new(0),
            main_lo: AtomicUsize::new(0),
            main_hi: AtomicUsize::new(0),
            ranges: [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; MAX_EXEC],
        }
    }

    /// Publishes the executable mappings (sorted by start) and the main program's text.
    pub(crate) fn publish(&self, ranges: &[(usize, usize)], main: (usize, usize)) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        let n = ranges.len().min(MAX_EXEC);
        for (slot, (lo, hi)) in self.ranges.iter().zip(ranges) {
            slot.0.store(*lo, Ordering::Relaxed);
            slot.1.store(*hi, Ordering::Relaxed);
        }
        self.len.store(n, Ordering::Relaxed);
        self.main_lo.store(main.0, Ordering::Relaxed);
        self.main_hi.store(main.1, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// The executable mapping holding `addr`, if it is known. Async-signal-safe.
    #[inline]
    pub(crate) fn containing(&self, addr: usize) -> Option<(usize, usize)> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 % 2 == 1 {
            return None;
        }
        let n = self.len.load(Ordering::Relaxed).min(MAX_EXEC);
        // Binary search over the sorted starts.
        let (mut a, mut b) = (0, n);
        while a < b {
            let m = (a + b) / 2;
            if self.ranges[m].0.load(Ordering::Relaxed) <= addr {
                a = m + 1;
            } else {
                b = m;
            }
        }
        let found = a.checked_sub(1).map(|i| {
            (
                self.ranges[i].0.load(Ordering::Relaxed),
                self.ranges[i].1.load(Ordering::Relaxed),
            )
        });
        std::sync::atomic::fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != s1 {
            return None;
        }
        found.filter(|(lo, hi)| *lo <= addr && addr < *hi)
    }

    /// Whether `addr` lies in the main program's text (`false` when not known).
    /// Async-signal-safe.
    #[inline]
    pub(crate) fn in_main(&self, addr: usize) -> bool {
        let s1 = self.seq.load(Ordering::Acquire);
        let lo = self.main_lo.load(Ordering::Relaxed);
        let hi = self.main_hi.load(Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Acquire);
        s1 % 2 == 0 && self.seq.load(Ordering::Relaxed) == s1 && lo <= addr && addr < hi
    }
}

/// One line of `/proc/self/maps`, borrowed from the text it was read from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mapping<'a> {
    pub(crate) lo: usize,
    pub(crate) hi: usize,
    pub(crate) perms: [u8; 4],
    /// The rest of the line after the inode (the path; empty for anonymous mappings).
    rest: &'a [u8],
}

impl<'a> Mapping<'a> {
    /// The mapping's path (empty for anonymous mappings; lossy if not UTF-8).
    #[cfg(test)]
    pub(crate) fn path(&self) -> std::borrow::Cow<'a, str> {
        String::from_utf8_lossy(self.rest)
    }
}

/// `/proc/self/maps`, read into a buffer kept between readings and parsed without
/// allocating per line: the sampler thread reads it when a thread newer than the last
/// reading wants its stack range, or when a sample names code outside every known mapping
/// (a library loaded since); it parses only each line's address range and permissions
/// (and the path of the executable ones, to find the main program's text), and keeps the
/// readable, writable ranges sorted so that each thread's stack is a binary search.
#[derive(Debug, Default)]
pub(crate) struct Maps {
    text: Vec<u8>,
    exe: Option<Vec<u8>>,
    exe_read: bool,
    exec: Vec<(usize, usize)>,
    /// The readable, writable mappings of the latest reading, sorted by start.
    rw: Vec<(usize, usize)>,
}

impl Maps {
    /// Reads `/proc/self/maps` again (empty if unreadable).
    pub(crate) fn read(&mut self) {
        use std::io::Read;
        self.text.clear();
        if let Ok(mut f) = std::fs::File::open("/proc/self/maps") {
            if f.read_to_end(&mut self.text).is_err() {
                self.text.clear();
            }
        }
        let mut rw = std::mem::take(&mut self.rw);
        rw.clear();
        rw.extend(
            self.lines()
                .filter(|m| m.perms[0] == b'r' && m.perms[1] == b'w')
                .map(|m| (m.lo, m.hi)),
        );
        rw.sort_unstable();
        self.rw = rw;
    }

    /// The lines of the latest reading.
    pub(crate) fn lines(&self) -> impl Iterator<Item = Mapping<'_>> {
        self.text.split(|b| *b == b'\n').filter_map(parse_maps_line)
    }

    /// Publishes the executable mappings of the latest reading into [`EXEC`].
    pub(crate) fn publish_exec(&mut self) {
        self.publish_exec_into(&EXEC);
    }

    /// Publishes the executable mappings of the latest reading into `table` (the engine's
    /// [`EXEC`], or a table of another sampler's own).
    pub(crate) fn publish_exec_into(&mut self, table: &ExecTable) {
        if !self.exe_read {
            // The executable does not change for the process's life.
            self.exe_read = true;
            self.exe = std::fs::read_link("/proc/self/exe")
                .ok()
                .map(|p| p.into_os_string().into_encoded_bytes());
        }
        let mut exec = std::mem::take(&mut self.exec);
        exec.clear();
        let mut main = (0, 0);
        for m in self.lines() {
            if m.perms[2] != b'x' {
                continue;
            }
            if m.perms[0] == b'r' {
                exec.push((m.lo, m.hi));
            }
            if main == (0, 0) && self.exe.as_deref().is_some_and(|e| e == m.rest) {
                main = (m.lo, m.hi);
            }
        }
        exec.sort_unstable();
        table.publish(&exec, main);
        self.exec = exec;
    }

    /// The readable, writable mapping holding `sp`: the stack range of a thread whose
    /// stack pointer is `sp` (the whole mapping is readable, so every read within it is
    /// safe).
    pub(crate) fn stack_range(&self, sp: usize) -> Option<(usize, usize)> {
        let after = self.rw.partition_point(|(lo, _)| *lo <= sp);
        let (lo, hi) = *self.rw.get(after.checked_sub(1)?)?;
        (lo <= sp && sp < hi).then_some((lo, hi))
    }
}

/// Parses one line of `/proc/self/maps`: `lo-hi perms offset dev inode [path]`.
fn parse_maps_line(line: &[u8]) -> Option<Mapping<'_>> {
    let mut rest = line;
    let mut field = || -> Option<&[u8]> {
        let start = rest.iter().position(|b| *b != b' ')?;
        let r = &rest[start..];
        let len = r.iter().position(|b| *b == b' ').unwrap_or(r.len());
        let (f, tail) = r.split_at(len);
        rest = tail;
        Some(f)
    };
    let range = field()?;
    let perms = field()?;
    let dash = range.iter().position(|b| *b == b'-')?;
    let lo = hex(&range[..dash])?;
    let hi = hex(&range[dash + 1..])?;
    let mut p = [b'-'; 4];
    for (d, s) in p.iter_mut().zip(perms) {
        *d = *s;
    }
    // offset, device, inode, then the path (which may hold spaces).
    for _ in 0..3 {
        field();
    }
    let path_start = rest.iter().position(|b| *b != b' ').unwrap_or(rest.len());
    Some(Mapping {
        lo,
        hi,
        perms: p,
        rest: &rest[path_start..],
    })
}

fn hex(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 2 * std::mem::size_of::<usize>() {
        return None;
    }
    let mut v = 0usize;
    for d in digits {
        let x = (*d as char).to_digit(16)?;
        v = (v << 4) | x as usize;
    }
    Some(v)
}

/// Lists `/proc/self/task` into a buffer kept between listings, through a directory stream
/// kept open and rewound (each rewind lists the threads of that moment), without
/// allocating per entry: the sampler thread lists it every 100 to 250 milliseconds for as
/// long as anything samples.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    dir: Option<std::ptr::NonNull<libc::DIR>>,
    tids: Vec<u32>,
}

impl Tasks {
    /// The ids of the process's threads now, sorted.
    pub(crate) fn list(&mut self) -> &[u32] {
        self.tids.clear();
        let dir = match self.dir {
            Some(d) => {
                // SAFETY: a stream this struct opened and has not closed.
                unsafe { libc::rewinddir(d.as_ptr()) };
                Some(d)
            }
            // SAFETY: a NUL-terminated path.
            None => std::ptr::NonNull::new(unsafe { libc::opendir(c"/proc/self/task".as_ptr()) }),
        };
        self.dir = dir;
        let Some(dir) = dir else {
            return &self.tids;
        };
        loop {
            // SAFETY: an open stream; each entry is read before the next readdir call.
            let e = unsafe { libc::readdir(dir.as_ptr()) };
            if e.is_null() {
                break;
            }
            // SAFETY: readdir's entry holds a NUL-terminated name.
            let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
            if let Some(tid) = parse_tid(name.to_bytes()) {
                self.tids.push(tid);
            }
        }
        self.tids.sort_unstable();
        &self.tids
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            // SAFETY: a stream this struct opened, closed once.
            unsafe { libc::closedir(d.as_ptr()) };
        }
    }
}

fn parse_tid(name: &[u8]) -> Option<u32> {
    if name.is_empty() || name.len() > 10 {
        return None;
    }
    let mut v: u32 = 0;
    for d in name {
        let x = (*d as char).to_digit(10)?;
        v = v.checked_mul(10)?.checked_add(x)?;
    }
    Some(v)
}

/// A thread's name (`comm`), or `thread TID` when it cannot be read.
pub(crate) fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("thread {tid}"))
}

/// Slot numbers for the thread table: the lowest free one first.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    used: HashMap<usize, u32>,
    next: usize,
    free: Vec<usize>,
}

impl Slots {
    /// A free slot for `tid`, or `None` when the table is full.
    pub(crate) fn take(&mut self, tid: u32) -> Option<usize> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None if self.next < MAX_THREADS => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.used.insert(slot, tid);
        Some(slot)
    }

    /// Gives `slot` back (and clears its table entry).
    pub(crate) fn give_back(&mut self, slot: usize) {
        if self.used.remove(&slot).is_some() {
            THREADS.set(slot, 0, None);
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
impl ExecTable {
    /// A table that knows no mapping.
    pub(crate) fn empty_for_tests() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse_with_paths_that_hold_spaces() {
        let m =
            parse_maps_line(b"7f00a000-7f00b000 r-xp 00001000 08:01 1234    /opt/my app/lib.so")
                .expect("parses");
        assert_eq!((m.lo, m.hi), (0x7f00a000, 0x7f00b000));
        assert_eq!(&m.perms, b"r-xp");
        assert_eq!(m.path(), "/opt/my app/lib.so");
        let anon = parse_maps_line(b"7f00a000-7f00b000 rw-p 00000000 00:00 0").expect("anon");
        assert_eq!(anon.path(), "");
    }

    #[test]
    fn this_threads_stack_pointer_lies_in_a_readable_writable_mapping() {
        let local = 0u64;
        let sp = std::ptr::addr_of!(local) as usize;
        let mut maps = Maps::default();
        maps.read();
        let (lo, hi) = maps.stack_range(sp).expect("a mapping holds the stack");
        assert!(lo <= sp && sp < hi);
    }

    #[test]
    fn the_task_listing_holds_this_thread_and_a_new_one() {
        // SAFETY: gettid takes no arguments.
        let me = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        let mut tasks = Tasks::default();
        let before = tasks.list().to_vec();
        assert!(before.contains(&me), "{before:?}");
        // A thread started after the first listing is in the next one (the stream is
        // rewound, not read to its old end).
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            // SAFETY: as above.
            let _ = tx.send(unsafe { libc::syscall(libc::SYS_gettid) } as u32);
            let _ = stop_rx.recv();
        });
        let theirs = rx.recv().expect("the thread's id");
        let listed = tasks.list().to_vec();
        let _ = stop_tx.send(());
        let _ = other.join();
        assert!(!before.contains(&theirs), "{before:?}");
        assert!(
            listed.contains(&me) && listed.contains(&theirs),
            "{listed:?}"
        );
        assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted: {listed:?}");
    }
}
