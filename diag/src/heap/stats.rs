//! jemalloc's statistics: [`stats()`] for the application, and their text for
//! `/heap/stats`.

use std::fmt::Write as _;

use super::jemalloc::{allocator, read};
use super::profile::human_bytes;

/// jemalloc's statistics, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes allocated by the application (`stats.allocated`).
    pub allocated: u64,
    /// Bytes in active pages, a multiple of the page size (`stats.active`).
    pub active: u64,
    /// Bytes in physically resident data pages mapped by the allocator (`stats.resident`).
    pub resident: u64,
    /// Bytes in active extents mapped by the allocator (`stats.mapped`).
    pub mapped: u64,
    /// Bytes in virtual memory mappings kept for later reuse, not returned to the
    /// system (`stats.retained`).
    pub retained: u64,
    /// Bytes dedicated to jemalloc's own metadata (`stats.metadata`).
    pub metadata: u64,
}

impl Stats {
    /// `(name, help, value)` for each figure, in the order they are shown. More figures
    /// may come in later versions.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + use<> {
        [
            (
                "allocated",
                "Bytes allocated by the application (jemalloc stats.allocated)",
                self.allocated,
            ),
            (
                "active",
                "Bytes in pages holding application allocations (stats.active)",
                self.active,
            ),
            (
                "resident",
                "Bytes in resident pages mapped by the allocator (stats.resident)",
                self.resident,
            ),
            (
                "mapped",
                "Bytes in active extents mapped by the allocator (stats.mapped)",
                self.mapped,
            ),
            (
                "retained",
                "Bytes in mappings kept for reuse, not returned to the system (stats.retained)",
                self.retained,
            ),
            (
                "metadata",
                "Bytes of jemalloc's own metadata (stats.metadata)",
                self.metadata,
            ),
        ]
        .into_iter()
    }
}

/// Why jemalloc's statistics or heap profiles cannot be read in this process, with how to
/// make them readable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unavailable(String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// jemalloc's current statistics (after advancing its epoch, so they are fresh).
///
/// Fails, saying how to fix it, when jemalloc is not the global allocator or was built
/// without statistics; heap profiling need not be on.
///
/// ```no_run
/// match diag::heap::stats() {
///     Ok(s) => println!("{} bytes allocated, {} resident", s.allocated, s.resident),
///     Err(why) => eprintln!("no jemalloc statistics: {why}"),
/// }
/// ```
pub fn stats() -> Result<Stats, Unavailable> {
    allocator().map_err(Unavailable)?;
    let failed = |what: &str, e: tikv_jemalloc_ctl::Error| {
        Unavailable(format!("reading jemalloc's {what} failed: {e}"))
    };
    tikv_jemalloc_ctl::epoch::advance().map_err(|e| failed("epoch", e))?;
    let get = |name: &'static str| -> Result<u64, Unavailable> {
        read::<usize>(name)
            .map(|v| v as u64)
            .map_err(|e| failed(name.trim_end_matches('\0'), e))
    };
    Ok(Stats {
        allocated: get("stats.allocated\0")?,
        active: get("stats.active\0")?,
        resident: get("stats.resident\0")?,
        mapped: get("stats.mapped\0")?,
        retained: get("stats.retained\0")?,
        metadata: get("stats.metadata\0")?,
    })
}

/// How `/heap/stats` writes the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatsFormat {
    /// One aligned line per figure, with a readable size.
    Text,
    /// Prometheus's text exposition format: one gauge per figure.
    Prometheus,
}

/// The figures as `/heap/stats` answers them.
pub(crate) fn render(stats: &Stats, format: StatsFormat) -> String {
    let mut body = String::new();
    for (name, help, value) in stats.fields() {
        let _ = match format {
            StatsFormat::Prometheus => write!(
                body,
                "# HELP jemalloc_{name}_bytes {help}\n# TYPE jemalloc_{name}_bytes gauge\n\
                 jemalloc_{name}_bytes {value}\n"
            ),
            StatsFormat::Text => writeln!(
                body,
                "{name:<10} {value:>14} bytes  {}",
                human_bytes(value as i64)
            ),
        };
    }
    body
}
