//! Symbolization with a cache that lives across profiles.
//!
//! The first profile pays for reading debug info (backtrace's own cache of parsed DWARF
//! stays resident afterwards); every later one finds most addresses here.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use crate::proto::Line;

/// Source lines per code address, innermost first.
pub(crate) type Resolved = Arc<[Line]>;

static CACHE: Mutex<Option<HashMap<usize, Resolved>>> = Mutex::new(None);

/// Resolves every address in `ips` (through the cache) and returns them in a map.
pub(crate) fn resolve_all(ips: impl IntoIterator<Item = usize>) -> HashMap<usize, Resolved> {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    let mut out = HashMap::new();
    for ip in ips {
        if out.contains_key(&ip) {
            continue;
        }
        let lines = cache.entry(ip).or_insert_with(|| resolve(ip)).clone();
        out.insert(ip, lines);
    }
    out
}

/// Resolves one address without the cache; an unknown address gets its hex as its name.
pub(crate) fn resolve(ip: usize) -> Resolved {
    let mut lines = Vec::new();
    // `backtrace::resolve` treats the address as a return address (it looks up ip - 1),
    // which is right for every frame but the interrupted one, where it still lands in the
    // same function.
    backtrace::resolve(ip as *mut c_void, |sym| {
        let function = match sym.name() {
            // `{:#}` demangles without the trailing hash.
            Some(name) => format!("{name:#}"),
            None => format!("{ip:#x}"),
        };
        let file = sym
            .filename()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        lines.push(Line {
            function,
            file,
            line: sym.lineno().unwrap_or(0),
        });
    });
    if lines.is_empty() {
        lines.push(Line {
            function: format!("{ip:#x}"),
            file: String::new(),
            line: 0,
        });
    }
    lines.into()
}
