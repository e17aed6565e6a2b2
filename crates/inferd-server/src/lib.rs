//! inferd's HTTP server: the Open Inference Protocol (v2) and OpenAI-compatible routes, health
//! and readiness,
//! Prometheus metrics and graceful shutdown, over the models of an
//! [`inferd_core::ModelRegistry`].
//!
//! ```no_run
//! # async fn run(registry: std::sync::Arc<inferd_core::ModelRegistry>) -> std::io::Result<()> {
//! use inferd_server::{AppState, ServerSettings};
//! let settings = ServerSettings::default();
//! let listener = tokio::net::TcpListener::bind(settings.listen).await?;
//! inferd_server::serve(listener, AppState::new(registry, settings), inferd_server::shutdown_signal()).await
//! # }
//! ```

mod app;
mod error;
pub mod openai;
mod serve;
mod settings;
pub mod v2;

pub use app::{AppState, router};
pub use serve::{serve, shutdown_signal};
pub use settings::ServerSettings;
