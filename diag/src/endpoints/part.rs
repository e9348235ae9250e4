//! The parts of diag an endpoint belongs to: whether this build and this process have
//! each, and, when not, the text that says how to enable it (a 501's body, the index's note).

use std::borrow::Cow;
use std::fmt;

use crate::error::ApiError;

/// Why an endpoint cannot answer in this build or process, and how to make it: the body of
/// its 501, and its "not available" note on the index page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unavailable(Cow<'static, str>);

impl Unavailable {
    /// The reason a part gave at run time (jemalloc not the allocator, no trace layer, ...).
    pub(crate) fn because(reason: impl fmt::Display) -> Self {
        Self(Cow::Owned(reason.to_string()))
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

impl From<Unavailable> for ApiError {
    fn from(u: Unavailable) -> Self {
        ApiError::not_implemented(u)
    }
}

/// The parts of diag an endpoint can belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Always here: the index, cmdline.
    Core,
    /// The `cpu` feature: diag's own sampler.
    Cpu,
    /// The `heap` feature: jemalloc's sampling.
    Heap,
    /// The `taskdump` feature: task dumps and wall-time profiles.
    Tasks,
    /// The `trace` feature: the timeline of spans, events and polls.
    Trace,
}

impl Part {
    /// Whether this build has the part's code (its Cargo feature).
    pub(crate) fn compiled(self) -> bool {
        match self {
            Self::Core => true,
            Self::Cpu => cfg!(feature = "cpu"),
            Self::Heap => cfg!(feature = "heap"),
            Self::Tasks => cfg!(feature = "taskdump"),
            Self::Trace => cfg!(feature = "trace"),
        }
    }

    /// Whether the part can answer in this process now, or why not and how to enable it.
    pub(crate) fn check(self) -> Result<(), Unavailable> {
        if !self.compiled() {
            return Err(self.missing());
        }
        match self {
            Self::Core => Ok(()),
            // The index says so too, not only the 501.
            Self::Cpu if !CPU_PLATFORM => Err(Unavailable(Cow::Borrowed(CPU_UNSUPPORTED))),
            Self::Cpu => Ok(()),
            Self::Heap => heap_check(),
            Self::Tasks => tasks_check(),
            Self::Trace => trace_check(),
        }
    }

    /// What a build without the part answers on its endpoints: how to enable it.
    pub(crate) fn missing(self) -> Unavailable {
        Unavailable(Cow::Borrowed(match self {
            Self::Core => "not in this build",
            Self::Cpu => CPU_MISSING,
            Self::Heap => HEAP_MISSING,
            Self::Tasks => TASKS_MISSING,
            Self::Trace => TRACE_MISSING,
        }))
    }

    /// Whether the index suggests the part's commands: when the build has it, and the CPU
    /// commands always (they say what diag is for, and the table says how to enable it).
    pub(crate) fn shows_commands(self) -> bool {
        self == Self::Cpu || self.compiled()
    }
}

#[cfg(feature = "heap")]
fn heap_check() -> Result<(), Unavailable> {
    crate::heap::available().map_err(Unavailable::because)
}

#[cfg(not(feature = "heap"))]
fn heap_check() -> Result<(), Unavailable> {
    Err(Part::Heap.missing())
}

#[cfg(feature = "taskdump")]
fn tasks_check() -> Result<(), Unavailable> {
    crate::tasks::available().map_err(Unavailable::because)
}

#[cfg(not(feature = "taskdump"))]
fn tasks_check() -> Result<(), Unavailable> {
    Err(Part::Tasks.missing())
}

#[cfg(feature = "trace")]
fn trace_check() -> Result<(), Unavailable> {
    crate::trace::available().map_err(Unavailable::because)
}

#[cfg(not(feature = "trace"))]
fn trace_check() -> Result<(), Unavailable> {
    Err(Part::Trace.missing())
}

/// Whether diag's CPU sampler runs on this platform.
const CPU_PLATFORM: bool = cfg!(diag_engine);

const CPU_MISSING: &str = "this build has no CPU profiling: enable diag's `cpu` feature \
     (on by default), e.g. diag = { version = \"..\", features = [\"cpu\"] }";

const CPU_UNSUPPORTED: &str = "CPU profiling needs Linux on x86_64 or aarch64 (diag's own      sampler: per-thread CPU timers and a frame-pointer walk); this build is for another      platform";

const HEAP_MISSING: &str = "this build has no heap profiling: enable diag's `heap` \
     feature (diag = { version = \"..\", features = [\"heap\"] }) and install tikv-jemallocator \
     as the global allocator; see docs/guide.md";

const TRACE_MISSING: &str = "this build has no /trace: enable diag's `trace` feature and add \
     diag::trace::layer() to the application's tracing subscriber";

const TASKS_MISSING: &str = "this build has no task dumps: enable diag's `taskdump` feature \
     (and build with RUSTFLAGS=\"--cfg tokio_unstable\", on Linux x86, x86_64, aarch64 or \
     s390x)";
