//! Keeps docs/internals.md's "Public API" section true, three ways:
//! - every item listed there is imported below (`use ... as _`), so removing or renaming
//!   one fails to compile (under the features that build it);
//! - the imports below and the section list the same paths, so neither drifts alone;
//! - every public item declared in diag's public modules (a `pub` item, `pub use` or
//!   `pub mod` at the top of the module's file, or a `pub struct`/`enum` inside a
//!   `pin_project!` there) is in the section, so a new one cannot go unlisted.
//!   `#[doc(hidden)]` items are not part of the API and are left out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every item of docs/internals.md's "Public API", imported. One `use` a line.
#[allow(unused_imports)]
mod listed {
    use diag::Config as _;
    use diag::DiagLayer as _;
    use diag::Shutdown as _;
    use diag::router as _;
    use diag::serve as _;

    use diag::config::Config as _;
    use diag::config::CpuRecorder as _;
    use diag::config::PrefixError as _;
    use diag::config::TOKEN_ENV as _;

    use diag::server::DEFAULT_SIDECAR_ADDR as _;
    use diag::server::Sidecar as _;
    use diag::server::serve as _;

    use diag::layer::DiagLayer as _;
    use diag::layer::DiagService as _;
    use diag::layer::ResponseFuture as _;

    use diag::conn::ConnLimits as _;
    use diag::conn::serve as _;

    #[cfg(feature = "console")]
    use diag::console::ConsoleError as _;
    #[cfg(feature = "console")]
    use diag::console::ConsoleLayer as _;
    #[cfg(feature = "console")]
    use diag::console::ConsoleServer as _;
    #[cfg(feature = "console")]
    use diag::console::DEFAULT_CONSOLE_ADDR as _;
    #[cfg(feature = "console")]
    use diag::console::DEFAULT_RETENTION as _;
    #[cfg(feature = "console")]
    use diag::console::bind as _;

    #[cfg(feature = "cpu")]
    use diag::labels::CUT_MARKER as _;
    #[cfg(feature = "cpu")]
    use diag::labels::LabelSet as _;
    #[cfg(feature = "cpu")]
    use diag::labels::Labelled as _;
    #[cfg(feature = "cpu")]
    use diag::labels::LabelsExt as _;
    #[cfg(feature = "cpu")]
    use diag::labels::MAX_KEY_LEN as _;
    #[cfg(feature = "cpu")]
    use diag::labels::MAX_LABELS as _;
    #[cfg(feature = "cpu")]
    use diag::labels::MAX_SETS as _;
    #[cfg(feature = "cpu")]
    use diag::labels::MAX_VALUE_LEN as _;
    #[cfg(feature = "cpu")]
    use diag::labels::OTHER_METHOD as _;
    #[cfg(feature = "cpu")]
    use diag::labels::OVERFLOW as _;
    #[cfg(feature = "cpu")]
    use diag::labels::ROUTE_CACHE_MAX as _;
    #[cfg(feature = "cpu")]
    use diag::labels::RouteLabels as _;
    #[cfg(feature = "cpu")]
    use diag::labels::RouteLabelsBody as _;
    #[cfg(feature = "cpu")]
    use diag::labels::RouteLabelsFuture as _;
    #[cfg(feature = "cpu")]
    use diag::labels::RouteLabelsService as _;
    #[cfg(feature = "cpu")]
    use diag::labels::UNMATCHED as _;
    #[cfg(feature = "cpu")]
    use diag::labels::bind as _;
    #[cfg(feature = "cpu")]
    use diag::labels::current as _;
    #[cfg(feature = "cpu")]
    use diag::labels::in_current_labels as _;
    #[cfg(feature = "cpu")]
    use diag::labels::overflowed as _;
    #[cfg(feature = "cpu")]
    use diag::labels::rejected as _;
    #[cfg(feature = "cpu")]
    use diag::labels::scope as _;
    #[cfg(feature = "cpu")]
    use diag::labels::spawn as _;
    #[cfg(feature = "cpu")]
    use diag::labels::spawn_blocking as _;
    #[cfg(feature = "cpu")]
    use diag::labels::with as _;

    #[cfg(feature = "taskdump")]
    use diag::tasks::MAX_TRACED_TASKS as _;
    #[cfg(feature = "taskdump")]
    use diag::tasks::Traced as _;
    #[cfg(feature = "taskdump")]
    use diag::tasks::TracedLayer as _;
    #[cfg(feature = "taskdump")]
    use diag::tasks::TracedService as _;
    #[cfg(feature = "taskdump")]
    use diag::tasks::spawn as _;

    #[cfg(feature = "heap")]
    use diag::heap::Stats as _;
    #[cfg(feature = "heap")]
    use diag::heap::Unavailable as _;
    #[cfg(feature = "heap")]
    use diag::heap::stats as _;

    #[cfg(feature = "trace")]
    use diag::trace::Filter as _;
    #[cfg(feature = "trace")]
    use diag::trace::Layer as _;
    #[cfg(feature = "trace")]
    use diag::trace::MAX_FIELD_BYTES as _;
    #[cfg(feature = "trace")]
    use diag::trace::MAX_TRACE_BYTES as _;
    #[cfg(feature = "trace")]
    use diag::trace::MAX_TRACE_EVENTS as _;
    #[cfg(feature = "trace")]
    use diag::trace::layer as _;

    #[cfg(feature = "criterion")]
    use diag::criterion::DEFAULT_BENCH_FREQUENCY as _;
    #[cfg(feature = "criterion")]
    use diag::criterion::Flamegraphs as _;
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The paths docs/internals.md's "Public API" section lists (`- `diag::...`` lines).
fn documented() -> BTreeSet<String> {
    let text = read(&root().join("../docs/internals.md"));
    let section = text
        .split("\n## Public API\n")
        .nth(1)
        .expect("docs/internals.md has a \"## Public API\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| l.strip_prefix("- `diag::"))
        .map(|l| format!("diag::{}", l.split('`').next().unwrap_or(l)))
        .collect()
}

/// The paths imported in `mod listed` above.
fn imported() -> BTreeSet<String> {
    read(&root().join("tests/public_api.rs"))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("use diag::"))
        .filter_map(|l| l.strip_suffix(" as _;"))
        .map(|p| format!("diag::{p}"))
        .collect()
}

/// The module file of `diag::a::b` (`src/a/b.rs` or `src/a/b/mod.rs`; `src/lib.rs` for
/// the root).
fn module_file(module: &[String]) -> PathBuf {
    let src = root().join("src");
    if module.is_empty() {
        return src.join("lib.rs");
    }
    let dir = module.iter().fold(src, |p, m| p.join(m));
    let flat = dir.with_extension("rs");
    if flat.exists() {
        flat
    } else {
        dir.join("mod.rs")
    }
}

/// The names a `pub use` statement brings in (`a::{B, C as D}` gives B and D).
fn use_names(statement: &str) -> Vec<String> {
    let body = statement.trim_end_matches(';');
    let list = match body.find('{') {
        Some(i) => body[i + 1..].trim_end_matches('}').to_owned(),
        None => body.to_owned(),
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = s.rsplit(" as ").next().unwrap_or(s);
            s.rsplit("::").next().unwrap_or(s).to_owned()
        })
        .collect()
}

/// The public items declared in `module`'s file, as full paths; public submodules are
/// followed.
fn declared(module: &[String], out: &mut BTreeSet<String>) {
    let text = read(&module_file(module));
    let path = |name: &str| {
        let mut p = vec!["diag".to_owned()];
        p.extend(module.iter().cloned());
        p.push(name.to_owned());
        p.join("::")
    };
    let mut hidden = false;
    let mut in_macro = false;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if indent == 0 {
            in_macro = t.starts_with("pin_project_lite::pin_project!");
        }
        if t.starts_with("#[doc(hidden)]") {
            hidden = true;
            continue;
        }
        if t.starts_with("#[") || t.starts_with("///") {
            continue;
        }
        let was_hidden = std::mem::take(&mut hidden);
        let top = indent == 0 || (in_macro && indent == 4);
        let Some(rest) = t.strip_prefix("pub ").filter(|_| top && !was_hidden) else {
            continue;
        };
        if rest.starts_with("use ") {
            let mut statement = rest.to_owned();
            while !statement.contains(';') {
                statement.push_str(lines.next().unwrap_or(";").trim());
            }
            for name in use_names(&statement["use ".len()..]) {
                out.insert(path(&name));
            }
            continue;
        }
        let rest = rest
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ");
        let Some((kind, after)) = rest.split_once(' ') else {
            continue;
        };
        if ![
            "fn", "struct", "enum", "trait", "type", "const", "static", "mod",
        ]
        .contains(&kind)
        {
            continue;
        }
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if kind == "mod" && indent == 0 {
            let mut sub = module.to_vec();
            sub.push(name);
            declared(&sub, out);
        } else {
            out.insert(path(&name));
        }
    }
}

#[test]
fn the_imports_and_the_documented_list_agree() {
    let documented = documented();
    let imported = imported();
    assert!(documented.len() > 40, "too few items found: {documented:?}");
    let only_doc: Vec<_> = documented.difference(&imported).collect();
    let only_test: Vec<_> = imported.difference(&documented).collect();
    assert!(
        only_doc.is_empty() && only_test.is_empty(),
        "listed in docs/internals.md only: {only_doc:?}; imported in tests/public_api.rs only: \
         {only_test:?}"
    );
}

#[test]
fn every_public_item_is_documented() {
    let mut found = BTreeSet::new();
    declared(&[], &mut found);
    let documented = documented();
    let missing: Vec<_> = found.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "public items missing from docs/internals.md's \"Public API\" section: {missing:?}"
    );
    // And the scan sees what it should: a listed item it cannot find means the scan (or
    // the list) is wrong.
    let unseen: Vec<_> = documented.difference(&found).collect();
    assert!(
        unseen.is_empty(),
        "listed but not found declared under diag/src: {unseen:?}"
    );
}

#[test]
fn the_scan_reads_use_lists_and_skips_hidden_items() {
    assert_eq!(use_names("a::{B, C as D, e::F};"), ["B", "D", "F"]);
    assert_eq!(use_names("a::b::C;"), ["C"]);
    let mut found = BTreeSet::new();
    declared(&[], &mut found);
    assert!(found.contains("diag::Config"), "{found:?}");
    assert!(found.contains("diag::layer::ResponseFuture"), "{found:?}");
    assert!(
        !found.iter().any(|p| p.starts_with("diag::bench")),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|p| p.ends_with("_for_bench")),
        "{found:?}"
    );
}
