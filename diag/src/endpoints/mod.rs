//! The one table of what diag serves. Per endpoint: its path, the methods it takes, the
//! part of diag it belongs to (whether this build and process have it, and how to enable it
//! when not), its line on the index page and the commands the index suggests for it.
//!
//! The router (`router.rs`), the 404's listing and the index page (`index.rs`)
//! are all derived from [`ENDPOINTS`]: an endpoint added here is routed, listed and shown.

use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use http::header;

use crate::state::Diag;

mod part;

pub(crate) use part::{Part, Unavailable};

/// One endpoint under the prefix.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// Path below the prefix, without the leading `/`.
    pub(crate) path: &'static str,
    /// The methods it takes; any other is a 405 naming them.
    pub(crate) methods: Methods,
    /// The part of diag it belongs to: whether it is here, or how to enable it.
    pub(crate) part: Part,
    /// Its handler, as a method router for `methods`; `None` when this build lacks `part`.
    pub(crate) route: Route,
    /// One line on what it gives, for the index page.
    pub(crate) summary: &'static str,
    /// The commands the index page suggests for it.
    pub(crate) commands: &'static [Command],
}

/// Builds an endpoint's method router for the given methods, if this build has its handler.
pub(crate) type Route = fn(MethodFilter) -> Option<MethodRouter<Diag>>;

/// The methods an endpoint takes (`HEAD` comes with `GET`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Methods {
    /// `GET` and `HEAD`.
    Get,
    /// `GET`, `HEAD` and `POST` (Go's symbol protocol).
    GetPost,
}

impl Methods {
    /// axum's filter for these methods.
    pub(crate) fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::GetPost => MethodFilter::GET.or(MethodFilter::POST),
        }
    }

    /// The `Allow` header's value, as a 405 states it.
    pub(crate) fn allowed(self) -> &'static str {
        match self {
            Self::Get => "GET, HEAD",
            Self::GetPost => "GET, HEAD, POST",
        }
    }
}

/// A command the index page suggests: `{base}` stands for `http://[:$DIAG_TOKEN@]host/prefix`.
#[derive(Debug)]
pub(crate) struct Command {
    /// Its place in the index's "Use it" list (commands of one endpoint need not be adjacent:
    /// the folded CPU profile comes after the flamegraph).
    pub(crate) rank: u8,
    /// What it gives, the comment line above it.
    pub(crate) what: &'static str,
    /// The command, with `{base}` for the server's base URL.
    pub(crate) template: &'static str,
}

impl Command {
    /// The command for the server at `base`.
    pub(crate) fn at(&self, base: &str) -> String {
        self.template.replace("{base}", base)
    }
}

/// A [`Route`] for `$handler`, or, with a feature named first, one that is `None` in builds
/// without that feature (the handler's path is then never resolved).
macro_rules! route {
    ($handler:path) => {{
        fn route(on: MethodFilter) -> Option<MethodRouter<Diag>> {
            Some(axum::routing::on(on, $handler))
        }
        route as Route
    }};
    ($feature:literal, $handler:path) => {{
        #[cfg(feature = $feature)]
        fn route(on: MethodFilter) -> Option<MethodRouter<Diag>> {
            Some(axum::routing::on(on, $handler))
        }
        #[cfg(not(feature = $feature))]
        fn route(_: MethodFilter) -> Option<MethodRouter<Diag>> {
            None
        }
        route as Route
    }};
}

/// Every endpoint diag serves, in the order the index and the 404 list them.
pub(crate) const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "",
        methods: Methods::Get,
        part: Part::Core,
        route: route!(crate::index::index),
        summary: "this page",
        commands: &[],
    },
    Endpoint {
        path: "profile",
        methods: Methods::Get,
        part: Part::Cpu,
        route: route!("cpu", crate::cpu::profile),
        summary: "CPU profile over ?seconds=N (default 30) at ?frequency=HZ (default 99): \
                  gzipped profile.proto for go tool pprof, or ?format=svg|folded",
        commands: &[
            Command {
                rank: 0,
                what: "CPU profile, 30 s, top functions",
                template: "go tool pprof -top '{base}/profile?seconds=30'",
            },
            Command {
                rank: 1,
                what: "CPU profile in the web UI",
                template: "go tool pprof -http=: '{base}/profile?seconds=30'",
            },
            Command {
                rank: 3,
                what: "folded stacks for inferno or speedscope",
                template: "curl -o cpu.folded '{base}/profile?seconds=30&format=folded'",
            },
        ],
    },
    Endpoint {
        path: "flamegraph",
        methods: Methods::Get,
        part: Part::Cpu,
        route: route!("cpu", crate::cpu::flamegraph),
        summary: "CPU flamegraph over ?seconds=N, as an SVG download for a browser",
        commands: &[Command {
            rank: 2,
            what: "CPU flamegraph SVG for a browser",
            template: "curl -o flamegraph.svg '{base}/flamegraph?seconds=30'",
        }],
    },
    Endpoint {
        path: "symbol",
        methods: Methods::GetPost,
        part: Part::Cpu,
        route: route!("cpu", crate::symbols::http::symbol),
        summary: "Go's symbol protocol: POST hex addresses joined by +, get function names",
        commands: &[],
    },
    Endpoint {
        path: "heap",
        methods: Methods::Get,
        part: Part::Heap,
        route: route!("heap", crate::heap::heap),
        summary: "memory in use (and allocated ever) by allocating stack, from jemalloc's \
                  sampling: gzipped profile.proto, ?seconds=N for the change over a window, \
                  ?format=svg|folded",
        commands: &[
            Command {
                rank: 7,
                what: "memory in use, by allocating stack (jemalloc)",
                template: "go tool pprof -top -cum '{base}/heap'",
            },
            Command {
                rank: 8,
                what: "what grew over 60 s",
                template: "go tool pprof -top -cum '{base}/heap?seconds=60'",
            },
            Command {
                rank: 10,
                what: "heap flamegraph SVG, in bytes",
                template: "curl -o heap.svg '{base}/heap?format=svg'",
            },
        ],
    },
    Endpoint {
        path: "allocs",
        methods: Methods::Get,
        part: Part::Heap,
        route: route!("heap", crate::heap::allocs),
        summary: "the heap profile with allocated bytes (alloc_space) as its default view",
        commands: &[Command {
            rank: 9,
            what: "bytes allocated, by stack",
            template: "go tool pprof -top -cum '{base}/allocs'",
        }],
    },
    Endpoint {
        path: "heap/stats",
        methods: Methods::Get,
        part: Part::Heap,
        route: route!("heap", crate::heap::heap_stats),
        summary: "jemalloc's allocated, active, resident, mapped and retained bytes \
                  (?format=prometheus)",
        commands: &[],
    },
    Endpoint {
        path: "goroutine",
        methods: Methods::Get,
        part: Part::Tasks,
        route: route!("taskdump", crate::tasks::goroutine),
        summary: "where every tokio task waits (a task dump), as go tool pprof reads it \
                  (goroutine/count); ?debug=1 grouped text, ?debug=2 each task",
        commands: &[Command {
            rank: 6,
            what: "the same for go tool pprof",
            template: "go tool pprof -top -cum '{base}/goroutine'",
        }],
    },
    Endpoint {
        path: "tasks",
        methods: Methods::Get,
        part: Part::Tasks,
        route: route!("taskdump", crate::tasks::tasks),
        summary: "the task dump as readable text, stacks grouped with their counts",
        commands: &[Command {
            rank: 5,
            what: "where every tokio task waits, grouped (a task dump)",
            template: "curl '{base}/tasks'",
        }],
    },
    Endpoint {
        path: "wall",
        methods: Methods::Get,
        part: Part::Tasks,
        route: route!("taskdump", crate::wall::wall),
        summary: "wall-time profile of the traced tokio tasks over ?seconds=N (default 30) at \
                  ?hz=N (default 20): each task's await stack at each sample, weighted by \
                  time (wall/nanoseconds), so awaiting shows, and the stacks of threads \
                  blocked or running outside tokio's polling (?threads=0: tasks alone); \
                  ?format=svg|folded",
        commands: &[],
    },
    Endpoint {
        path: "trace",
        methods: Methods::Get,
        part: Part::Trace,
        route: route!("trace", crate::trace::trace),
        summary: "what the process did over ?seconds=N (default 1): tracing spans (each \
                  request's), events and tokio task polls per thread, as Chrome trace-event \
                  JSON for Perfetto (not Go's trace format)",
        commands: &[Command {
            rank: 4,
            what: "a 2 s timeline of spans, events and task polls, for https://ui.perfetto.dev",
            template: "curl -o trace.json '{base}/trace?seconds=2'",
        }],
    },
    Endpoint {
        path: "cmdline",
        methods: Methods::Get,
        part: Part::Core,
        route: route!(cmdline),
        summary: "the command line of this process, arguments separated by NUL bytes",
        commands: &[],
    },
];

/// The commands the index suggests in this build, in their order.
pub(crate) fn commands() -> Vec<&'static Command> {
    let mut all: Vec<&'static Command> = ENDPOINTS
        .iter()
        .filter(|e| e.part.shows_commands())
        .flat_map(|e| e.commands)
        .collect();
    all.sort_by_key(|c| c.rank);
    all
}

/// `GET {prefix}/cmdline`: the process's arguments, separated by NUL bytes.
async fn cmdline() -> Response {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        args.join("\0"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_unique_and_ranks_distinct() {
        let mut paths: Vec<_> = ENDPOINTS.iter().map(|e| e.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ENDPOINTS.len());
        let mut ranks: Vec<_> = ENDPOINTS
            .iter()
            .flat_map(|e| e.commands)
            .map(|c| c.rank)
            .collect();
        ranks.sort_unstable();
        let n = ranks.len();
        ranks.dedup();
        assert_eq!(ranks.len(), n, "two commands share a rank");
    }

    #[test]
    fn a_part_this_build_lacks_says_how_to_enable_it() {
        for part in [Part::Cpu, Part::Heap, Part::Tasks, Part::Trace] {
            if !part.compiled() {
                assert_eq!(part.check(), Err(part.missing()));
                assert!(part.missing().to_string().contains("feature"), "{part:?}");
            }
        }
        assert_eq!(Part::Core.check(), Ok(()));
    }

    #[test]
    fn a_route_exists_exactly_when_the_part_is_built() {
        for e in ENDPOINTS {
            assert_eq!(
                (e.route)(e.methods.filter()).is_some(),
                e.part.compiled(),
                "{}",
                e.path
            );
        }
    }

    #[test]
    fn commands_fill_in_the_base() {
        let c = &ENDPOINTS[1].commands[0];
        assert_eq!(
            c.at("http://h/p"),
            "go tool pprof -top 'http://h/p/profile?seconds=30'"
        );
    }
}
