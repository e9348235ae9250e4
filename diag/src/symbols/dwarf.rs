//! Source lines and inlined frames from DWARF, in one pass that keeps nothing.
//!
//! A pass reads only the compilation units that hold the addresses asked about: units
//! named by `.debug_aranges`, and for the others (most of a Rust program's units have no
//! aranges) the ranges of each unit's root entry (`DW_AT_low_pc`/`DW_AT_high_pc` or
//! `DW_AT_ranges`). In each unit it runs the line program once, walks the entries for the
//! subprograms and inlined subroutines that contain the addresses, and follows references
//! into other units (`DW_FORM_ref_addr` abstract origins) to name inlined functions.
//! Everything it parsed is dropped when it returns.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::rc::Rc;

use gimli::{
    AttributeValue, DebugInfoOffset, EndianSlice, EntriesTreeNode, RunTimeEndian, Unit, UnitHeader,
};
use object::{CompressionFormat, Object, ObjectSection};

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// Nesting deeper than this is not followed (entries, or references between them).
const MAX_DEPTH: usize = 64;

/// Why a pass found nothing.
#[derive(Debug)]
pub(crate) enum Error {
    /// The DWARF is malformed or uses a form this reader does not handle.
    Dwarf(gimli::Error),
    /// A section could not be read or decompressed.
    Section(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Dwarf(e) => write!(f, "reading DWARF: {e}"),
            Error::Section(e) => write!(f, "reading a debug section: {e}"),
        }
    }
}

impl From<gimli::Error> for Error {
    fn from(e: gimli::Error) -> Self {
        Error::Dwarf(e)
    }
}

/// One source position of an address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The function's name from DWARF (the linkage name demangled when there is one, else
    /// the short name); `None` when DWARF does not say.
    pub(crate) function: Option<String>,
    /// The source file, empty when unknown.
    pub(crate) file: String,
    /// The line, 0 when unknown.
    pub(crate) line: u32,
}

/// For each address of `addrs` (sorted, unique, in the file's address space), its frames
/// innermost first: one per inlined call and last the function the code belongs to.
/// Empty for an address no unit covers.
pub(crate) fn frames(file: &object::File<'_>, addrs: &[u64]) -> Result<Vec<Vec<Frame>>, Error> {
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let sections = gimli::DwarfSections::load(|id| load_section(file, id))?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
    Pass::new(&dwarf)?.run(addrs)
}

/// The bytes of one debug section: borrowed from the mapping, or inflated when the
/// section is zlib-compressed (`SHF_COMPRESSED` or `.zdebug_*`). Sections a pass never
/// reads come back empty.
fn load_section<'d>(file: &object::File<'d>, id: gimli::SectionId) -> Result<Cow<'d, [u8]>, Error> {
    use gimli::SectionId::*;
    if !matches!(
        id,
        DebugAbbrev
            | DebugAddr
            | DebugAranges
            | DebugInfo
            | DebugLine
            | DebugLineStr
            | DebugStr
            | DebugStrOffsets
            | DebugRanges
            | DebugRngLists
    ) {
        return Ok(Cow::Borrowed(&[]));
    }
    let Some(section) = file.section_by_name(id.name()) else {
        return Ok(Cow::Borrowed(&[]));
    };
    let compressed = section
        .compressed_data()
        .map_err(|e| Error::Section(format!("{}: {e}", id.name())))?;
    match compressed.format {
        CompressionFormat::None => Ok(Cow::Borrowed(compressed.data)),
        CompressionFormat::Zlib => {
            // The declared size is only a hint: never reserve more than the input could
            // inflate to at zlib's best ratio.
            let hint = (compressed.uncompressed_size as usize).min(compressed.data.len() * 1032);
            let mut out = Vec::with_capacity(hint);
            flate2::read::ZlibDecoder::new(compressed.data)
                .read_to_end(&mut out)
                .map_err(|e| Error::Section(format!("{}: {e}", id.name())))?;
            Ok(Cow::Owned(out))
        }
        // zstd-compressed debug info: names still come from the symbol table.
        other => Err(Error::Section(format!(
            "{} is compressed with {other:?}, which this reader does not inflate",
            id.name()
        ))),
    }
}

/// What a pass found for one address while walking its unit.
#[derive(Debug, Default)]
struct Found {
    /// The file and line of the address itself (from the line program).
    file: String,
    line: u32,
    /// The subprogram holding it (a `.debug_info` offset).
    subprogram: Option<usize>,
    /// The inlined calls around it, outermost first.
    inlined: Vec<Inlined>,
}

/// One inlined call: the inlined subroutine's entry and where it was called from.
#[derive(Debug)]
struct Inlined {
    entry: usize,
    call_file: String,
    call_line: u32,
}

/// One pass: the unit headers, and what it parsed on the way (dropped with it).
struct Pass<'a, 'd> {
    dwarf: &'a gimli::Dwarf<R<'d>>,
    /// Every unit header, in `.debug_info` order.
    headers: Vec<UnitHeader<R<'d>>>,
    /// Units parsed for this pass, by `.debug_info` offset.
    units: HashMap<usize, Rc<Unit<R<'d>>>>,
    /// Names of entries looked up, by `.debug_info` offset.
    names: HashMap<usize, Option<String>>,
}

/// A unit's offset in `.debug_info`.
fn unit_offset(header: &UnitHeader<R<'_>>) -> Option<usize> {
    header.offset().as_debug_info_offset().map(|o| o.0)
}

impl<'a, 'd> Pass<'a, 'd> {
    fn new(dwarf: &'a gimli::Dwarf<R<'d>>) -> Result<Self, Error> {
        let mut headers = Vec::new();
        let mut iter = dwarf.units();
        while let Some(header) = iter.next()? {
            headers.push(header);
        }
        Ok(Self {
            dwarf,
            headers,
            units: HashMap::new(),
            names: HashMap::new(),
        })
    }

    fn run(mut self, addrs: &[u64]) -> Result<Vec<Vec<Frame>>, Error> {
        let owners = self.owners(addrs)?;
        // Addresses (indices into `addrs`, in address order) per unit.
        let mut by_unit: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, owner) in owners.iter().enumerate() {
            if let Some(unit) = owner {
                by_unit.entry(*unit).or_default().push(i);
            }
        }
        let mut out: Vec<Vec<Frame>> = (0..addrs.len()).map(|_| Vec::new()).collect();
        for (offset, indices) in by_unit {
            let Some(unit) = self.unit(offset) else {
                continue;
            };
            let unit_addrs: Vec<u64> = indices.iter().map(|&i| addrs[i]).collect();
            let found = self.in_unit(&unit, &unit_addrs)?;
            for (i, f) in indices.into_iter().zip(found) {
                out[i] = self.frames_of(f);
            }
            // Units parsed for this one (and those its references led to) go now: a pass
            // over many units holds one unit's worth at a time, plus the names found.
            self.units.clear();
        }
        Ok(out)
    }

    /// The unit (its `.debug_info` offset) holding each address, if any.
    fn owners(&self, addrs: &[u64]) -> Result<Vec<Option<usize>>, Error> {
        let mut owners: Vec<Option<usize>> = vec![None; addrs.len()];
        let mut left = addrs.len();
        // Gives the addresses in [begin, end) without a unit to `unit`; returns how many.
        let assign = |owners: &mut [Option<usize>], begin: u64, end: u64, unit: usize| {
            if begin == 0 || begin >= end {
                return 0; // code removed by the linker keeps address 0 (or a tombstone)
            }
            let first = addrs.partition_point(|a| *a < begin);
            let last = addrs.partition_point(|a| *a < end);
            let mut n = 0;
            for owner in &mut owners[first..last] {
                if owner.is_none() {
                    *owner = Some(unit);
                    n += 1;
                }
            }
            n
        };
        let mut with_aranges = HashSet::new();
        let mut sets = self.dwarf.debug_aranges.headers();
        while let Some(set) = sets.next()? {
            let unit = set.debug_info_offset().0;
            with_aranges.insert(unit);
            let mut entries = set.entries();
            while let Some(entry) = entries.next()? {
                let r = entry.range();
                left -= assign(&mut owners, r.begin, r.end, unit);
            }
        }
        // Units without aranges: their root entry's ranges.
        for header in &self.headers {
            if left == 0 {
                break;
            }
            let Some(offset) = unit_offset(header) else {
                continue;
            };
            if with_aranges.contains(&offset) {
                continue;
            }
            let unit = self.dwarf.unit(*header)?;
            let mut ranges = self.dwarf.unit_ranges(&unit)?;
            while let Some(r) = ranges.next()? {
                left -= assign(&mut owners, r.begin, r.end, offset);
            }
        }
        Ok(owners)
    }

    /// The unit at `.debug_info` offset `offset`, parsed once per pass.
    fn unit(&mut self, offset: usize) -> Option<Rc<Unit<R<'d>>>> {
        if let Some(unit) = self.units.get(&offset) {
            return Some(unit.clone());
        }
        let i = self
            .headers
            .binary_search_by_key(&Some(offset), unit_offset)
            .ok()?;
        let unit = Rc::new(self.dwarf.unit(self.headers[i]).ok()?);
        self.units.insert(offset, unit.clone());
        Some(unit)
    }

    /// The unit holding the entry at `.debug_info` offset `entry`.
    fn unit_holding(&mut self, entry: usize) -> Option<Rc<Unit<R<'d>>>> {
        let i = self
            .headers
            .partition_point(|h| unit_offset(h).is_some_and(|o| o <= entry));
        let header = self.headers.get(i.checked_sub(1)?)?;
        let start = unit_offset(header)?;
        if entry >= start + header.length_including_self() {
            return None;
        }
        self.unit(start)
    }

    /// Lines and inlined calls of `addrs` (sorted), all in `unit`.
    fn in_unit(&mut self, unit: &Unit<R<'d>>, addrs: &[u64]) -> Result<Vec<Found>, Error> {
        let mut found: Vec<Found> = (0..addrs.len()).map(|_| Found::default()).collect();
        let mut files = Files::default();
        // The line program: each row covers the addresses up to the next row.
        if let Some(program) = unit.line_program.clone() {
            let mut rows = program.rows();
            let mut prev: Option<(u64, u64, u32)> = None; // address, file, line
            let mut sequence_start = 0;
            let mut located = vec![(0u64, 0u32); addrs.len()];
            let mut has = vec![false; addrs.len()];
            while let Some((_, row)) = rows.next_row()? {
                if let Some((start, file, line)) = prev {
                    let end = row.address();
                    if sequence_start != 0 && start < end {
                        let first = addrs.partition_point(|a| *a < start);
                        let last = addrs.partition_point(|a| *a < end);
                        for i in first..last {
                            if !has[i] {
                                located[i] = (file, line);
                                has[i] = true;
                            }
                        }
                    }
                }
                if row.end_sequence() {
                    prev = None;
                } else {
                    if prev.is_none() {
                        sequence_start = row.address();
                    }
                    let line = row
                        .line()
                        .map_or(0, |l| u32::try_from(l.get()).unwrap_or(0));
                    prev = Some((row.address(), row.file_index(), line));
                }
            }
            for (i, f) in found.iter_mut().enumerate() {
                if has[i] {
                    f.file = files.path(self.dwarf, unit, located[i].0);
                    f.line = located[i].1;
                }
            }
        }
        // The entries: subprograms and the inlined calls inside them.
        let all: Vec<usize> = (0..addrs.len()).collect();
        let mut tree = unit.entries_tree(None)?;
        let root = tree.root()?;
        let mut walk = Walk {
            dwarf: self.dwarf,
            unit,
            addrs,
            found: &mut found,
            files: &mut files,
        };
        walk.children(root, &all, 0)?;
        Ok(found)
    }

    /// The frames of one address, innermost first, naming each function.
    fn frames_of(&mut self, f: Found) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(f.inlined.len() + 1);
        let (mut file, mut line) = (f.file, f.line);
        for call in f.inlined.into_iter().rev() {
            frames.push(Frame {
                function: self.name(call.entry, 0),
                file,
                line,
            });
            file = call.call_file;
            line = call.call_line;
        }
        frames.push(Frame {
            function: f.subprogram.and_then(|s| self.name(s, 0)),
            file,
            line,
        });
        frames
    }

    /// The name of the entry at `.debug_info` offset `entry`: its linkage name demangled,
    /// else its name, else the name of its abstract origin or specification, which may
    /// live in another unit.
    fn name(&mut self, entry: usize, depth: usize) -> Option<String> {
        if let Some(name) = self.names.get(&entry) {
            return name.clone();
        }
        if depth > MAX_DEPTH {
            return None;
        }
        let unit = self.unit_holding(entry)?;
        let offset = DebugInfoOffset(entry).to_unit_offset(&unit.header)?;
        let die = unit.entry(offset).ok()?;
        let dwarf = self.dwarf;
        let string = |attr: gimli::DwAt| -> Option<String> {
            let value = die.attr_value(attr).ok()??;
            let s = dwarf.attr_string(&unit, value).ok()?;
            Some(s.to_string_lossy().into_owned())
        };
        let name = string(gimli::DW_AT_linkage_name)
            .or_else(|| string(gimli::DW_AT_MIPS_linkage_name))
            .map(|s| super::demangle(&s))
            .or_else(|| string(gimli::DW_AT_name));
        let name = match name {
            Some(name) => Some(name),
            None => {
                let target = [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification]
                    .into_iter()
                    .find_map(|attr| reference(&unit, die.attr_value(attr).ok()??));
                match target {
                    Some(target) if target != entry => self.name(target, depth + 1),
                    _ => None,
                }
            }
        };
        self.names.insert(entry, name.clone());
        name
    }
}

/// A reference attribute as a `.debug_info` offset: unit-relative (`DW_FORM_ref*`) or
/// section-relative (`DW_FORM_ref_addr`, into any unit).
fn reference(unit: &Unit<R<'_>>, value: AttributeValue<R<'_>>) -> Option<usize> {
    match value {
        AttributeValue::UnitRef(o) => o.to_debug_info_offset(&unit.header).map(|o| o.0),
        AttributeValue::DebugInfoRef(o) => Some(o.0),
        _ => None,
    }
}

/// File paths of one unit's line program, rendered once each.
#[derive(Default)]
struct Files {
    paths: HashMap<u64, String>,
}

impl Files {
    /// The path of file `index` of `unit`'s line program: the compilation directory, the
    /// file's directory and its name joined (an absolute part replaces what is before it).
    fn path(&mut self, dwarf: &gimli::Dwarf<R<'_>>, unit: &Unit<R<'_>>, index: u64) -> String {
        self.paths
            .entry(index)
            .or_insert_with(|| render(dwarf, unit, index).unwrap_or_default())
            .clone()
    }
}

fn render(dwarf: &gimli::Dwarf<R<'_>>, unit: &Unit<R<'_>>, index: u64) -> Option<String> {
    let header = unit.line_program.as_ref()?.header();
    let file = header.file(index)?;
    let mut path = unit
        .comp_dir
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Directory 0 is the compilation directory itself.
    if file.directory_index() != 0 {
        if let Some(dir) = file.directory(header) {
            let dir = dwarf.attr_string(unit, dir).ok()?;
            push_path(&mut path, &dir.to_string_lossy());
        }
    }
    let name = dwarf.attr_string(unit, file.path_name()).ok()?;
    push_path(&mut path, &name.to_string_lossy());
    Some(path)
}

fn push_path(path: &mut String, part: &str) {
    if part.starts_with('/') || path.is_empty() {
        *path = part.to_owned();
    } else {
        if !path.ends_with('/') {
            path.push('/');
        }
        path.push_str(part);
    }
}

/// The walk over one unit's entries.
struct Walk<'w, 'a, 'd> {
    dwarf: &'a gimli::Dwarf<R<'d>>,
    unit: &'w Unit<R<'d>>,
    addrs: &'w [u64],
    found: &'w mut [Found],
    files: &'w mut Files,
}

impl Walk<'_, '_, '_> {
    /// Visits the children of `node` for the addresses `inside` (indices, in address
    /// order) that its range holds.
    fn children(
        &mut self,
        node: EntriesTreeNode<'_, '_, '_, R<'_>>,
        inside: &[usize],
        depth: usize,
    ) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        let mut children = node.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            match entry.tag() {
                gimli::DW_TAG_subprogram | gimli::DW_TAG_inlined_subroutine => {
                    let hits = self.hits(entry, inside)?;
                    if hits.is_empty() {
                        continue;
                    }
                    let offset = entry
                        .offset()
                        .to_debug_info_offset(&self.unit.header)
                        .map(|o| o.0);
                    if entry.tag() == gimli::DW_TAG_subprogram {
                        for &i in &hits {
                            self.found[i].subprogram = offset;
                            self.found[i].inlined.clear();
                        }
                    } else if let Some(offset) = offset {
                        let call_file = match entry.attr_value(gimli::DW_AT_call_file)? {
                            Some(AttributeValue::FileIndex(f) | AttributeValue::Udata(f)) => {
                                self.files.path(self.dwarf, self.unit, f)
                            }
                            _ => String::new(),
                        };
                        let call_line = match entry.attr_value(gimli::DW_AT_call_line)? {
                            Some(v) => v.udata_value().and_then(|l| u32::try_from(l).ok()),
                            None => None,
                        }
                        .unwrap_or(0);
                        for &i in &hits {
                            self.found[i].inlined.push(Inlined {
                                entry: offset,
                                call_file: call_file.clone(),
                                call_line,
                            });
                        }
                    }
                    self.children(child, &hits, depth + 1)?;
                }
                // Code lives in subprograms, which sit in namespaces (Rust's modules and
                // impls) and hold lexical blocks; types only declare their methods (the
                // definitions point back with DW_AT_specification), so they are skipped.
                gimli::DW_TAG_namespace | gimli::DW_TAG_lexical_block => {
                    self.children(child, inside, depth + 1)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The addresses of `inside` that `entry`'s ranges hold.
    fn hits(
        &self,
        entry: &gimli::DebuggingInformationEntry<'_, '_, R<'_>>,
        inside: &[usize],
    ) -> Result<Vec<usize>, Error> {
        let mut hits = Vec::new();
        let mut ranges = self.dwarf.die_ranges(self.unit, entry)?;
        while let Some(r) = ranges.next()? {
            if r.begin == 0 || r.begin >= r.end {
                continue;
            }
            let first = inside.partition_point(|&i| self.addrs[i] < r.begin);
            let last = inside.partition_point(|&i| self.addrs[i] < r.end);
            hits.extend_from_slice(&inside[first..last]);
        }
        if hits.len() > 1 {
            hits.sort_unstable();
            hits.dedup();
        }
        Ok(hits)
    }
}
