//! The task dump's encoders: `debug=1`, `debug=2` and `debug=0` (profile.proto).

use std::time::{Duration, Instant, SystemTime};

use super::{check, frame, profile_listing};
use crate::tasks::dump::{Frame, Missing, Silence, TaskDump, TaskTrace};
use crate::tasks::http::{to_grouped_text, to_per_task_text, to_proto};
use crate::tasks::registry::Outcome;

fn dump() -> TaskDump {
    let sleep = || {
        vec![
            frame(
                0x5555_0000_3000,
                &[(
                    "tokio::time::sleep::Sleep::poll",
                    "tokio/src/time/sleep.rs",
                    450,
                )],
            ),
            frame(
                0x5555_0000_4000,
                &[
                    ("demo::work::sleep::{{closure}}", "demo/src/work.rs", 120),
                    ("demo::work::handler::{{closure}}", "demo/src/work.rs", 80),
                ],
            ),
        ]
    };
    let task = |id: u64, name: &str, stacks: Vec<Vec<Frame>>, outcome| TaskTrace {
        id,
        tokio_id: Some(format!("{}", id + 100)),
        name: name.into(),
        location: "demo/src/main.rs:200:5".to_owned(),
        age: Duration::from_millis(1_500 * id),
        waited: Duration::from_millis(250 * id),
        stacks,
        outcome,
    };
    TaskDump {
        taken: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_115_200),
        at: Instant::now(),
        took: Duration::from_millis(3),
        timeout: Duration::from_secs(5),
        tasks: vec![
            task(1, "request", vec![sleep()], Outcome::Waiting),
            task(2, "request", vec![sleep()], Outcome::Waiting),
            task(3, "ticker", vec![], Outcome::Waiting),
            task(4, "done", vec![], Outcome::Completed),
            task(5, "two leaves", vec![sleep(), sleep()], Outcome::Waiting),
        ],
        missing: vec![Missing {
            id: 6,
            name: "busy".into(),
            location: "demo/src/work.rs:10:1".to_owned(),
            age: Duration::from_secs(9),
            why: Silence::InPoll(Duration::from_millis(5_200)),
        }],
        untraced: 2,
    }
}

const HEADER: &str = "tokio task dump: 5 tasks, taken 2025-11-26 00:00:00 UTC (0 s ago; dumps at \
     most every 1 s), took 3 ms";

#[test]
fn goroutine_debug_1() {
    check("goroutine-debug1.txt", &to_grouped_text(&dump(), HEADER));
}

#[test]
fn goroutine_debug_2() {
    check("goroutine-debug2.txt", &to_per_task_text(&dump(), HEADER));
}

#[test]
fn goroutine_proto() {
    let bytes = to_proto(&dump(), HEADER, super::mappings()).unwrap();
    check("goroutine.pb.txt", &profile_listing(&bytes));
}
