//! Graceful shutdown: on SIGTERM or SIGINT, readiness fails at once, the server keeps serving for
//! the shutdown delay (Kubernetes needs a moment to take the pod out of its endpoints; requests
//! routed to it meanwhile must still succeed), then stops accepting and drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

/// Shared by the probes, the signal handler and the servers. Cheap to clone.
#[derive(Clone, Default)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    /// Fired when shutdown begins (signal or [`Lifecycle::begin_shutdown`]).
    requested: CancellationToken,
    /// Fired after the delay: the listeners stop accepting.
    stop_accepting: CancellationToken,
}

impl Lifecycle {
    /// True from the moment shutdown begins; `/readyz` answers 503.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Starts shutdown as a signal would (tests and embedders use this).
    pub fn begin_shutdown(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.inner.requested.cancel();
    }

    pub async fn shutdown_requested(&self) {
        self.inner.requested.cancelled().await;
    }

    pub(crate) fn stop_accepting(&self) {
        self.inner.stop_accepting.cancel();
    }

    pub async fn accepting_stopped(&self) {
        self.inner.stop_accepting.cancelled().await;
    }
}

/// Resolves on the first SIGTERM (Kubernetes, `docker stop`) or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}
