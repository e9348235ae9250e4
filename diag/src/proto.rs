//! profile.proto, built and encoded by hand (the format is small and stable), gzipped as
//! Go serves it.
//!
//! What a producer must get right (google/pprof `proto/profile.proto`): `string_table[0]`
//! is `""`; mapping, location and function ids start at 1 and are unique; every location
//! names an existing mapping; every sample has one value per sample type, leaf first;
//! inlined frames are several lines of one location, innermost first; `mapping[0]` is the
//! main binary.

use std::collections::HashMap;
use std::io::Write;

use crate::maps::ProcMapping;

/// One source line of a location; several for inlined calls, innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Line {
    pub(crate) function: String,
    pub(crate) file: String,
    pub(crate) line: u32,
}

#[derive(Debug)]
struct Location {
    id: u64,
    mapping_id: u64,
    address: u64,
    lines: Vec<(u64, i64)>,
}

#[derive(Debug)]
struct Sample {
    locations: Vec<u64>,
    values: Vec<i64>,
    labels: Vec<(i64, i64)>,
}

/// Accumulates one profile: interned strings, functions, locations, mappings, samples.
#[derive(Debug)]
pub(crate) struct ProfileBuilder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<(u64, i64, i64)>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<u64, u64>,
    mappings: Vec<ProcMapping>,
    samples: Vec<Sample>,
    sample_types: Vec<(i64, i64)>,
    period_type: (i64, i64),
    period: i64,
    time_nanos: i64,
    duration_nanos: i64,
    comments: Vec<i64>,
    default_sample_type: i64,
}

impl ProfileBuilder {
    /// A profile with these `(type, unit)` sample types and this period.
    pub(crate) fn new(
        sample_types: &[(&str, &str)],
        period_type: (&str, &str),
        period: i64,
        mappings: Vec<ProcMapping>,
    ) -> Self {
        let mut b = Self {
            strings: vec![String::new()],
            string_ids: HashMap::from([(String::new(), 0)]),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            mappings,
            samples: Vec::new(),
            sample_types: Vec::new(),
            period_type: (0, 0),
            period,
            time_nanos: 0,
            duration_nanos: 0,
            comments: Vec::new(),
            default_sample_type: 0,
        };
        b.sample_types = sample_types
            .iter()
            .map(|(t, u)| (b.string(t), b.string(u)))
            .collect();
        b.period_type = (b.string(period_type.0), b.string(period_type.1));
        b
    }

    /// When the profile was taken (Unix nanoseconds) and how long it covers.
    pub(crate) fn time(&mut self, time_nanos: i64, duration_nanos: i64) -> &mut Self {
        self.time_nanos = time_nanos;
        self.duration_nanos = duration_nanos;
        self
    }

    /// Adds a free-text comment, shown by `go tool pprof -raw` and in its web UI.
    pub(crate) fn comment(&mut self, text: &str) -> &mut Self {
        let id = self.string(text);
        self.comments.push(id);
        self
    }

    /// The sample type tools show unless told otherwise.
    pub(crate) fn default_sample_type(&mut self, name: &str) -> &mut Self {
        self.default_sample_type = self.string(name);
        self
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (self.string(name), self.string(file));
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push((id, key.0, key.1));
        self.function_ids.insert(key, id);
        id
    }

    /// The location id for a code address and its source lines (innermost first).
    pub(crate) fn location(&mut self, address: u64, lines: &[Line]) -> u64 {
        if let Some(&id) = self.location_ids.get(&address) {
            return id;
        }
        let lines = lines
            .iter()
            .map(|l| (self.function(&l.function, &l.file), i64::from(l.line)))
            .collect();
        let id = self.locations.len() as u64 + 1;
        let mapping_id = self.mapping_for(address);
        self.locations.push(Location {
            id,
            mapping_id,
            address,
            lines,
        });
        self.location_ids.insert(address, id);
        id
    }

    fn mapping_for(&self, address: u64) -> u64 {
        // Every location must name an existing mapping (Pyroscope drops it otherwise):
        // an address outside every mapping is attributed to the main binary's.
        self.mappings
            .iter()
            .position(|m| m.start <= address && address < m.end)
            .unwrap_or(0) as u64
            + 1
    }

    /// Adds a sample: its locations leaf first, one value per sample type, and labels.
    pub(crate) fn sample(
        &mut self,
        locations: Vec<u64>,
        values: Vec<i64>,
        labels: &[(&str, &str)],
    ) {
        debug_assert_eq!(values.len(), self.sample_types.len());
        let labels = labels
            .iter()
            .map(|(k, v)| (self.string(k), self.string(v)))
            .collect();
        self.samples.push(Sample {
            locations,
            values,
            labels,
        });
    }

    /// The profile, encoded as profile.proto (not compressed).
    pub(crate) fn encode(mut self) -> Vec<u8> {
        if self.mappings.is_empty() {
            // There must be a mapping for locations to name.
            self.mappings.push(ProcMapping::unknown());
        }
        let mapping_strings: Vec<(i64, i64)> = self
            .mappings
            .clone()
            .iter()
            .map(|m| (self.string(&m.path), self.string(&m.build_id)))
            .collect();
        let has_lines = self.locations.iter().any(|l| !l.lines.is_empty());
        let mut out = Vec::with_capacity(4096 + self.samples.len() * 32);
        for (t, u) in &self.sample_types {
            message(&mut out, 1, &value_type(*t, *u));
        }
        let mut buf = Vec::new();
        for s in &self.samples {
            buf.clear();
            packed(&mut buf, 1, s.locations.iter().copied());
            packed(&mut buf, 2, s.values.iter().map(|v| *v as u64));
            for (k, v) in &s.labels {
                let mut label = Vec::new();
                varint_field(&mut label, 1, *k as u64);
                varint_field(&mut label, 2, *v as u64);
                message(&mut buf, 3, &label);
            }
            message(&mut out, 2, &buf);
        }
        for (i, (m, (path, build_id))) in self.mappings.iter().zip(&mapping_strings).enumerate() {
            buf.clear();
            varint_field(&mut buf, 1, i as u64 + 1);
            varint_field(&mut buf, 2, m.start);
            varint_field(&mut buf, 3, m.end);
            varint_field(&mut buf, 4, m.offset);
            varint_field(&mut buf, 5, *path as u64);
            varint_field(&mut buf, 6, *build_id as u64);
            varint_field(&mut buf, 7, 1); // has_functions
            varint_field(&mut buf, 8, u64::from(has_lines)); // has_filenames
            varint_field(&mut buf, 9, u64::from(has_lines)); // has_line_numbers
            varint_field(&mut buf, 10, u64::from(has_lines)); // has_inline_frames
            message(&mut out, 3, &buf);
        }
        for l in &self.locations {
            buf.clear();
            varint_field(&mut buf, 1, l.id);
            varint_field(&mut buf, 2, l.mapping_id);
            varint_field(&mut buf, 3, l.address);
            for (function, line) in &l.lines {
                let mut lb = Vec::new();
                varint_field(&mut lb, 1, *function);
                varint_field(&mut lb, 2, *line as u64);
                message(&mut buf, 4, &lb);
            }
            message(&mut out, 4, &buf);
        }
        for (id, name, file) in &self.functions {
            buf.clear();
            varint_field(&mut buf, 1, *id);
            varint_field(&mut buf, 2, *name as u64);
            varint_field(&mut buf, 3, *name as u64);
            varint_field(&mut buf, 4, *file as u64);
            message(&mut out, 5, &buf);
        }
        for s in &self.strings {
            message(&mut out, 6, s.as_bytes());
        }
        varint_field(&mut out, 9, self.time_nanos as u64);
        varint_field(&mut out, 10, self.duration_nanos as u64);
        message(
            &mut out,
            11,
            &value_type(self.period_type.0, self.period_type.1),
        );
        varint_field(&mut out, 12, self.period as u64);
        packed(&mut out, 13, self.comments.iter().map(|c| *c as u64));
        varint_field(&mut out, 14, self.default_sample_type as u64);
        out
    }
}

/// Gzips `data` as Go's pprof does.
pub(crate) fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 3),
        flate2::Compression::default(),
    );
    enc.write_all(data)?;
    enc.finish()
}

fn value_type(t: i64, u: i64) -> Vec<u8> {
    let mut b = Vec::new();
    varint_field(&mut b, 1, t as u64);
    varint_field(&mut b, 2, u as u64);
    b
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v == 0 {
        return; // proto3 default: omitted
    }
    varint(out, u64::from(field) << 3);
    varint(out, v);
}

fn message(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn packed(out: &mut Vec<u8>, field: u32, values: impl Iterator<Item = u64>) {
    let mut body = Vec::new();
    for v in values {
        varint(&mut body, v);
    }
    if !body.is_empty() {
        message(out, field, &body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_encode_as_protobuf_does() {
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        b.clear();
        varint(&mut b, u64::MAX);
        assert_eq!(b.len(), 10);
        // A negative int64 is ten bytes, as protobuf encodes it.
        b.clear();
        varint(&mut b, -1i64 as u64);
        assert_eq!(b.len(), 10);
    }

    #[test]
    fn ids_start_at_one_and_strings_at_empty() {
        let mut p = ProfileBuilder::new(
            &[("samples", "count")],
            ("cpu", "nanoseconds"),
            10,
            vec![ProcMapping::unknown()],
        );
        let line = Line {
            function: "f".into(),
            file: "f.rs".into(),
            line: 3,
        };
        let a = p.location(0x10, std::slice::from_ref(&line));
        let b = p.location(0x10, &[line]);
        assert_eq!((a, b), (1, 1));
        assert_eq!(p.strings[0], "");
        assert_eq!(p.functions[0].0, 1);
        p.sample(vec![a], vec![1], &[("thread", "main")]);
        assert_eq!(p.samples.len(), 1);
        assert!(!p.encode().is_empty());
    }
}
