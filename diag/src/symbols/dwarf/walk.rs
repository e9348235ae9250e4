//! The walk over one unit's entries: the subprograms and inlined calls that hold the
//! addresses asked about.

use gimli::{AttributeValue, EntriesTreeNode, Unit};

use super::files::Files;
use super::{Error, Found, Inlined, MAX_DEPTH, R};

/// The walk over one unit's entries.
pub(super) struct Walk<'w, 'a, 'd> {
    pub(super) dwarf: &'a gimli::Dwarf<R<'d>>,
    pub(super) unit: &'w Unit<R<'d>>,
    pub(super) addrs: &'w [u64],
    pub(super) found: &'w mut [Found],
    pub(super) files: &'w mut Files,
}

impl Walk<'_, '_, '_> {
    /// Visits the children of `node` for the addresses `inside` (indices, in address
    /// order) that its range holds.
    pub(super) fn children(
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
