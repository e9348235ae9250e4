//! A heap profile, symbolized and ready to encode: profile.proto, folded stacks or a
//! flamegraph. Encoding is a pure function of the profile and what is passed in (the
//! mappings), so its output can be compared with golden files.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::dump::{Counts, Snapshot};
use super::frames::AllocatorFrames;
use super::unwinder::Unwinder;
use crate::flamegraph;
use crate::maps::ProcMapping;
use crate::proto::{self, ProfileBuilder};
use crate::symbols::{self, Resolved};
use crate::util::{unix_nanos, utc};

/// Which endpoint asked: they serve the same profile with a different default type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `/heap`: what is in use.
    Heap,
    /// `/allocs`: what was ever allocated.
    Allocs,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Heap => "heap",
            Self::Allocs => "allocs",
        }
    }

    pub(crate) fn default_sample_type(self) -> SampleType {
        match self {
            Self::Heap => SampleType::InuseSpace,
            Self::Allocs => SampleType::AllocSpace,
        }
    }
}

/// Go's heap sample types, in Go's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SampleType {
    AllocObjects,
    AllocSpace,
    InuseObjects,
    InuseSpace,
}

impl SampleType {
    /// Every type, in Go's order.
    pub(crate) const ALL: [Self; 4] = [
        Self::AllocObjects,
        Self::AllocSpace,
        Self::InuseObjects,
        Self::InuseSpace,
    ];

    /// Go's name for it (`sample_index=` takes it).
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::AllocObjects => "alloc_objects",
            Self::AllocSpace => "alloc_space",
            Self::InuseObjects => "inuse_objects",
            Self::InuseSpace => "inuse_space",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::AllocObjects | Self::InuseObjects => "count",
            Self::AllocSpace | Self::InuseSpace => "bytes",
        }
    }

    /// Whether it needs jemalloc's cumulative counts (`prof_accum`).
    pub(crate) fn is_cumulative(self) -> bool {
        matches!(self, Self::AllocObjects | Self::AllocSpace)
    }

    fn value(self, c: &Counts) -> i64 {
        match self {
            Self::AllocObjects => c.alloc_objects,
            Self::AllocSpace => c.alloc_bytes,
            Self::InuseObjects => c.inuse_objects,
            Self::InuseSpace => c.inuse_bytes,
        }
    }
}

/// What a heap profile is written as: the sampled profiles' formats.
pub(crate) use crate::flamegraph::Format;

/// A symbolized heap profile, ready to encode in any format.
#[derive(Debug)]
pub(crate) struct HeapProfile {
    /// Stacks (leaf first, allocator frames dropped) and their counts.
    pub(crate) stacks: Vec<(Vec<usize>, Counts)>,
    symbols: HashMap<usize, Resolved>,
    accum: bool,
    sample_period: u64,
    total: Counts,
    start: SystemTime,
    /// The window of a delta profile; `None` for the heap as it is.
    duration: Option<Duration>,
    pub(crate) ended_early: bool,
    /// Who unwinds jemalloc's samples (when the profile was asked for).
    pub(crate) unwinder: Unwinder,
}

/// When a profile was taken, over what window, and how it ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taken {
    pub(crate) start: SystemTime,
    /// The window of a delta profile; `None` for the heap as it is.
    pub(crate) duration: Option<Duration>,
    pub(crate) ended_early: bool,
}

impl HeapProfile {
    /// Symbolizes `snap` with this process's symbols.
    pub(crate) fn resolve(snap: Snapshot, accum: bool, taken: Taken, unwinder: Unwinder) -> Self {
        let symbols = symbols::resolve_all(snap.stacks.keys().flatten().copied());
        Self::from_parts(snap, symbols, accum, taken, unwinder)
    }

    /// The profile of `snap` with its addresses resolved by `symbols`: allocator frames
    /// dropped, stacks merged and sorted.
    pub(crate) fn from_parts(
        snap: Snapshot,
        mut symbols: HashMap<usize, Resolved>,
        accum: bool,
        taken: Taken,
        unwinder: Unwinder,
    ) -> Self {
        let mut merged: HashMap<Vec<usize>, Counts> = HashMap::with_capacity(snap.stacks.len());
        let mut allocator = AllocatorFrames::default();
        for (mut ips, counts) in snap.stacks {
            allocator.strip(&mut ips, &symbols);
            if !ips.is_empty() {
                *merged.entry(ips).or_default() += counts;
            }
        }
        allocator.apply(&mut symbols);
        let mut stacks: Vec<_> = merged.into_iter().collect();
        stacks.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            stacks,
            symbols,
            accum,
            sample_period: snap.sample_period,
            total: snap.total,
            start: taken.start,
            duration: taken.duration,
            ended_early: taken.ended_early,
            unwinder,
        }
    }

    /// The profile in `format`, `sample_type` its default or its weight, its locations
    /// attributed to `mappings`.
    pub(crate) fn encode(
        &self,
        format: Format,
        kind: Kind,
        sample_type: SampleType,
        mappings: Vec<ProcMapping>,
    ) -> std::io::Result<Vec<u8>> {
        match format {
            Format::Proto => self.to_proto(kind, sample_type, mappings),
            Format::Svg => self.to_svg(kind, sample_type),
            Format::Folded => Ok(self.to_folded(sample_type).join("\n").into_bytes()),
        }
    }

    fn subtitle(&self, sample_type: SampleType) -> String {
        let what = match self.duration {
            Some(d) => format!(
                "change over {:.1} s from {}{}",
                d.as_secs_f64(),
                utc(self.start),
                if self.ended_early {
                    ", ended early by shutdown"
                } else {
                    ""
                }
            ),
            None => format!("at {}", utc(self.start)),
        };
        format!(
            "{} {what}: {} in use in all, {} allocated ever{}; jemalloc samples \
             every {} KiB on average",
            sample_type.name(),
            human_bytes(self.total.inuse_bytes),
            human_bytes(self.total.alloc_bytes),
            if self.accum {
                ""
            } else {
                " (not kept: prof_accum is off)"
            },
            self.sample_period / 1024,
        )
    }

    /// gzipped profile.proto with Go's heap sample types (only the in-use pair without
    /// `prof_accum`), `sample_type` as the default.
    pub(crate) fn to_proto(
        &self,
        kind: Kind,
        sample_type: SampleType,
        mappings: Vec<ProcMapping>,
    ) -> std::io::Result<Vec<u8>> {
        let all = SampleType::ALL.map(|t| (t.name(), t.unit()));
        let types: &[(&str, &str)] = if self.accum { &all } else { &all[2..] };
        let mut b = ProfileBuilder::new(
            types,
            ("space", "bytes"),
            self.sample_period as i64,
            mappings,
        );
        b.time(
            unix_nanos(self.start),
            self.duration.map_or(0, |d| d.as_nanos() as i64),
        );
        b.comment(&format!(
            "diag {} profile from jemalloc: {}",
            kind.name(),
            self.subtitle(sample_type)
        ));
        b.comment(&self.unwinder.describe());
        b.default_sample_type(sample_type.name());
        for (ips, c) in &self.stacks {
            let locations = ips
                .iter()
                .map(|ip| b.location(*ip as u64, self.symbols.get(ip).map_or(&[][..], |l| &l[..])))
                .collect();
            let values = if self.accum {
                vec![
                    c.alloc_objects,
                    c.alloc_bytes,
                    c.inuse_objects,
                    c.inuse_bytes,
                ]
            } else {
                vec![c.inuse_objects, c.inuse_bytes]
            };
            b.sample(locations, values, &[]);
        }
        proto::gzip(&b.encode())
    }

    /// Collapsed stacks, root first, weighed by `sample_type`. Stacks whose value is zero
    /// or negative (memory freed during a delta window) are left out: the folded format
    /// and flamegraphs have no negative widths.
    pub(crate) fn to_folded(&self, sample_type: SampleType) -> Vec<String> {
        flamegraph::fold(
            self.stacks
                .iter()
                .map(|(ips, c)| ("", &ips[..], sample_type.value(c)))
                .filter(|(_, _, v)| *v > 0),
            &self.symbols,
        )
    }

    pub(crate) fn to_svg(&self, kind: Kind, sample_type: SampleType) -> std::io::Result<Vec<u8>> {
        let title = match kind {
            Kind::Heap => "Heap flamegraph",
            Kind::Allocs => "Allocations flamegraph",
        };
        let title = if self.duration.is_some() {
            format!("{title} (growth during the window)")
        } else {
            title.to_owned()
        };
        flamegraph::render(
            &self.to_folded(sample_type),
            &flamegraph::Labels {
                title: &title,
                subtitle: &self.subtitle(sample_type),
                count_name: match sample_type.unit() {
                    "bytes" => "bytes",
                    _ => "objects",
                },
            },
        )
    }
}

/// `1.5 MiB`-style sizes for titles.
pub(crate) fn human_bytes(b: i64) -> String {
    let mag = b.unsigned_abs() as f64;
    let sign = if b < 0 { "-" } else { "" };
    if mag >= (1u64 << 30) as f64 {
        format!("{sign}{:.1} GiB", mag / (1u64 << 30) as f64)
    } else if mag >= (1u64 << 20) as f64 {
        format!("{sign}{:.1} MiB", mag / (1u64 << 20) as f64)
    } else if mag >= 1024.0 {
        format!("{sign}{:.1} KiB", mag / 1024.0)
    } else {
        format!("{sign}{mag} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(-1536), "-1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
