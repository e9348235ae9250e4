//! The file paths of a unit's line program.

use std::collections::HashMap;

use gimli::Unit;

use super::R;

/// File paths of one unit's line program, rendered once each.
#[derive(Default)]
pub(super) struct Files {
    paths: HashMap<u64, String>,
}

impl Files {
    /// The path of file `index` of `unit`'s line program: the compilation directory, the
    /// file's directory and its name joined (an absolute part replaces what is before it).
    pub(super) fn path(
        &mut self,
        dwarf: &gimli::Dwarf<R<'_>>,
        unit: &Unit<R<'_>>,
        index: u64,
    ) -> String {
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
