//! Folded stacks to an interactive SVG flamegraph, rendered with inferno 0.12.
//!
//! diag renders from its own folded stacks (not pprof-rs's built-in inferno 0.11 one), so
//! one inferno version is in the tree and heap profiles render the same way.

use std::collections::HashMap;

use inferno::flamegraph::{self, Options};

use crate::params::Choice;
use crate::symbols::Resolved;

/// The forms a sampled profile (CPU, wall-time, heap) is served in:
/// `format=proto|svg|folded`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Format {
    /// gzipped profile.proto, for `go tool pprof`.
    #[default]
    Proto,
    /// An interactive SVG flamegraph.
    Svg,
    /// Folded stacks, one `a;b;c VALUE` line per stack.
    Folded,
}

/// `format=`'s names, in the order errors list them.
impl Choice for Format {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("proto", Self::Proto),
        ("svg", Self::Svg),
        ("folded", Self::Folded),
    ];
}

/// What a flamegraph shows: its title, a subtitle (what and when) and the unit of width.
#[derive(Debug)]
pub(crate) struct Labels<'a> {
    pub(crate) title: &'a str,
    pub(crate) subtitle: &'a str,
    /// "samples" for CPU, "bytes" for heap.
    pub(crate) count_name: &'a str,
}

/// Renders folded lines (`root;...;leaf COUNT`) as SVG. An empty profile renders an SVG
/// that says so rather than an error, so a browser always shows something.
pub(crate) fn render(folded: &[String], labels: &Labels<'_>) -> std::io::Result<Vec<u8>> {
    let mut opts = Options::default();
    opts.title = labels.title.to_owned();
    opts.subtitle = Some(labels.subtitle.to_owned());
    opts.count_name = labels.count_name.to_owned();
    opts.deterministic = true;
    let mut out = Vec::with_capacity(64 * 1024);
    if folded.is_empty() {
        // inferno refuses an empty input; one zero-width frame would be invisible, so say
        // plainly that nothing was sampled.
        let line = "no samples were taken in this window 1".to_owned();
        flamegraph::from_lines(&mut opts, std::iter::once(line.as_str()), &mut out)?;
    } else {
        flamegraph::from_lines(&mut opts, folded.iter().map(String::as_str), &mut out)?;
    }
    Ok(out)
}

/// Separates root frames within a [`fold`] prefix (`KEY=value` frames before a thread
/// name); each part is escaped on its own.
pub(crate) const PREFIX_SEP: char = '\u{1f}';

/// Collapsed stacks, one line per distinct stack, root first: `prefix;outer;...;leaf
/// VALUE`. Each stack is its root prefix (a thread name, or nothing), its addresses leaf
/// first, and its value; inlined frames of an address come out outermost first, and
/// stacks that fold to the same line are merged, as the folded format expects.
pub(crate) fn fold<'a>(
    stacks: impl IntoIterator<Item = (&'a str, &'a [usize], i64)>,
    symbols: &HashMap<usize, Resolved>,
) -> Vec<String> {
    // Each address's frames, folded once: `outer;...;inner`, or nothing if unresolved.
    let mut frames: HashMap<usize, String> = HashMap::new();
    let mut merged: HashMap<String, i64> = HashMap::new();
    for (prefix, ips, value) in stacks {
        let mut key = String::with_capacity(64 * ips.len());
        for (i, part) in prefix.split(PREFIX_SEP).enumerate() {
            if i > 0 {
                key.push(';');
            }
            push_folded(&mut key, part);
        }
        for ip in ips.iter().rev() {
            let folded = frames.entry(*ip).or_insert_with(|| {
                // Lines are innermost first; folded stacks go root first.
                let mut out = String::new();
                for l in symbols.get(ip).map_or(&[][..], |l| &l[..]).iter().rev() {
                    if !out.is_empty() {
                        out.push(';');
                    }
                    push_folded(&mut out, &l.function);
                }
                out
            });
            if folded.is_empty() {
                continue;
            }
            if !key.is_empty() {
                key.push(';');
            }
            key.push_str(folded);
        }
        *merged.entry(key).or_default() += value;
    }
    let mut lines: Vec<String> = merged
        .into_iter()
        .map(|(stack, value)| format!("{stack} {value}"))
        .collect();
    lines.sort_unstable();
    lines
}

/// Makes a frame name safe for the folded format, where `;` separates frames and the
/// count follows the last space.
fn push_folded(out: &mut String, name: &str) {
    out.extend(name.chars().map(|c| match c {
        ';' => ':',
        '\n' | '\r' => ' ',
        c => c,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_frames_and_title() {
        let svg = render(
            &[
                "main;work;spin_cpu 90".to_owned(),
                "main;idle 10".to_owned(),
            ],
            &Labels {
                title: "CPU flamegraph",
                subtitle: "5 s at 99 Hz",
                count_name: "samples",
            },
        )
        .expect("rendered");
        let text = String::from_utf8(svg).expect("utf-8");
        assert!(text.starts_with("<?xml"), "{}", &text[..40]);
        assert!(text.contains("spin_cpu"));
        assert!(text.contains("CPU flamegraph"));
        assert!(text.contains("5 s at 99 Hz"));
    }

    #[test]
    fn empty_profile_still_renders() {
        let svg = render(
            &[],
            &Labels {
                title: "t",
                subtitle: "s",
                count_name: "samples",
            },
        )
        .expect("rendered");
        assert!(String::from_utf8_lossy(&svg).contains("no samples"));
    }

    #[test]
    fn separators_are_escaped() {
        let mut out = String::new();
        push_folded(&mut out, "a;b\nc");
        assert_eq!(out, "a:b c");
    }
}
