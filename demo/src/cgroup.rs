//! The memory limit of the cgroup the process runs in (a container's limit), which sets
//! how much `/hold` may keep by default.

use crate::work::MAX_HELD_MB;

/// By default `/hold` keeps at most this fraction of the cgroup memory limit: one quarter
/// (`limit / HOLD_LIMIT_DIVISOR`). The rest is for the process itself and for diag: the
/// first CPU profile keeps ~200 MiB (docs/performance.md), so under the manifest's 512 MiB
/// limit a quarter (128 MiB) and a profile fit together, where a half could not.
pub(crate) const HOLD_LIMIT_DIVISOR: u64 = 4;

/// cgroup v2's limit file, then cgroup v1's, as seen from inside the process's cgroup
/// namespace (a container sees its own cgroup there).
const LIMIT_FILES: [&str; 2] = [
    "/sys/fs/cgroup/memory.max",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
];

/// The cgroup memory limit in bytes, or `None` when there is none (or no cgroup file).
pub(crate) fn memory_limit() -> Option<u64> {
    LIMIT_FILES
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| parse_limit(&text))
}

/// A limit file's content: `max` (v2) or a huge number (v1: `PAGE_COUNTER_MAX` pages,
/// 9223372036854771712 bytes with 4 KiB pages) mean no limit.
fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    let bytes: u64 = text.parse().ok()?;
    (bytes < 1 << 60).then_some(bytes)
}

/// The default cap of `/hold` in MiB, and a sentence saying where it comes from.
pub(crate) fn default_hold_cap() -> (usize, String) {
    hold_cap(memory_limit())
}

fn hold_cap(limit: Option<u64>) -> (usize, String) {
    match limit {
        Some(bytes) => {
            let mb = ((bytes / HOLD_LIMIT_DIVISOR) >> 20).clamp(1, MAX_HELD_MB as u64) as usize;
            (
                mb,
                format!(
                    "1/{HOLD_LIMIT_DIVISOR} of the cgroup memory limit ({} MiB), at most {MAX_HELD_MB}",
                    bytes >> 20
                ),
            )
        }
        None => (
            MAX_HELD_MB,
            format!("no cgroup memory limit: {MAX_HELD_MB} MiB"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_read_as_the_kernel_writes_them() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit("garbage"), None);
    }

    #[test]
    fn the_cap_is_a_quarter_of_the_limit() {
        assert_eq!(hold_cap(Some(512 << 20)).0, 128);
        assert_eq!(hold_cap(Some(64 << 30)).0, MAX_HELD_MB);
        assert_eq!(hold_cap(Some(1 << 20)).0, 1);
        assert_eq!(hold_cap(None).0, MAX_HELD_MB);
    }
}
