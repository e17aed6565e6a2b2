//! The Open Inference Protocol (KServe v2, Triton, MLServer) over REST.
//!
//! Health (`/v2/health/live`, `/v2/health/ready`), server and model metadata (`/v2`,
//! `/v2/models/{name}`), model readiness (`/v2/models/{name}/ready`) and inference
//! (`POST /v2/models/{name}/infer`), each also under `/v2/models/{name}/versions/{version}`.
//! Every model has the single version `1`. Errors are `{"error": "..."}`.

pub mod codec;
mod embedding;
mod tabular;

use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use inferd_core::{InferError, ModelStatus, ModelTask, ServedModel};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::embedding::Embedded;
use crate::error::{V2Error, rejected_body_message};
use crate::payload;
use crate::state::{AppState, labelled};
use crate::timing::{Stage, Timing};

/// The request's one input, which must be named `name`.
fn single_input(inputs: Vec<codec::InputTensor>, name: &str) -> Result<codec::InputTensor, V2Error> {
    let [input] = <[_; 1]>::try_from(inputs).map_err(|inputs| {
        V2Error::bad_request(format!("this model takes exactly one input, '{name}'; the request has {}", inputs.len()))
    })?;
    if input.name != name {
        return Err(V2Error::bad_request(format!("unknown input '{}': this model's input is '{name}'", input.name)));
    }
    Ok(input)
}

/// The one version every model has.
const VERSION: &str = "1";
/// The header that splits a body into its JSON and binary parts.
const HEADER_LENGTH: &str = "inference-header-content-length";

/// The protocol's routes. Each model route answers with and without `/versions/{version}`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
}

/// A model route's path parameters.
#[derive(Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

impl ModelPath {
    /// Checks the version, when the path names one.
    fn check_version(&self) -> Result<(), V2Error> {
        match &self.version {
            Some(version) if version != VERSION => Err(V2Error::new(
                StatusCode::NOT_FOUND,
                format!("model '{}' has no version '{version}' (only '{VERSION}')", self.name),
            )),
            _ => Ok(()),
        }
    }
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "inferd",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// Ready when every configured model is ready and the server is not draining; otherwise 503,
/// saying which models are not ready and why.
async fn ready(State(state): State<AppState>) -> Response {
    let statuses = state.registry.statuses();
    let models: serde_json::Map<String, Value> = statuses
        .iter()
        .map(|(name, status)| {
            let text = match status {
                ModelStatus::Loading => "loading".to_string(),
                ModelStatus::Ready => "ready".to_string(),
                // Readiness is public: with authentication on, keep load errors (which may
                // name files) to the log.
                ModelStatus::Failed(_) if state.auth.is_enabled() => "failed".to_string(),
                ModelStatus::Failed(reason) => format!("failed: {reason}"),
            };
            (name.clone(), Value::from(text))
        })
        .collect();
    let draining = state.is_draining();
    let is_ready = !draining && statuses.iter().all(|(_, status)| *status == ModelStatus::Ready);
    let status = if is_ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({ "ready": is_ready, "draining": draining, "models": models });
    if !is_ready {
        let reason = if draining { "the server is draining" } else { "not every model is ready" };
        body["error"] = Value::from(reason);
    }
    (status, Json(body)).into_response()
}

async fn model_metadata(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<ModelPath>,
) -> Response {
    let result = path.check_version().and_then(|()| {
        let model = state.model(&caller, &path.name)?;
        Ok(Json(metadata(&model)))
    });
    labelled(&state, &path.name, result)
}

fn metadata(model: &ServedModel) -> Value {
    match &model.task {
        ModelTask::Tabular(service) => {
            let schema = service.schema();
            let outputs: Vec<Value> = schema
                .outputs
                .iter()
                .map(|output| {
                    let mut shape = vec![-1i64];
                    shape.extend(output.row_shape.iter().map(|&d| d as i64));
                    json!({ "name": output.name, "datatype": tabular::metadata_datatype(output.kind), "shape": shape })
                })
                .collect();
            let defaults: Vec<&str> = schema.outputs.iter().filter(|o| o.default).map(|o| o.name.as_str()).collect();
            json!({
                "name": model.name,
                "versions": [VERSION],
                "platform": schema.platform,
                "inputs": [{ "name": tabular::INPUT, "datatype": "FP64", "shape": [-1, schema.n_features] }],
                "outputs": outputs,
                "parameters": {
                    "device": model.device,
                    "engine": model.engine,
                    "default_outputs": defaults,
                    "feature_names": schema.feature_names,
                    "accepts_non_finite_values": schema.accepts_non_finite,
                    "max_batch_size": service.policy().max_batch_size,
                },
            })
        }
        ModelTask::Embedding(service) => {
            let info = service.info();
            json!({
                "name": model.name,
                "versions": [VERSION],
                "platform": info.platform,
                "inputs": [{ "name": embedding::INPUT, "datatype": "BYTES", "shape": [-1] }],
                "outputs": [{ "name": embedding::OUTPUT, "datatype": "FP32", "shape": [-1, info.dimensions] }],
                "parameters": {
                    "device": model.device,
                    "engine": model.engine,
                    "max_seq_length": info.max_seq_length,
                    "normalized": info.normalized,
                    "max_batch_size": service.policy().max_batch_size,
                    "max_batch_tokens": service.policy().max_batch_tokens,
                },
            })
        }
        ModelTask::Generation(service) => {
            let info = service.info();
            json!({
                "name": model.name,
                "versions": [VERSION],
                "platform": info.platform,
                "inputs": [],
                "outputs": [],
                "parameters": {
                    "device": model.device,
                    "engine": model.engine,
                    "context_length": info.context_length,
                    "vocab_size": info.vocab_size,
                    "max_running_sequences": service.policy().max_running_sequences,
                    "max_total_tokens": service.policy().max_total_tokens,
                    "endpoints": ["/v1/chat/completions", "/v1/completions"],
                },
            })
        }
    }
}

async fn model_ready(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<ModelPath>,
) -> Response {
    let name = &path.name;
    let response = match path.check_version().map(|()| state.model(&caller, name)) {
        Err(err) => err.into_response(),
        Ok(Ok(_)) => (StatusCode::OK, Json(json!({ "name": name, "ready": true }))).into_response(),
        Ok(Err(err @ (InferError::ModelNotFound(_) | InferError::PermissionDenied(_)))) => {
            V2Error::from(err).into_response()
        }
        Ok(Err(err)) => {
            let body = json!({ "name": name, "ready": false, "error": err.to_string() });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    };
    labelled(&state, name, response)
}

async fn infer(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
    Extension(caller): Extension<Caller>,
    Extension(timing): Extension<Timing>,
    request: Request,
) -> Response {
    let result = match path.check_version() {
        Ok(()) => run_infer(&state, &caller, &timing, &path.name, request).await,
        Err(err) => Err(err),
    };
    labelled(&state, &path.name, result)
}

async fn run_infer(
    state: &AppState,
    caller: &Caller,
    timing: &Timing,
    name: &str,
    request: Request,
) -> Result<Response, V2Error> {
    let received = Instant::now();
    let header_length = request.headers().get(HEADER_LENGTH).cloned();
    // A request for an unknown model, or one the model's queue would refuse, is refused before
    // its body is buffered or its tensors decoded: under overload most requests are refused, and
    // what each refusal costs is taken from the requests being served.
    let admitted = state.model(caller, name).and_then(|model| model.check_admission().map(|()| model));
    let model = match admitted {
        Ok(model) => model,
        Err(err) => {
            payload::discard(request, state.settings.max_body_bytes).await;
            return Err(err.into());
        }
    };
    let body = Bytes::from_request(request, &()).await.map_err(|rejection| {
        let message = rejected_body_message(&rejection, state.settings.max_body_bytes);
        V2Error::new(rejection.status(), message).closing_connection()
    })?;
    let header_length = match header_length {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<usize>().ok())
                .ok_or_else(|| V2Error::bad_request("Inference-Header-Content-Length must be a byte count"))?,
        ),
    };
    let request = codec::decode_request(&body, header_length).map_err(V2Error::bad_request)?;
    timing.mark(Stage::Parse);
    // The server's deadline, shortened by the client's own timeout when it asks for less.
    let client_deadline = request.timeout_us.and_then(|us| received.checked_add(Duration::from_micros(us)));
    let deadline = match (timing.deadline(), client_deadline) {
        (Some(server), Some(client)) => Some(server.min(client)),
        (server, client) => server.or(client),
    };
    let id = request.id.clone();
    let (outputs, embedded) = match &model.task {
        ModelTask::Tabular(service) => (tabular::infer(service, request, deadline, timing).await?, None),
        ModelTask::Embedding(_) => {
            let (outputs, embedded) = embedding::infer(state, &model, request, deadline, caller, timing).await?;
            (outputs, Some(embedded))
        }
        ModelTask::Generation(_) => {
            return Err(V2Error::bad_request(format!(
                "model '{name}' generates text: use POST /v1/chat/completions or /v1/completions"
            )));
        }
    };
    let encoded = codec::encode_response(name, id.as_deref(), &outputs);
    let mut response = encoded.body.into_response();
    let response_headers = response.headers_mut();
    match encoded.header_length {
        Some(length) => {
            response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            response_headers.insert(HEADER_LENGTH, HeaderValue::from(length));
        }
        None => {
            response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    timing.mark(Stage::Serialize);
    if let Some(embedded) = embedded {
        Embedded::settle(embedded.reservation, embedded.tokens, &mut response);
    }
    Ok(response)
}
