//! What every handler shares: the configuration and the heavy-operation cap.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::error::ApiError;

/// diag's state, cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Diag {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: Config,
    heavy: Arc<Semaphore>,
}

impl Diag {
    pub(crate) fn new(cfg: Config) -> Self {
        #[cfg(feature = "heap")]
        crate::heap::apply_unwinder(cfg.heap_frame_pointers);
        let heavy = Arc::new(Semaphore::new(cfg.max_concurrent));
        Self {
            inner: Arc::new(Inner { cfg, heavy }),
        }
    }

    pub(crate) fn cfg(&self) -> &Config {
        &self.inner.cfg
    }

    /// A permit for one heavy operation (a profile, a dump), held until it answers:
    /// 503 once shutdown has begun, 429 with `Retry-After` when the cap is reached.
    pub(crate) fn heavy(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if self.cfg().shutdown.is_triggered() {
            return Err(ApiError::Unavailable {
                message: "shutting down: no new profiles are started".to_owned(),
                retry_after: None,
            });
        }
        self.inner
            .heavy
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyRequests {
                limit: self.cfg().max_concurrent,
                retry_after: self.cfg().retry_after,
            })
    }

    /// `seconds` from the query: `default` when absent, else 1 ..= the configured cap.
    pub(crate) fn seconds(
        &self,
        params: &crate::params::Params,
        default: u64,
    ) -> Result<u64, ApiError> {
        let max = self.cfg().max_seconds;
        params.int_in("seconds", default.min(max), 1, max)
    }
}
