//! What every handler shares: the models, the settings, the credentials checker, the
//! concurrency limit, the drain flag; and what handlers attach to responses for the observer
//! (model label, token usage).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::response::{IntoResponse, Response};
use inferd_core::admission::MovingAverage;
use inferd_core::{InferError, Metrics, ModelRegistry, ServedModel};
use tokio::sync::Semaphore;

use crate::auth::{AuthError, Authenticator, Caller};
use crate::outbound::Outbound;
use crate::settings::ServerSettings;
use crate::telemetry::Telemetry;

/// How long a call to the identity provider may take.
const OUTBOUND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server's state cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The settings are out of range or unsafe (see [`ServerSettings::validate`]).
    #[error("invalid server settings: {0}")]
    Settings(String),
    /// The credentials' files cannot be used.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// What every handler shares. Cloned for every middleware and handler of every request, so it
/// is one `Arc`.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

/// The state itself, reached through [`AppState`]'s `Deref`.
#[derive(Clone)]
pub struct Shared {
    pub(crate) registry: Arc<ModelRegistry>,
    pub(crate) settings: Arc<ServerSettings>,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) telemetry: Option<Arc<Telemetry>>,
    /// One permit per inference request being answered, up to `max_concurrent_requests`.
    pub(crate) concurrency: Arc<Semaphore>,
    /// Moving average of inference request durations, in seconds, from which `Retry-After` is
    /// estimated when the server is at its concurrency limit.
    request_seconds: Arc<Mutex<MovingAverage>>,
    /// When the server started, as OpenAI's model listing reports it.
    pub(crate) started: SystemTime,
    draining: Arc<AtomicBool>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl AppState {
    /// State over `registry`'s models; reads the key and JWKS files the settings name.
    pub fn new(registry: Arc<ModelRegistry>, settings: ServerSettings) -> Result<Self, StateError> {
        settings.validate().map_err(StateError::Settings)?;
        let outbound = Outbound::new(settings.ca_file.as_deref(), OUTBOUND_TIMEOUT)
            .map_err(|err| StateError::Settings(err.to_string()))?;
        let auth = Authenticator::new(settings.auth.clone(), &outbound)?;
        let shared = Shared {
            registry,
            concurrency: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            settings: Arc::new(settings),
            auth: Arc::new(auth),
            telemetry: None,
            request_seconds: Arc::default(),
            started: SystemTime::now(),
            draining: Arc::new(AtomicBool::new(false)),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Exports a trace of every request through `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        Arc::make_mut(&mut self.shared).telemetry = Some(telemetry);
        self
    }

    /// The models served.
    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    /// The credentials checker, to reload its files.
    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        self.registry.metrics()
    }

    /// The model `name`, if it exists and `caller` may use it.
    pub(crate) fn model(&self, caller: &Caller, name: &str) -> Result<Arc<ServedModel>, InferError> {
        caller.check_model(name)?;
        self.registry.get(name)
    }

    /// Folds a finished inference request's duration into the moving average.
    pub(crate) fn record_request_time(&self, elapsed: Duration) {
        self.request_seconds.lock().unwrap_or_else(PoisonError::into_inner).observe(elapsed.as_secs_f64());
    }

    /// When a request refused at the concurrency limit may usefully retry: the requests in
    /// flight finish in about one average request duration, at least a second.
    pub(crate) fn busy_retry_after(&self) -> Duration {
        let average = self.request_seconds.lock().unwrap_or_else(PoisonError::into_inner).value().unwrap_or(0.0);
        let longest = self.settings.request_timeout.as_secs_f64().ceil().max(1.0);
        Duration::from_secs(average.ceil().max(1.0).min(longest) as u64)
    }

    /// Marks the server as draining: readiness turns false so balancers stop sending traffic.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// The model a response was about, set by handlers so that metrics can label it. Only names of
/// configured models are recorded, so arbitrary names in requests cannot grow the label set.
#[derive(Clone)]
pub(crate) struct ModelLabel(pub(crate) String);

/// Attaches the model label for metrics, when the name is a configured model.
pub(crate) fn labelled(state: &AppState, name: &str, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    if state.registry.contains(name) {
        response.extensions_mut().insert(ModelLabel(name.to_string()));
    }
    response
}

/// Tokens a request processed, set by handlers for metrics, quotas and logs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TokenUsage {
    pub(crate) prompt: u64,
    pub(crate) completion: u64,
}
