//! Serving with graceful shutdown.

use std::fmt::Debug;
use std::future::Future;

use axum::serve::Listener;

use crate::app::{AppState, router};

/// Serves `state` on `listener` until `shutdown` completes. Then:
/// 1. readiness turns false (503, `"draining": true`) while the server goes on serving for the
///    drain delay, so that load balancers stop sending it new requests;
/// 2. the listener closes, idle connections close, and in-flight requests finish, for at most
///    the drain timeout.
///
/// Connections still busy at the drain timeout are abandoned, not cancelled: `serve` returns and
/// their tasks end when the tokio runtime shuts down (as the `inferd` binary does right after).
/// Models are not closed here: the caller owns the registry and closes it afterwards.
///
/// `listener` is a `tokio::net::TcpListener` for HTTP or a [`crate::TlsListener`] for HTTPS.
/// On Unix, SIGHUP reads the keys file and JWKS file again.
pub async fn serve<L>(
    listener: L,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: Debug,
{
    #[cfg(unix)]
    let reloader = tokio::spawn(reload_on_hangup(state.clone()));
    let drain_delay = state.settings.drain_delay;
    let drain_timeout = state.settings.drain_timeout;
    let (drain_started, drain_signal) = tokio::sync::oneshot::channel::<()>();
    let draining_state = state.clone();
    let signal = async move {
        shutdown.await;
        draining_state.start_draining();
        if !drain_delay.is_zero() {
            tracing::info!(delay = ?drain_delay, "shutting down: readiness is false; still serving during the drain delay");
            tokio::time::sleep(drain_delay).await;
        }
        tracing::info!(timeout = ?drain_timeout, "shutting down: listener closed; draining in-flight requests");
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
    let served = tokio::select! {
        served = server => served,
        () = deadline => {
            tracing::warn!(timeout = ?drain_timeout, "drain timeout reached; abandoning requests still in flight");
            Ok(())
        }
    };
    #[cfg(unix)]
    reloader.abort();
    served
}

/// Reloads the credentials' files on each SIGHUP; a file that fails to load leaves the previous
/// credentials in force.
#[cfg(unix)]
async fn reload_on_hangup(state: AppState) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::error!(%err, "cannot listen for SIGHUP; credentials will not be reloaded");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let auth = std::sync::Arc::clone(state.authenticator());
        match tokio::task::spawn_blocking(move || auth.reload()).await {
            Ok(Ok(keys)) => tracing::info!(keys, "SIGHUP: credentials reloaded"),
            Ok(Err(err)) => tracing::error!(%err, "SIGHUP: reload failed; the previous credentials stay in force"),
            Err(err) => tracing::error!(%err, "SIGHUP: reload failed"),
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
