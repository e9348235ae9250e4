//! The wall-time profile's encoders: profile.proto, folded stacks and the SVG flamegraph.
//! They read nothing of the process: the label sets and the mappings are passed in.

use std::collections::HashMap;
use std::time::SystemTime;

use super::sampler::{FULL_RATE_TASKS, MAX_THREADS_SAMPLED, WallProfile};
use crate::flamegraph;
use crate::maps::ProcMapping;
use crate::proto::{self, ProfileBuilder};
use crate::symbols::Resolved;
use crate::util::{unix_nanos, utc};

/// The labels of each label-set id the stacks name, as `(key, value)` pairs in key order
/// (see [`label_sets`]).
pub(crate) type LabelSets = HashMap<u32, Vec<(String, String)>>;

/// The label sets `p`'s stacks name, from `diag::labels`' table (none without the `cpu`
/// feature, which labels need).
pub(crate) fn label_sets(p: &WallProfile) -> LabelSets {
    #[cfg(feature = "cpu")]
    {
        crate::labels::resolve(p.stacks.iter().map(|s| s.label))
            .into_iter()
            .map(|(id, set)| {
                let pairs = set.iter().map(|(k, v)| (k.to_owned(), v.to_owned()));
                (id, pairs.collect())
            })
            .collect()
    }
    #[cfg(not(feature = "cpu"))]
    {
        let _ = p;
        LabelSets::new()
    }
}

/// Samples per second over the window.
pub(super) fn achieved_hz(p: &WallProfile) -> f64 {
    let secs = p.stats.duration.as_secs_f64();
    if secs > 0.0 {
        p.stats.ticks as f64 / secs
    } else {
        0.0
    }
}

/// Why and how far the rate was lowered.
pub(super) fn lowered(p: &WallProfile) -> String {
    let s = &p.stats;
    format!(
        "{} of {} samples at a lowered rate (down to {:.1} Hz): up to {} traced tasks, above \
         the {} sampled at the full {} Hz",
        s.lowered_ticks, s.ticks, s.lowest_hz, s.most_tasks, FULL_RATE_TASKS, s.hz
    )
}

fn subtitle(p: &WallProfile) -> String {
    let s = &p.stats;
    let mut out = format!(
        "{:.1} s at {} Hz from {}: {} samples ({:.1} Hz achieved) of up to {} traced tasks; \
         sampling took {:.1} ms in all (slowest sample {:.1} ms)",
        s.duration.as_secs_f64(),
        s.hz,
        s.started.map_or_else(String::new, utc),
        s.ticks,
        achieved_hz(p),
        s.most_tasks,
        s.sampling.as_secs_f64() * 1e3,
        s.slowest_tick.as_secs_f64() * 1e3,
    );
    if s.lowered_ticks > 0 {
        out.push_str("; ");
        out.push_str(&lowered(p));
    }
    if s.untraced > 0 {
        out.push_str(&format!(
            "; {} futures ran untraced since the start (registry full)",
            s.untraced
        ));
    }
    let t = &s.threads;
    match &t.unavailable {
        Some(_) if !s.threads_asked => out.push_str("; threads not sampled (threads=0)"),
        Some(why) => out.push_str(&format!("; threads not sampled: {why}")),
        None => out.push_str(&format!(
            "; threads: {} signals (real-time signal {}), {} samples, {} left out as tokio \
             waiting for work ({:.1} s), {} missed, {} not kept (stack not known yet), \
             {} over the {}-thread limit, {} not signalled (they block it); sampling them took \
             {:.1} ms in all",
            t.signals_sent,
            t.signal,
            t.samples,
            s.idle_thread_samples,
            s.idle_thread_nanos as f64 / 1e9,
            t.missed,
            t.ip_only,
            t.over_limit,
            MAX_THREADS_SAMPLED,
            t.blocking_signal,
            t.busy.as_secs_f64() * 1e3,
        )),
    }
    if t.foreign > 0 {
        out.push_str(&format!(
            "; {} signals on that signal were not diag's",
            t.foreign
        ));
    }
    if s.ended_early {
        out.push_str("; ended early by shutdown");
    }
    out
}

/// gzipped profile.proto: `samples/count` and `wall/nanoseconds`, a `task` label with the
/// traced future's name (a `thread` label with the thread's name for a thread's stack),
/// and the labels (`diag::labels`) the task or thread ran under (from `sets`);
/// `mappings`: the process's executable mappings, the main binary's first.
pub(crate) fn to_proto(
    p: &WallProfile,
    sets: &LabelSets,
    mappings: Vec<ProcMapping>,
) -> std::io::Result<Vec<u8>> {
    let period = i64::from(1_000_000_000 / p.stats.hz.max(1));
    let mut b = ProfileBuilder::new(
        &[("samples", "count"), ("wall", "nanoseconds")],
        ("wall", "nanoseconds"),
        period,
        mappings,
    );
    let start = p.stats.started.unwrap_or(SystemTime::UNIX_EPOCH);
    b.time(unix_nanos(start), p.stats.duration.as_nanos() as i64);
    b.comment(&format!("diag wall-time profile: {}", subtitle(p)));
    b.default_sample_type("wall");
    for s in &p.stacks {
        if s.frames.is_empty() {
            continue;
        }
        let locations = s
            .frames
            .iter()
            .map(|f| b.location(f.ip, &f.lines))
            .collect();
        let mut labels: Vec<(&str, &str)> =
            vec![(if s.thread { "thread" } else { "task" }, &s.task)];
        if let Some(set) = sets.get(&s.label) {
            labels.extend(
                set.iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .filter(|(k, _)| *k != "thread" && *k != "task"),
            );
        }
        b.sample(locations, vec![s.weight.count, s.weight.nanos], &labels);
    }
    proto::gzip(&b.encode())
}

/// Collapsed stacks, root first, the task's name as the root frame (`thread NAME` for a
/// thread's stack), values in ns.
pub(crate) fn to_folded(p: &WallProfile) -> Vec<String> {
    let roots: Vec<String> = p
        .stacks
        .iter()
        .map(|s| {
            if s.thread {
                format!("thread {}", s.task)
            } else {
                s.task.to_string()
            }
        })
        .collect();
    let mut symbols: HashMap<usize, Resolved> = HashMap::new();
    let ips: Vec<Vec<usize>> = p
        .stacks
        .iter()
        .map(|s| {
            s.frames
                .iter()
                .map(|f| {
                    symbols
                        .entry(f.ip as usize)
                        .or_insert_with(|| f.lines.clone());
                    f.ip as usize
                })
                .collect()
        })
        .collect();
    flamegraph::fold(
        p.stacks
            .iter()
            .zip(&ips)
            .zip(&roots)
            .filter(|((s, _), _)| !s.frames.is_empty())
            .map(|((s, ips), root)| (root.as_str(), &ips[..], s.weight.nanos)),
        &symbols,
    )
}

/// The SVG flamegraph of [`to_folded`].
pub(crate) fn to_svg(p: &WallProfile) -> std::io::Result<Vec<u8>> {
    flamegraph::render(
        &to_folded(p),
        &flamegraph::Labels {
            title: "Wall-time flamegraph (traced tokio tasks and threads)",
            subtitle: &subtitle(p),
            count_name: "ns",
        },
    )
}
