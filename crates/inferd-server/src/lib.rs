//! inferd's HTTP server: the Open Inference Protocol (v2) and OpenAI-compatible routes over the
//! models of an [`inferd_core::ModelRegistry`], with what running it in production takes: API
//! keys and JWT, per-caller quotas, a concurrency limit, timeouts, Prometheus metrics,
//! `Server-Timing`, request logs, OpenTelemetry traces, TLS, health, readiness and graceful
//! shutdown.
//!
//! ```no_run
//! # async fn run(registry: std::sync::Arc<inferd_core::ModelRegistry>) -> std::io::Result<()> {
//! use inferd_server::{AppState, ServerSettings};
//! let settings = ServerSettings::default();
//! let listener = tokio::net::TcpListener::bind(settings.listen).await?;
//! let state = AppState::new(registry, settings).expect("no key files to read");
//! inferd_server::serve(listener, state, inferd_server::shutdown_signal()).await
//! # }
//! ```

mod app;
pub mod auth;
mod edge;
mod embedding;
mod error;
mod guard;
mod observe;
mod openai;
pub mod outbound;
mod parse_refusals;
mod payload;
mod quota;
mod serve;
mod settings;
mod state;
pub mod telemetry;
mod timing;
pub mod tls;
mod v2;

pub use app::router;
pub use auth::{AuthSettings, Authenticator, Caller, hash_key};
pub use quota::Limits;
pub use serve::{serve, shutdown_signal};
pub use settings::ServerSettings;
pub use state::{AppState, StateError};
pub use telemetry::{Telemetry, TelemetrySettings};
pub use tls::{TlsListener, TlsSettings};
