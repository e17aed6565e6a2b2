//! Serving: the accept loop, each connection's HTTP/1 settings, and graceful shutdown.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use crate::app::router;
use crate::auth::Authenticator;
use crate::parse_refusals::ShapedRefusals;
use crate::state::AppState;

/// Serves `state` on `listener` until `shutdown` completes. Then:
/// 1. readiness turns false (503, `"draining": true`) while the server goes on serving for the
///    drain delay, so that load balancers stop sending it new requests;
/// 2. the listener closes, idle connections close, and in-flight requests finish, for at most
///    the drain timeout.
///
/// At most `max_connections` connections are open at once (more wait in the listen backlog),
/// and a connection that takes longer than `header_read_timeout` to send a request's headers,
/// or stays idle that long between requests, is closed.
///
/// Connections still busy at the drain timeout are abandoned, not cancelled: `serve` returns and
/// their tasks end when the tokio runtime shuts down (as the `inferd` binary does right after).
/// Models are not closed here: the caller owns the registry and closes it afterwards.
///
/// `listener` is a `tokio::net::TcpListener` for HTTP or a [`crate::TlsListener`] for HTTPS.
/// On Unix, SIGHUP reads the keys file and JWKS file again. Signing keys fetched from an identity
/// provider are fetched at once and then every `jwks_refresh`.
pub async fn serve<L>(
    mut listener: L,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: Debug,
{
    #[cfg(unix)]
    let reloader = tokio::spawn(reload_on_hangup(state.clone()));
    let auth = Arc::clone(&state.auth);
    let key_refresher = tokio::spawn(async move { auth.keep_keys_fresh().await });
    let watcher = tokio::spawn(reload_on_change(Arc::clone(&state.auth)));
    let settings = Arc::clone(&state.settings);
    let draining_state = state.clone();
    let drain_delay = settings.drain_delay;
    let draining = async move {
        shutdown.await;
        draining_state.start_draining();
        if !drain_delay.is_zero() {
            tracing::info!(delay = ?drain_delay, "shutting down: readiness is false; still serving during the drain delay");
            tokio::time::sleep(drain_delay).await;
        }
    };
    tokio::pin!(draining);

    let service = TowerToHyperService::new(router(state));
    let mut http = http1::Builder::new();
    // hyper's default limit of 100 header lines stands (431 past it, in the protocol's shape through
    // ShapedRefusals): setting any limit makes hyper allocate and fill that many header slots for
    // every request, which was 3% of a one-row request's time.
    http.timer(TokioTimer::new()).header_read_timeout(settings.header_read_timeout);
    let open = Arc::new(Semaphore::new(settings.max_connections));
    let connections = GracefulShutdown::new();
    loop {
        let place = tokio::select! {
            () = &mut draining => break,
            place = Arc::clone(&open).acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => break,
            },
        };
        let (io, peer) = tokio::select! {
            () = &mut draining => break,
            accepted = listener.accept() => accepted,
        };
        let connection =
            connections.watch(http.serve_connection(TokioIo::new(ShapedRefusals::new(io)), service.clone()));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(?peer, %err, "connection closed on an error");
            }
            drop(place);
        });
    }
    drop(listener);
    let drain_timeout = settings.drain_timeout;
    tracing::info!(timeout = ?drain_timeout, "shutting down: listener closed; draining in-flight requests");
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!(timeout = ?drain_timeout, "drain timeout reached; abandoning requests still in flight");
        }
    }
    #[cfg(unix)]
    reloader.abort();
    key_refresher.abort();
    watcher.abort();
    Ok(())
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

/// Reads the credentials' files again when they change on disk (a rotated Kubernetes Secret or
/// Key Vault mount), looking every `auth.watch_interval`; a file that fails to load leaves the
/// previous credentials in force.
async fn reload_on_change(auth: Arc<Authenticator>) {
    let interval = auth.watch_interval();
    if interval.is_zero() {
        return;
    }
    let mut seen = auth.file_stamps();
    loop {
        tokio::time::sleep(interval).await;
        let now = auth.file_stamps();
        if now == seen {
            continue;
        }
        seen = now;
        let reloading = Arc::clone(&auth);
        match tokio::task::spawn_blocking(move || reloading.reload_files()).await {
            Ok(Ok(keys)) => tracing::info!(keys, "credentials' files changed: reloaded"),
            Ok(Err(err)) => {
                tracing::error!(%err, "credentials' files changed: reload failed; the previous credentials stay in force");
            }
            Err(err) => tracing::error!(%err, "credentials' files changed: reload failed"),
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
