//! A wall-time window symbolized: every address resolved, the dump machinery trimmed off
//! each task's stack, idle threads left out, and the stacks that trim alike merged.

use std::collections::HashMap;
use std::sync::Arc;

use crate::symbols::{self, Resolved};
use crate::tasks::dump::{self, Frame};

use super::super::idle::idle;
use super::{Capture, Place, Stats, Weight, pseudo_frame};

/// One symbolized stack of the profile: the task's name, its frames leaf first (or a
/// pseudo-frame), and its weight.
#[derive(Debug)]
pub(crate) struct WallStack {
    /// The task's name, or the thread's for a thread's stack.
    pub(crate) task: Arc<str>,
    /// Whether this is a thread's stack (`task` is then the thread's name).
    pub(crate) thread: bool,
    /// The label-set id (`diag::labels`) the task or thread ran under, 0 for none.
    pub(crate) label: u32,
    pub(crate) frames: Vec<Frame>,
    pub(crate) weight: Weight,
}

/// A symbolized wall-time profile.
#[derive(Debug)]
pub(crate) struct WallProfile {
    pub(crate) stacks: Vec<WallStack>,
    pub(crate) stats: Stats,
}

/// Resolves the addresses (diag's symbolizer; slow: call it off the async workers, through
/// `offload::run`), trims the dump machinery off each stack and merges the stacks that
/// trim to the same frames.
pub(crate) fn symbolize(capture: Capture) -> WallProfile {
    let resolved: HashMap<usize, Resolved> =
        symbols::resolve_all(capture.weights.keys().flat_map(|(_, p)| match p {
            Place::Awaiting(s, _) | Place::Thread(s, _) => s.clone(),
            _ => Vec::new(),
        }));
    let names: Vec<Arc<str>> = capture.names.iter().map(|n| Arc::from(&**n)).collect();
    let mut stats = capture.stats;
    let mut merged: HashMap<(u32, Vec<u64>, bool, u32), WallStack> = HashMap::new();
    for ((name, place), w) in capture.weights {
        let thread = matches!(place, Place::Thread(..));
        let label = match &place {
            Place::Thread(_, label) | Place::Awaiting(_, label) => *label,
            _ => 0,
        };
        let frames = match &place {
            Place::Thread(s, _) => s
                .iter()
                .map(|ip| Frame {
                    ip: *ip as u64,
                    lines: resolved.get(ip).cloned().unwrap_or_default(),
                })
                .collect(),
            Place::Awaiting(s, _) => dump::trim(
                s.iter()
                    .map(|ip| Frame {
                        ip: *ip as u64,
                        lines: resolved.get(ip).cloned().unwrap_or_default(),
                    })
                    .collect(),
            ),
            other => match pseudo_frame(other) {
                Some((ip, function)) => vec![Frame {
                    ip,
                    lines: Arc::from(vec![crate::proto::Line {
                        function: function.to_owned(),
                        file: String::new(),
                        line: 0,
                    }]),
                }],
                None => Vec::new(),
            },
        };
        if thread
            && idle(
                frames
                    .iter()
                    .flat_map(|f| f.lines.iter().map(|l| l.function.as_str())),
            )
        {
            stats.idle_thread_samples += w.count;
            stats.idle_thread_nanos = stats.idle_thread_nanos.saturating_add(w.nanos);
            continue;
        }
        let key = (name, frames.iter().map(|f| f.ip).collect(), thread, label);
        let task = names
            .get(name as usize)
            .cloned()
            .unwrap_or_else(|| "?".into());
        let s = merged.entry(key).or_insert_with(|| WallStack {
            task,
            thread,
            label,
            frames,
            weight: Weight::default(),
        });
        s.weight.count += w.count;
        s.weight.nanos = s.weight.nanos.saturating_add(w.nanos);
    }
    let mut stacks: Vec<WallStack> = merged.into_values().collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s.weight.nanos));
    WallProfile { stacks, stats }
}
