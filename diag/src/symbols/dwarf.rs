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
use std::io::Read;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, Unit};
use object::{CompressionFormat, Object, ObjectSection};

mod files;
mod pass;
mod walk;

use self::pass::Pass;

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

/// A reference attribute as a `.debug_info` offset: unit-relative (`DW_FORM_ref*`) or
/// section-relative (`DW_FORM_ref_addr`, into any unit).
fn reference(unit: &Unit<R<'_>>, value: AttributeValue<R<'_>>) -> Option<usize> {
    match value {
        AttributeValue::UnitRef(o) => o.to_debug_info_offset(&unit.header).map(|o| o.0),
        AttributeValue::DebugInfoRef(o) => Some(o.0),
        _ => None,
    }
}
