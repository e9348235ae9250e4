//! The process's executable mappings and their GNU build ids, for profile.proto's
//! `mapping` table (the first one is the main binary, as `go tool pprof` expects).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;

/// One executable mapping of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcMapping {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) offset: u64,
    pub(crate) path: String,
    pub(crate) build_id: String,
}

impl ProcMapping {
    /// A placeholder covering nothing, for profiles with no known mapping.
    pub(crate) fn unknown() -> Self {
        Self {
            start: 0,
            end: 0,
            offset: 0,
            path: String::new(),
            build_id: String::new(),
        }
    }
}

/// The executable mappings of this process, the main binary's first.
pub(crate) fn current() -> Vec<ProcMapping> {
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
        .unwrap_or_default();
    let mut maps: Vec<ProcMapping> = text.lines().filter_map(parse_line).collect();
    // Stable: keeps address order within each group.
    maps.sort_by_key(|m| m.path != exe);
    for m in &mut maps {
        m.build_id = build_id_cached(&m.path);
    }
    if maps.is_empty() {
        maps.push(ProcMapping::unknown());
    }
    maps
}

fn parse_line(line: &str) -> Option<ProcMapping> {
    // 55d4a1c00000-55d4a1e00000 r-xp 00002000 fe:00 247030   /usr/bin/cat
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    if !perms.contains('x') || path.is_empty() {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some(ProcMapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path,
        build_id: String::new(),
    })
}

fn build_id_cached(path: &str) -> String {
    static CACHE: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    if !path.starts_with('/') {
        return String::new(); // [vdso], [vsyscall] and the like
    }
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get_or_insert_with(HashMap::new)
        .entry(path.to_owned())
        .or_insert_with(|| build_id(path).unwrap_or_default())
        .clone()
}

/// Reads the GNU build id (`NT_GNU_BUILD_ID` note) of a 64-bit little-endian ELF file,
/// as lowercase hex.
pub(crate) fn build_id(path: &str) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut header = [0u8; 64];
    f.read_exact(&mut header).ok()?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None; // not ELF64 little-endian
    }
    let phoff = u64::from_le_bytes(header[0x20..0x28].try_into().ok()?);
    let phentsize = u64::from(u16::from_le_bytes(header[0x36..0x38].try_into().ok()?));
    let phnum = u64::from(u16::from_le_bytes(header[0x38..0x3a].try_into().ok()?));
    if phentsize < 56 || phnum > 4096 {
        return None;
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff + i * phentsize)).ok()?;
        f.read_exact(&mut ph).ok()?;
        let p_type = u32::from_le_bytes(ph[0..4].try_into().ok()?);
        if p_type != 4 {
            continue; // PT_NOTE only
        }
        let offset = u64::from_le_bytes(ph[8..16].try_into().ok()?);
        let size = u64::from_le_bytes(ph[32..40].try_into().ok()?);
        if size > 1 << 20 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(offset)).ok()?;
        f.read_exact(&mut notes).ok()?;
        if let Some(id) = find_build_id(&notes) {
            return Some(id);
        }
    }
    None
}

fn find_build_id(mut notes: &[u8]) -> Option<String> {
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let namesz = u32::from_le_bytes(notes[0..4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(notes[4..8].try_into().ok()?) as usize;
        let kind = u32::from_le_bytes(notes[8..12].try_into().ok()?);
        let name_end = 12 + align4(namesz);
        let desc_end = name_end + align4(descsz);
        if desc_end > notes.len() {
            return None;
        }
        if kind == 3 && notes[12..12 + namesz].starts_with(b"GNU") {
            let desc = &notes[name_end..name_end + descsz];
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = &notes[desc_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_lines_only() {
        let m =
            parse_line("55d4a1c00000-55d4a1e00000 r-xp 00002000 fe:00 247030   /usr/bin/my app")
                .expect("parsed");
        assert_eq!(m.start, 0x55d4a1c00000);
        assert_eq!(m.offset, 0x2000);
        assert_eq!(m.path, "/usr/bin/my app");
        assert!(parse_line("55d4a1c00000-55d4a1e00000 r--p 00000000 fe:00 1 /usr/bin/x").is_none());
        assert!(parse_line("7ffd-7ffe r-xp 00000000 00:00 0").is_none());
    }

    #[test]
    fn main_binary_comes_first_with_a_build_id() {
        let maps = current();
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(maps[0].path, exe.to_str().expect("utf-8 path"));
        // Debian's toolchain links with --build-id; a 20-byte SHA-1 is 40 hex digits.
        assert_eq!(maps[0].build_id.len(), 40, "{:?}", maps[0]);
    }
}
