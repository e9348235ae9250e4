//! One pass over the units that hold the addresses asked about: which unit holds each,
//! their line programs, and the names of the functions found (following references into
//! other units).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use gimli::{DebugInfoOffset, Unit, UnitHeader};

use super::files::Files;
use super::walk::Walk;
use super::{Error, Found, Frame, MAX_DEPTH, R, reference};

/// One pass: the unit headers, and what it parsed on the way (dropped with it).
pub(super) struct Pass<'a, 'd> {
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
    pub(super) fn new(dwarf: &'a gimli::Dwarf<R<'d>>) -> Result<Self, Error> {
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

    pub(super) fn run(mut self, addrs: &[u64]) -> Result<Vec<Vec<Frame>>, Error> {
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
            .map(|s| crate::symbols::demangle(&s))
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
