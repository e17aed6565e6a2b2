//! inferd: a model-serving runtime, as a library.
//!
//! The `inferd` binary is a thin command line over this crate; other Rust services can embed the
//! same pieces: load a model with [`load::load_model`] and call its batcher in-process (see
//! `examples/embedded.rs`), or run the whole HTTP server with [`serve`].
//!
//! The parts, one crate each:
//! - [`core`]: devices, the dynamic batcher, the generation scheduler, admission, the model
//!   registry, metrics;
//! - [`classical`]: linear and logistic regression, XGBoost and LightGBM trees;
//! - [`transformers`]: tokenizers, model sources (folders, the Hugging Face hub), sentence
//!   embeddings, and Llama-family decoders from GGUF and safetensors;
//! - [`server`]: the HTTP APIs (Open Inference Protocol, OpenAI-compatible);
//! - [`advise`]: the load generator, the VM catalogue and cost model, the CPU-or-GPU report.

pub mod config;
pub mod load;
pub mod model_spec;

use std::future::Future;
use std::sync::Arc;

pub use inferd_advise as advise;
pub use inferd_classical as classical;
pub use inferd_core as core;
pub use inferd_server as server;
pub use inferd_transformers as transformers;

use config::{Config, ConfigError};
use std::collections::HashMap;

use inferd_core::{Device, DeviceError, DeviceSpec, Metrics, ModelRegistry, device_name};
use inferd_server::outbound::Outbound;
use inferd_server::{AppState, Telemetry, TlsListener, TlsSettings};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A model's device cannot be used.
    #[error("model '{model}': {source}")]
    Device {
        /// The model.
        model: String,
        /// Why its device cannot be used.
        source: DeviceError,
    },
    /// The server's settings or credentials' files cannot be used.
    #[error(transparent)]
    State(#[from] inferd_server::StateError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] inferd_server::tls::TlsError),
    /// Trace export cannot start.
    #[error(transparent)]
    Telemetry(#[from] inferd_server::telemetry::TelemetryError),
    /// The listening socket could not be opened or failed.
    #[error("cannot serve on {address}: {source}")]
    Io {
        /// The address.
        address: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Serves `config` until `shutdown` completes, then drains and closes every model.
///
/// Devices are resolved first, so a model asking for a device this build or machine lacks stops
/// the start with an error naming it. The server then listens at once while models load
/// concurrently; readiness reports each model's state, and a model that fails to load leaves
/// the others serving.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    config.validate()?;
    let requested = std::env::var("INFERD_CPU").ok().filter(|value| !value.trim().is_empty());
    tracing::info!(
        kernels = %inferd_core::cpu_level(),
        cpu_offers = %inferd_core::cpu::detected(),
        requested = requested.as_deref().unwrap_or("the widest (INFERD_CPU unset)"),
        "CPU kernels chosen"
    );
    // SIGHUP reloads credentials once serving; until then (models loading) it must not end the
    // process, which is its default action. Tokio keeps a handler once one is registered.
    #[cfg(unix)]
    let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    // Each distinct device is opened once and shared, so models on one GPU share its context.
    let mut opened: HashMap<DeviceSpec, Device> = HashMap::new();
    let mut devices = Vec::with_capacity(config.models.len());
    for model in &config.models {
        let device = match opened.get(&model.device) {
            Some(device) => device.clone(),
            None => {
                let device = model
                    .device
                    .resolve()
                    .map_err(|source| ServeError::Device { model: model.name.clone(), source })?;
                opened.insert(model.device, device.clone());
                device
            }
        };
        tracing::info!(model = %model.name, requested = %model.device, device = %device_name(&device), "device chosen");
        devices.push(device);
    }

    let metrics = Arc::new(Metrics::new());
    let names = config.models.iter().map(|model| model.name.clone());
    let registry =
        Arc::new(ModelRegistry::new(names, Arc::clone(&metrics)).map_err(|err| ConfigError::Invalid(err.to_string()))?);
    for (model, device) in config.models.iter().cloned().zip(devices) {
        registry.load(&model.name.clone(), move |metrics| load::load_model(&model, &device, metrics));
    }

    let address = config.server.listen;
    let tls = config.server.tls.as_ref().map(TlsSettings::acceptor).transpose()?;
    let telemetry_settings = config.server.telemetry.clone();
    let outbound = Outbound::new(config.server.ca_file.as_deref(), std::time::Duration::from_secs(10))
        .map_err(|err| ConfigError::Invalid(err.to_string()))?;
    // The exporters' HTTP client is a blocking one: start and stop them off the async threads.
    let telemetry = tokio::task::spawn_blocking(move || Telemetry::start(&telemetry_settings, &outbound, metrics))
        .await
        .map_err(|err| ConfigError::Invalid(format!("trace exporter: {err}")))??
        .map(Arc::new);
    let mut state = AppState::new(Arc::clone(&registry), config.server)?;
    if !state.authenticator().is_enabled() {
        tracing::warn!("no authentication configured: every request is served");
    }
    if let Some(telemetry) = &telemetry {
        state = state.with_telemetry(Arc::clone(telemetry));
    }
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|source| ServeError::Io { address, source })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Io { address, source })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %bound, scheme, models = config.models.len(), "listening");
    let served = match tls {
        Some(acceptor) => {
            let listener = TlsListener::new(listener, acceptor).map_err(|source| ServeError::Io { address, source })?;
            inferd_server::serve(listener, state, shutdown).await
        }
        None => inferd_server::serve(listener, state, shutdown).await,
    };
    if let Some(telemetry) = telemetry {
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    if let Err(source) = served {
        registry.close_all();
        return Err(ServeError::Io { address, source });
    }

    // In-flight HTTP requests are done; close the queues (workers finish what is queued, then
    // exit on their own).
    registry.close_all();
    tracing::info!("stopped");
    Ok(())
}
