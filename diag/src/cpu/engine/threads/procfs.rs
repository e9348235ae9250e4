//! Reading `/proc/self/maps` and listing `/proc/self/task` for the sampler threads (the
//! engine's and the wall profile's), into buffers kept between readings: they do it every
//! 100 to 250 milliseconds for as long as anything samples.

use super::{EXEC, ExecTable};

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
