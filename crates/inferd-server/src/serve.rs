//! Serving with graceful shutdown.

use std::future::Future;

use tokio::net::TcpListener;

use crate::app::{AppState, router};

/// Serves `state` on `listener` until `shutdown` completes; then stops accepting connections,
/// turns readiness false, and lets in-flight requests finish for at most the drain timeout.
/// Models are not closed here: the caller owns the registry and closes it afterwards.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let drain_timeout = state.settings.drain_timeout;
    let (drain_started, drain_signal) = tokio::sync::oneshot::channel::<()>();
    let draining_state = state.clone();
    let signal = async move {
        shutdown.await;
        draining_state.start_draining();
        tracing::info!(timeout = ?drain_timeout, "shutting down: draining in-flight requests");
        let _ = drain_started.send(());
    };
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(signal);
    let deadline = async move {
        // Resolves only once draining has started (a dropped sender means the server ended first).
        if drain_signal.await.is_ok() {
            tokio::time::sleep(drain_timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served,
        () = deadline => {
            tracing::warn!(timeout = ?drain_timeout, "drain timeout reached; closing remaining connections");
            Ok(())
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
