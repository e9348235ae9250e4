//! The wall-time profile's encoders: profile.proto and folded stacks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{check, frame, mappings, profile_listing};
use crate::tasks::dump::Frame;
use crate::wall::encode::{LabelSets, to_folded, to_proto};
use crate::wall::sampler::{Stats, ThreadStats, WallProfile, WallStack, Weight};

fn stack(task: &str, thread: bool, label: u32, frames: Vec<Frame>, w: (i64, i64)) -> WallStack {
    WallStack {
        task: Arc::from(task),
        thread,
        label,
        frames,
        weight: Weight {
            count: w.0,
            nanos: w.1,
        },
    }
}

/// Two requests' await stacks (one labelled, sharing the handler's frame), a task inside
/// a poll (a pseudo-frame), a thread's stack through libc, and a stack with no frames
/// (left out).
fn profile() -> WallProfile {
    let sleep = frame(
        0x5555_0000_3000,
        &[(
            "tokio::time::sleep::Sleep::poll",
            "tokio/src/time/sleep.rs",
            450,
        )],
    );
    let handler = frame(
        0x5555_0000_4000,
        &[
            ("demo::work::sleep::{{closure}}", "demo/src/work.rs", 120),
            ("demo::work::handler::{{closure}}", "demo/src/work.rs", 80),
        ],
    );
    let in_poll = frame(
        2,
        &[("[inside a poll: running, or blocking its worker]", "", 0)],
    );
    let futex = frame(0x7f00_0000_0400, &[]);
    let lock = frame(
        0x5555_0000_5000,
        &[("demo::store::Store::lock", "demo/src/store/mod.rs", 31)],
    );
    let stacks = vec![
        stack(
            "request",
            false,
            1,
            vec![sleep.clone(), handler.clone()],
            (60, 3_000_000_000),
        ),
        stack(
            "request",
            false,
            0,
            vec![sleep, handler],
            (20, 1_000_000_000),
        ),
        stack("ticker", false, 0, vec![in_poll], (5, 250_000_000)),
        stack(
            "diag-blocking-1",
            true,
            1,
            vec![futex, lock],
            (10, 500_000_000),
        ),
        stack("quiet", false, 0, Vec::new(), (1, 50_000_000)),
    ];
    let stats = Stats {
        started: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_115_200)),
        duration: Duration::from_secs(5),
        hz: 20,
        ticks: 100,
        lowered_ticks: 0,
        lowest_hz: 20.0,
        most_tasks: 4,
        sampling: Duration::from_micros(12_500),
        slowest_tick: Duration::from_micros(900),
        untraced: 2,
        ended_early: false,
        threads_asked: true,
        threads: ThreadStats {
            unavailable: None,
            signal: 34,
            signals_sent: 400,
            samples: 396,
            ip_only: 3,
            missed: 1,
            busy: Duration::from_micros(8_000),
            ..ThreadStats::default()
        },
        idle_thread_samples: 300,
        idle_thread_nanos: 15_000_000_000,
    };
    WallProfile { stacks, stats }
}

/// Label set 1: a route, and a `task` key the encoder leaves to the stack's own.
fn label_sets() -> LabelSets {
    let pairs = [("http.route", "/work"), ("task", "shadowed")];
    let set = pairs.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec();
    LabelSets::from([(1, set)])
}

#[test]
fn wall_profile_proto() {
    let bytes = to_proto(&profile(), &label_sets(), mappings()).unwrap();
    check("wall.pb.txt", &profile_listing(&bytes));
}

#[test]
fn wall_folded_stacks() {
    check("wall.folded", &(to_folded(&profile()).join("\n") + "\n"));
}
