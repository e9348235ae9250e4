//! Readers of what the tools and the demo print: JSON log fields, `go tool pprof -top`
//! columns, flamegraph SVG titles, folded stacks.

/// The string value of a field anywhere in a JSON log line (`"name":"value"`), without
/// a JSON dependency in this crate.
pub fn json_field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key)? + key.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

/// Folded lines `root;frames... VALUE` as (stack, value); other lines are skipped.
pub fn folded(text: &str) -> Vec<(String, i64)> {
    text.lines()
        .filter_map(|l| {
            let (stack, v) = l.rsplit_once(' ')?;
            Some((stack.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// The `cum` column, in MiB, of `go tool pprof -top -cum -unit=MB` output for the function
/// whose name ends with `name` (`MB` there means MiB, as pprof counts).
pub fn pprof_cum_mib(top: &str, name: &str) -> Option<f64> {
    let line = top.lines().find(|l| {
        l.split_whitespace()
            .last()
            .is_some_and(|f| f.ends_with(name))
    })?;
    line.split_whitespace()
        .nth(3)?
        .strip_suffix("MB")?
        .parse()
        .ok()
}

/// The `<title>` of every frame of a flamegraph SVG, after checking it is well-formed XML
/// whose root is `<svg>` (inferno's SVG starts with a DOCTYPE, which roxmltree refuses
/// unless told).
pub fn svg_titles(svg: &str) -> Vec<String> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(svg, opts).expect("valid XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text())
        .map(str::to_owned)
        .collect()
}
