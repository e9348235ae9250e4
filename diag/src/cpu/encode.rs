//! The symbolized CPU profile and its encoders: profile.proto, folded stacks and the SVG
//! flamegraph. The encoders read nothing of the process: what they write comes from the
//! profile and the arguments.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[cfg(feature = "bench")]
use super::DEFAULT_FREQUENCY;
use super::engine::{Losses, Sample, Window};
use super::{Capture, Past};
use crate::flamegraph;
use crate::labels::LabelSet;
use crate::maps::ProcMapping;
use crate::proto::{self, ProfileBuilder};
use crate::symbols::{self, Resolved};
use crate::util::{unix_nanos, utc};

/// A symbolized CPU profile, ready to encode in any format.
#[derive(Debug)]
pub(crate) struct CpuProfile {
    stacks: Vec<Sample>,
    symbols: HashMap<usize, Resolved>,
    /// The label sets the samples name.
    labels: HashMap<u32, Arc<LabelSet>>,
    /// Label keys whose values root the folded stacks (`?tagroot=`).
    tagroot: Vec<String>,
    pub(super) start: SystemTime,
    pub(super) duration: Duration,
    pub(super) cpu_used: Duration,
    frequency: u32,
    /// The highest rate the sampler ran at over the window (for other readers).
    peak_frequency: u32,
    /// Signals taken.
    pub(super) samples: i64,
    /// CPU nanoseconds they stand for.
    sampled_ns: i64,
    losses: Losses,
    pub(super) ended_early: bool,
    /// From the recorder: what it kept of the stretch asked.
    pub(super) recorded: Option<Past>,
}

impl CpuProfile {
    /// Symbolizes `capture`'s stacks (diag's symbolizer: slow, call it on a blocking
    /// thread) and looks up the label sets they name.
    pub(super) fn resolve(capture: Capture) -> Self {
        let stacks = capture.window.samples.iter().filter(|s| !s.ips.is_empty());
        let symbols = symbols::resolve_all(stacks.clone().flat_map(|s| s.ips.iter().copied()));
        let labels = crate::labels::resolve(stacks.map(|s| s.label));
        Self::assemble(capture, symbols, labels)
    }

    /// The profile of `capture`, given the names of its addresses (`symbols`) and the
    /// label sets of its label-set ids (`labels`). Stacks without an address are left out.
    pub(crate) fn assemble(
        capture: Capture,
        symbols: HashMap<usize, Resolved>,
        labels: HashMap<u32, Arc<LabelSet>>,
    ) -> Self {
        let Window {
            samples: mut stacks,
            start,
            end,
            frequency,
            peak_frequency,
            losses,
        } = capture.window;
        stacks.retain(|s| !s.ips.is_empty());
        Self {
            labels,
            tagroot: Vec::new(),
            samples: stacks.iter().map(|s| s.count).sum(),
            sampled_ns: stacks.iter().map(|s| s.weight_ns).sum(),
            stacks,
            symbols,
            start: start.wall,
            duration: end.mono.duration_since(start.mono),
            cpu_used: end.cpu.saturating_sub(start.cpu),
            frequency,
            peak_frequency,
            losses,
            ended_early: capture.ended_early,
            recorded: capture.recorded,
        }
    }

    /// The label keys whose values root the folded and SVG stacks (`?tagroot=`).
    pub(crate) fn set_tagroot(&mut self, keys: Vec<String>) {
        self.tagroot = keys;
    }

    /// Samples per second of the process's CPU time over the window.
    pub(super) fn achieved_hz(&self) -> f64 {
        let cpu = self.cpu_used.as_secs_f64();
        if cpu > 0.0 {
            self.samples as f64 / cpu
        } else {
            0.0
        }
    }

    /// Nanoseconds of CPU time per timer expiry.
    fn period_ns(&self) -> i64 {
        1_000_000_000 / i64::from(self.frequency.max(1))
    }

    fn subtitle(&self) -> String {
        let l = &self.losses;
        let mut lost = Vec::new();
        for (n, what) in [
            (l.ring_full, "dropped (sample ring full)"),
            (
                l.ip_only,
                "with only the interrupted address (stack range not learned yet)",
            ),
            (l.stacks_full, "dropped (stack table full)"),
            (
                l.threads_unsampled,
                "threads not sampled (thread table full)",
            ),
            (l.foreign_signals, "foreign SIGPROFs passed on"),
        ] {
            if n > 0 {
                lost.push(format!("{n} {what}"));
            }
        }
        let source = match &self.recorded {
            None => String::new(),
            Some(Past {
                asked_from: None, ..
            }) => " (from the CPU recorder)".to_owned(),
            Some(Past {
                asked_from: Some(asked),
                kept_from,
            }) => format!(
                " (from the CPU recorder: asked from {}, which keeps only from {})",
                utc(*asked),
                utc(*kept_from)
            ),
        };
        let shared = if self.peak_frequency > self.frequency {
            format!(
                " (the sampler ran at up to {} Hz for other readers; each sample weighs its own timer's period)",
                self.peak_frequency
            )
        } else {
            String::new()
        };
        format!(
            "{:.1} s at {} Hz{shared}{source} from {}: {} samples ({:.0} Hz achieved), {:.2} s of CPU sampled of {:.2} s used{}{}",
            self.duration.as_secs_f64(),
            self.frequency,
            utc(self.start),
            self.samples,
            self.achieved_hz(),
            self.sampled_ns as f64 / 1e9,
            self.cpu_used.as_secs_f64(),
            if lost.is_empty() {
                String::new()
            } else {
                format!("; {}", lost.join(", "))
            },
            if self.ended_early {
                "; ended early by shutdown"
            } else {
                ""
            },
        )
    }

    /// How many samples the profile holds.
    #[cfg(feature = "criterion")]
    pub(crate) fn samples(&self) -> i64 {
        self.samples
    }

    /// gzipped profile.proto with Go's CPU sample types; `mappings` are the process's
    /// executable mappings, the main binary's first (`crate::maps::current()`).
    pub(crate) fn to_proto(&self, mappings: Vec<ProcMapping>) -> std::io::Result<Vec<u8>> {
        let mut b = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            self.period_ns(),
            mappings,
        );
        b.time(unix_nanos(self.start), self.duration.as_nanos() as i64);
        b.comment(&format!("diag CPU profile: {}", self.subtitle()));
        b.default_sample_type("cpu");
        for s in &self.stacks {
            let locations = s
                .ips
                .iter()
                .map(|ip| b.location(*ip as u64, self.symbols.get(ip).map_or(&[][..], |l| &l[..])))
                .collect();
            let mut labels: Vec<(&str, &str)> = vec![("thread", &s.thread)];
            if let Some(set) = self.labels.get(&s.label) {
                labels.extend(set.iter().filter(|(k, _)| *k != "thread"));
            }
            b.sample(locations, vec![s.count, s.weight_ns], &labels);
        }
        proto::gzip(&b.encode())
    }

    /// Collapsed stacks, root first, one line per distinct stack and thread name:
    /// `thread;a;b;c COUNT`. Threads that share a name (a pool's workers) and stacks that
    /// differ only below what the names show are merged, as the folded format expects.
    /// With `tagroot` keys, each key's value comes first: `KEY=value;thread;a;b;c COUNT`
    /// (`KEY=(none)` for samples without it).
    pub(crate) fn to_folded(&self) -> Vec<String> {
        if self.tagroot.is_empty() {
            return flamegraph::fold(
                self.stacks
                    .iter()
                    .map(|s| (s.thread.as_str(), &s.ips[..], s.count)),
                &self.symbols,
            );
        }
        let prefixes: Vec<String> = self
            .stacks
            .iter()
            .map(|s| {
                let set = self.labels.get(&s.label);
                let mut p = String::new();
                for key in &self.tagroot {
                    let value = set.and_then(|l| l.get(key)).unwrap_or("(none)");
                    p.push_str(key);
                    p.push('=');
                    p.push_str(value);
                    p.push(flamegraph::PREFIX_SEP);
                }
                p.push_str(&s.thread);
                p
            })
            .collect();
        flamegraph::fold(
            self.stacks
                .iter()
                .zip(&prefixes)
                .map(|(s, p)| (p.as_str(), &s.ips[..], s.count)),
            &self.symbols,
        )
    }

    /// The SVG flamegraph of [`CpuProfile::to_folded`].
    pub(crate) fn to_svg(&self) -> std::io::Result<Vec<u8>> {
        self.to_svg_titled("CPU flamegraph")
    }

    /// The SVG flamegraph under `title`.
    pub(crate) fn to_svg_titled(&self, title: &str) -> std::io::Result<Vec<u8>> {
        flamegraph::render(
            &self.to_folded(),
            &flamegraph::Labels {
                title,
                subtitle: &self.subtitle(),
                count_name: "samples",
            },
        )
    }
}

#[cfg(feature = "bench")]
impl CpuProfile {
    /// A profile of `samples` samples, each its own stack `depth` frames deep, drawn from
    /// a pool of made-up functions so that stacks share prefixes as real ones do (a few
    /// roots, wider towards the leaves). For benchmarks of the encoders.
    pub(crate) fn synthetic(samples: usize, depth: usize) -> CpuProfile {
        let mut symbols = HashMap::new();
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let period_ns = 1_000_000_000 / i64::from(DEFAULT_FREQUENCY);
        let stacks: Vec<Sample> = (0..samples)
            .map(|_| {
                // Frame i (from the root) is one of 2 + 4*i functions at that level.
                let ips = (0..depth)
                    .rev()
                    .map(|level| {
                        let choices = 2 + 4 * level as u64;
                        0x10_0000 + (level as u64 * 4096 + next() % choices) as usize * 16
                    })
                    .collect();
                Sample {
                    ips,
                    thread: format!("worker-{}", next() % 4),
                    label: 0,
                    count: 1,
                    weight_ns: period_ns,
                }
            })
            .collect();
        for s in &stacks {
            for &ip in &s.ips {
                symbols.entry(ip).or_insert_with(|| -> Resolved {
                    vec![proto::Line {
                        function: format!("app::module_{}::function_{ip:x}", ip / 65536),
                        file: format!("src/module_{}.rs", ip / 65536),
                        line: (ip % 997) as u32,
                    }]
                    .into()
                });
            }
        }
        CpuProfile {
            symbols,
            labels: HashMap::new(),
            tagroot: Vec::new(),
            start: SystemTime::now(),
            duration: Duration::from_secs(30),
            cpu_used: Duration::from_secs_f64(samples as f64 / 99.0),
            frequency: DEFAULT_FREQUENCY,
            peak_frequency: DEFAULT_FREQUENCY,
            recorded: None,
            samples: stacks.len() as i64,
            sampled_ns: stacks.len() as i64 * period_ns,
            stacks,
            losses: Losses::default(),
            ended_early: false,
        }
    }
}
