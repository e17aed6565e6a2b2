//! The axum application: shared state, routes, and the request-observing middleware.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use inferd_core::{BatchStats, Metrics, ModelRegistry};

use crate::error::V2Error;
use crate::settings::ServerSettings;
use crate::{openai, v2};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub(crate) registry: Arc<ModelRegistry>,
    pub(crate) settings: Arc<ServerSettings>,
    /// When the server started, as OpenAI's model listing reports it.
    pub(crate) started: SystemTime,
    draining: Arc<AtomicBool>,
}

impl AppState {
    /// State over `registry`'s models.
    pub fn new(registry: Arc<ModelRegistry>, settings: ServerSettings) -> Self {
        Self {
            registry,
            settings: Arc::new(settings),
            started: SystemTime::now(),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The models served.
    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        self.registry.metrics()
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

/// Makes batching observable per request: `Server-Timing` with the queue and compute stages in
/// milliseconds, and `inferd-batch-size` with the items in the batch that answered it.
pub(crate) fn insert_batch_headers(headers: &mut HeaderMap, stats: &BatchStats) {
    let timing = format!(
        "queue;dur={:.3}, compute;dur={:.3}",
        stats.queue_time.as_secs_f64() * 1e3,
        stats.compute_time.as_secs_f64() * 1e3
    );
    if let Ok(value) = HeaderValue::from_str(&timing) {
        headers.insert("server-timing", value);
    }
    headers.insert("inferd-batch-size", HeaderValue::from(stats.batch_size));
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.max_body_bytes;
    Router::new()
        .merge(v2::routes())
        .merge(openai::routes())
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts and times every request by model, endpoint and status.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    let model = response.extensions().get::<ModelLabel>().map_or("", |label| label.0.as_str());
    state.metrics().observe_request(model, &endpoint, response.status().as_u16(), started.elapsed());
    response
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics().render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

async fn not_found(request: Request) -> V2Error {
    V2Error::new(StatusCode::NOT_FOUND, format!("no route for {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> V2Error {
    V2Error::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {} is not allowed on {}", request.method(), request.uri().path()),
    )
}
