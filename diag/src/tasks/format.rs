//! Task dumps written as Go writes goroutine profiles: profile.proto, the `debug=1`
//! grouped text, the `debug=2` per-task text. Pure functions of the dump and what is
//! passed in (the header line, the mappings).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::dump::{Frame, Silence, TaskDump};
use super::registry::{MAX_TRACED_TASKS, Outcome};
use crate::maps::ProcMapping;
use crate::proto::{self, ProfileBuilder};
use crate::util::{unix_nanos, utc};

/// The first line of every format: how many tasks, when the dump was taken (`age` ago),
/// the minimum interval, how long it took and what did not report.
pub(crate) fn header_line(dump: &TaskDump, age: Duration, min_interval: Duration) -> String {
    let mut line = format!(
        "tokio task dump: {} tasks, taken {} ({} s ago; dumps at most every {} s), took {} ms",
        dump.tasks.len(),
        utc(dump.taken),
        age.as_secs(),
        min_interval.as_secs(),
        dump.took.as_millis()
    );
    if !dump.missing.is_empty() {
        let _ = write!(
            line,
            "; {} traced tasks did not report within timeout={} s (listed at the end)",
            dump.missing.len(),
            dump.timeout.as_secs()
        );
    }
    line
}

/// Stacks grouped: each distinct stack with its frames and how many tasks wait there.
/// Each task counts once, so the counts add up to the tasks, as Go's goroutine counts
/// do: a task awaiting several leaf futures at once (`select!`, `join!`) is counted at
/// its deepest stack; `debug=2` shows all of them.
fn grouped(dump: &TaskDump) -> Vec<(usize, &[Frame])> {
    let mut groups: BTreeMap<Vec<u64>, (usize, &[Frame])> = BTreeMap::new();
    for t in &dump.tasks {
        let s: &[Frame] = t.stacks.iter().max_by_key(|s| s.len()).map_or(&[], |s| s);
        let key: Vec<u64> = s.iter().map(|f| f.ip).collect();
        groups.entry(key).or_insert((0, s)).0 += 1;
    }
    let mut out: Vec<_> = groups.into_values().collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.0));
    out
}

/// The dump as a gzipped goroutine profile, its locations attributed to `mappings`.
pub(crate) fn to_proto(
    dump: &TaskDump,
    comment: &str,
    mappings: Vec<ProcMapping>,
) -> std::io::Result<Vec<u8>> {
    let mut b = ProfileBuilder::new(
        &[("goroutine", "count")],
        ("goroutine", "count"),
        1,
        mappings,
    );
    b.time(unix_nanos(dump.taken), dump.took.as_nanos() as i64);
    b.comment(comment);
    for (count, frames) in grouped(dump) {
        if frames.is_empty() {
            continue;
        }
        let locations = frames.iter().map(|f| b.location(f.ip, &f.lines)).collect();
        b.sample(locations, vec![count as i64], &[]);
    }
    proto::gzip(&b.encode())
}

fn push_frame(out: &mut String, f: &Frame) {
    // Inlined calls first (innermost), as Go lists them.
    for l in f.lines.iter() {
        out.push_str(&format!(
            "#\t{:#x}\t{}\t{}:{}\n",
            f.ip, l.function, l.file, l.line
        ));
    }
    if f.lines.is_empty() {
        out.push_str(&format!("#\t{:#x}\n", f.ip));
    }
}

/// Go's `debug=1`: stacks grouped, most common first, `COUNT @ ADDRS` then the frames.
pub(crate) fn to_grouped_text(dump: &TaskDump, header_line: &str) -> String {
    let groups = grouped(dump);
    let mut out = format!(
        "{header_line}\ngoroutine profile: total {}\n",
        dump.tasks.len()
    );
    for (count, frames) in groups {
        out.push('\n');
        out.push_str(&count.to_string());
        out.push_str(" @");
        for f in frames {
            out.push_str(&format!(" {:#x}", f.ip));
        }
        out.push('\n');
        for f in frames {
            push_frame(&mut out, f);
        }
    }
    push_missing(&mut out, dump);
    out
}

/// The traced tasks that did not report, and the futures left untraced, as `#` lines.
fn push_missing(out: &mut String, dump: &TaskDump) {
    if !dump.missing.is_empty() {
        let _ = writeln!(
            out,
            "\n# {} traced tasks did not report within timeout={} s:",
            dump.missing.len(),
            dump.timeout.as_secs()
        );
        for m in &dump.missing {
            let _ = writeln!(
                out,
                "#\ttask {} {:?} (age {}, {}): {}",
                m.id,
                &*m.name,
                secs(m.age),
                m.location,
                match m.why {
                    Silence::InPoll(d) => format!(
                        "inside one poll for {} (blocking, or computing without yielding)",
                        secs(d)
                    ),
                    Silence::NotPolled(d) => format!(
                        "woken but not polled; last poll ended {} ago (its worker is busy or \
                         blocked, or the runtime is stopping)",
                        secs(d)
                    ),
                }
            );
        }
    }
    if dump.untraced > 0 {
        let _ = writeln!(
            out,
            "\n# {} futures ran untraced since the start: the registry holds at most {} \
             at once",
            dump.untraced, MAX_TRACED_TASKS
        );
    }
}

/// A duration as seconds with two decimals, `1.25 s`.
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Go's `debug=2`: every task on its own, with its id, name, state and age, as Go's
/// `goroutine 7 [chan receive, 2 minutes]:`.
pub(crate) fn to_per_task_text(dump: &TaskDump, header_line: &str) -> String {
    let mut out = format!("{header_line}\n");
    for t in &dump.tasks {
        let state = match t.outcome {
            Outcome::Waiting => format!("waiting {}", secs(t.waited)),
            Outcome::Completed => "completed during the dump".to_owned(),
            Outcome::Dropped => "dropped during the dump".to_owned(),
        };
        let _ = write!(
            out,
            "\ntask {} {:?} [{state}, age {}",
            t.id,
            &*t.name,
            secs(t.age)
        );
        if let Some(id) = &t.tokio_id {
            let _ = write!(out, ", tokio task {id}");
        }
        let _ = writeln!(out, "] {}:", t.location);
        if t.stacks.is_empty() && t.outcome == Outcome::Waiting {
            out.push_str("\t(no trace: the task was not waiting on a tokio leaf future)\n");
        }
        for (i, s) in t.stacks.iter().enumerate() {
            if t.stacks.len() > 1 {
                let _ = writeln!(out, "  waiting on leaf future {}:", i + 1);
            }
            for f in s {
                for l in f.lines.iter() {
                    let _ = writeln!(out, "{}\n\t{}:{}", l.function, l.file, l.line);
                }
            }
        }
    }
    push_missing(&mut out, dump);
    out
}
