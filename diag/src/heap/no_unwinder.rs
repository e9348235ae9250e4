//! Without diag's CPU engine there is no walker to give jemalloc: its own stays.

/// Who unwinds jemalloc's samples: always jemalloc here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unwinder {
    /// jemalloc's own unwinder; why.
    Jemalloc(String),
}

impl Unwinder {
    /// The `X-Diag-Heap-Unwinder` header's value.
    pub(crate) fn name(&self) -> &'static str {
        "jemalloc"
    }

    /// One sentence for the profile's comment.
    pub(crate) fn describe(&self) -> String {
        let Self::Jemalloc(why) = self;
        format!("stacks unwound by jemalloc's own unwinder ({why})")
    }
}

pub(crate) fn apply(_on: bool) {}

pub(crate) fn refresh() {}

pub(crate) fn current() -> Unwinder {
    Unwinder::Jemalloc(
        "diag's frame-pointer walker needs the cpu feature on Linux x86_64 or aarch64".to_owned(),
    )
}
