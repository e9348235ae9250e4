//! A shutdown signal shared by the application and diag.

use std::sync::Arc;

use tokio::sync::watch;

/// A one-way switch: once [`Shutdown::trigger`] is called, every clone reports it and every
/// [`Shutdown::triggered`] future completes.
///
/// The application triggers it when it begins to stop; diag then ends profiles in flight
/// early (answering with what they have) and refuses new heavy work with 503.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// A switch that has not been triggered.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Flips the switch. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the switch has been flipped.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Completes once the switch has been flipped (at once if it already was).
    pub async fn triggered(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we borrow it.
        let _ = rx.wait_for(|flipped| *flipped).await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_see_the_trigger() {
        let a = Shutdown::new();
        let b = a.clone();
        assert!(!b.is_triggered());
        let waiter = tokio::spawn(async move { b.triggered().await });
        a.trigger();
        waiter.await.expect("waiter finished");
        assert!(a.is_triggered());
        // Already triggered: completes at once.
        a.triggered().await;
    }
}
