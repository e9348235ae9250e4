//! jemalloc's heap dump (`heap_v2`), read in full.
//!
//! ```text
//! heap_v2/524288                         2^lg_prof_sample
//!   t*: 28: 56637 [1306: 700111]         totals: in use [allocated ever]
//!   t0: 20: 40000 [900: 500000] name     per thread (not used here)
//! @ 0x55d0c8d8e81f 0x55d0c8d8e6a4 ...    one stack, leaf first (return addresses)
//!   t*: 13: 6688 [40: 19200]             its counts, same layout
//!   t3: 12: 6496 [38: 18000]             per thread (not used here)
//!
//! MAPPED_LIBRARIES:
//! ...                                    /proc/self/maps
//! ```
//! Counts are what was sampled, not yet scaled up to what was allocated: a reader
//! multiplies each pair by `1 / (1 - exp(-avg / period))`, `avg` being the pair's bytes per
//! object, as jeprof does and as Go's runtime does for its own heap samples (jemalloc's
//! `prof_unbias`, on by default, only makes the pairs fit that correction better when a
//! stack allocates objects of many sizes). The bracketed cumulative pair stays `[0: 0]`
//! unless `prof_accum` is on; jemalloc_pprof's parser drops it, which is why diag reads
//! dumps itself. The header's totals count only threads still alive, so totals are summed
//! from the stacks instead.

use std::collections::HashMap;
use std::ops::Sub;

/// What one stack (or the whole heap) holds and has allocated, as jemalloc estimates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) inuse_objects: i64,
    pub(crate) inuse_bytes: i64,
    pub(crate) alloc_objects: i64,
    pub(crate) alloc_bytes: i64,
}

impl Counts {
    fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The sampled counts scaled up to estimates of everything allocated.
    fn unsampled(self, period: u64) -> Self {
        let (inuse_objects, inuse_bytes) = unsample(self.inuse_objects, self.inuse_bytes, period);
        let (alloc_objects, alloc_bytes) = unsample(self.alloc_objects, self.alloc_bytes, period);
        Self {
            inuse_objects,
            inuse_bytes,
            alloc_objects,
            alloc_bytes,
        }
    }
}

/// Scales one sampled `(objects, bytes)` pair by the inverse of the chance that an object
/// of its average size is sampled when one sample is taken per `period` bytes on average.
fn unsample(objects: i64, bytes: i64, period: u64) -> (i64, i64) {
    if objects <= 0 || bytes <= 0 || period <= 1 {
        return (objects, bytes);
    }
    let avg = bytes as f64 / objects as f64;
    let scale = 1.0 / (1.0 - (-avg / period as f64).exp());
    (
        (objects as f64 * scale).round() as i64,
        (bytes as f64 * scale).round() as i64,
    )
}

impl Sub for Counts {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            inuse_objects: self.inuse_objects - o.inuse_objects,
            inuse_bytes: self.inuse_bytes - o.inuse_bytes,
            alloc_objects: self.alloc_objects - o.alloc_objects,
            alloc_bytes: self.alloc_bytes - o.alloc_bytes,
        }
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Self) {
        self.inuse_objects += o.inuse_objects;
        self.inuse_bytes += o.inuse_bytes;
        self.alloc_objects += o.alloc_objects;
        self.alloc_bytes += o.alloc_bytes;
    }
}

/// One parsed heap dump.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Average bytes between samples.
    pub(crate) sample_period: u64,
    /// The whole heap's counts (the sum over stacks).
    pub(crate) total: Counts,
    /// Counts per stack of return addresses, leaf first.
    pub(crate) stacks: HashMap<Vec<usize>, Counts>,
}

/// Parses a `heap_v2` dump; the error says what was malformed and where.
pub(crate) fn parse(text: &str) -> Result<Snapshot, String> {
    let mut lines = text.lines().enumerate();
    let header = lines
        .by_ref()
        .map(|(_, l)| l.trim())
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let period = header
        .strip_prefix("heap_v2/")
        .and_then(|p| p.trim().parse::<u64>().ok())
        .ok_or_else(|| format!("not a jemalloc heap_v2 dump: first line {header:?}"))?;
    let mut snap = Snapshot {
        sample_period: period,
        ..Snapshot::default()
    };
    let mut current: Option<Vec<usize>> = None;
    let mut seen_stack = false;
    for (n, line) in lines {
        let line = line.trim();
        let bad = |what: &str| format!("heap dump line {}: {what}: {line:?}", n + 1);
        if line == "MAPPED_LIBRARIES:" {
            break;
        }
        if let Some(rest) = line.strip_prefix('@') {
            let stack = rest
                .split_ascii_whitespace()
                .map(|w| {
                    w.strip_prefix("0x")
                        .and_then(|h| usize::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| bad("a stack address is not hexadecimal"))?;
            current = Some(stack);
            seen_stack = true;
        } else if let Some(rest) = line.strip_prefix("t*:") {
            let counts = parse_counts(rest).ok_or_else(|| bad("malformed counts"))?;
            match current.take() {
                Some(stack) => {
                    let counts = counts.unsampled(period);
                    snap.total += counts;
                    *snap.stacks.entry(stack).or_default() += counts;
                }
                // The header's totals (see the module's notes).
                None if !seen_stack => {}
                None => return Err(bad("counts without a stack")),
            }
        }
        // Per-thread lines (`t3: ...`) and blank lines carry nothing used here.
    }
    Ok(snap)
}

/// `" 13: 6688 [40: 19200]"` (and a thread name after it, ignored).
fn parse_counts(s: &str) -> Option<Counts> {
    let mut nums = s
        .split(|c: char| c == ':' || c == '[' || c == ']' || c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse::<i64>().ok());
    let mut next = || nums.next().flatten();
    Some(Counts {
        inuse_objects: next()?,
        inuse_bytes: next()?,
        alloc_objects: next()?,
        alloc_bytes: next()?,
    })
}

/// Per stack, `end` minus `start`, negative values kept; stacks whose counts did not move
/// are left out.
pub(crate) fn delta(start: &Snapshot, end: Snapshot) -> Snapshot {
    let mut stacks: HashMap<Vec<usize>, Counts> = HashMap::with_capacity(end.stacks.len());
    for (stack, counts) in &start.stacks {
        if !end.stacks.contains_key(stack) {
            // Gone from the end dump: everything it held was freed (and its cumulative
            // counts went with it, which jemalloc does only when it recycles a stack).
            stacks.insert(stack.clone(), Counts::default() - *counts);
        }
    }
    for (stack, counts) in end.stacks {
        let before = start.stacks.get(&stack).copied().unwrap_or_default();
        stacks.insert(stack, counts - before);
    }
    stacks.retain(|_, c| !c.is_zero());
    Snapshot {
        sample_period: end.sample_period,
        total: end.total - start.total,
        stacks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "heap_v2/524288
  t*: 3: 3145728 [10: 5242880]
  t0: 3: 3145728 [10: 5242880] main
  t1: 0: 0 [0: 0]
@ 0x10 0x20 0x30
  t*: 2: 2097152 [4: 4194304]
  t0: 2: 2097152 [4: 4194304]
@ 0x11 0x30
  t*: 1: 1048576 [6: 1048576]

MAPPED_LIBRARIES:
55d0c8a00000-55d0c8b00000 r-xp 00000000 fe:00 1   /bin/demo
@ 0x99 not a stack
";

    #[test]
    fn reads_every_count_and_stops_at_the_maps() {
        let s = parse(DUMP).expect("parsed");
        assert_eq!(s.sample_period, 524_288);
        assert_eq!(s.stacks.len(), 2);
        // 1 MiB objects at a 512 KiB period are sampled with chance 1 - e^-2: 2 sampled
        // stand for 2.31, and their bytes likewise.
        let big = s.stacks[&vec![0x10, 0x20, 0x30]];
        assert_eq!(big.inuse_objects, 2);
        assert_eq!(big.inuse_bytes, 2_425_393);
        assert_eq!(big.alloc_objects, 5);
        assert_eq!(big.alloc_bytes, 4_850_787);
        // 6 objects of 170.7 KiB on average: each sampled with chance 0.28.
        let small = s.stacks[&vec![0x11, 0x30]];
        assert_eq!(small.alloc_objects, 21);
        assert_eq!(small.alloc_bytes, 3_699_089);
        // Totals are the stacks' sum, not the header's.
        assert_eq!(
            s.total.inuse_objects,
            big.inuse_objects + small.inuse_objects
        );
        assert_eq!(s.total.alloc_bytes, big.alloc_bytes + small.alloc_bytes);
    }

    #[test]
    fn small_objects_scale_up_by_their_rarity() {
        // 1000 sampled 64-byte objects at 512 KiB: each stands for ~8192.
        let (objs, bytes) = unsample(1000, 64_000, 524_288);
        assert!((8_191_000..8_194_000).contains(&objs), "{objs}");
        assert!((bytes - objs * 64).abs() <= 64, "{bytes}");
        assert_eq!(unsample(0, 0, 524_288), (0, 0));
    }

    #[test]
    fn malformed_dumps_say_where() {
        assert!(
            parse("")
                .unwrap_err()
                .contains("not a jemalloc heap_v2 dump")
        );
        assert!(parse("heap_v1/4\n").is_err());
        let e = parse("heap_v2/8\n@ 0x1 zz\n  t*: 1: 8 [1: 8]\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = parse("heap_v2/8\n@ 0x1\n  t*: 1: x [1: 8]\n").unwrap_err();
        assert!(e.contains("malformed counts"), "{e}");
    }

    #[test]
    fn delta_keeps_negatives_and_drops_unchanged() {
        let start = parse(DUMP).expect("parsed");
        let end = parse(
            "heap_v2/524288
  t*: 3: 4194304 [14: 9437184]
@ 0x10 0x20 0x30
  t*: 2: 2097152 [4: 4194304]
@ 0x12 0x30
  t*: 3: 4194304 [8: 5242880]
",
        )
        .expect("parsed");
        let d = delta(&start, end);
        // Unchanged: gone. Grew: kept. Freed: negative.
        assert!(
            !d.stacks.contains_key(&vec![0x10, 0x20, 0x30]),
            "{:?}",
            d.stacks
        );
        let grew = d.stacks[&vec![0x12, 0x30]];
        assert!(grew.inuse_bytes > 4_194_304, "{grew:?}");
        let freed = d.stacks[&vec![0x11, 0x30]];
        assert_eq!(
            freed.inuse_bytes,
            -start.stacks[&vec![0x11, 0x30]].inuse_bytes
        );
        assert_eq!(
            freed.alloc_objects,
            -start.stacks[&vec![0x11, 0x30]].alloc_objects
        );
        assert_eq!(d.total.inuse_bytes, grew.inuse_bytes + freed.inuse_bytes);
    }
}
