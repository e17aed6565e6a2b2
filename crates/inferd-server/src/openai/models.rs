//! `GET /v1/models` and `GET /v1/models/{id}`: the configured models, as OpenAI lists them.

use std::time::UNIX_EPOCH;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use inferd_core::InferError;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::OpenAiError;
use crate::state::{AppState, labelled};

fn entry(name: &str, created: u64) -> Value {
    json!({ "id": name, "object": "model", "created": created, "owned_by": "inferd" })
}

/// When the server started, as the `created` time of every model.
fn created(state: &AppState) -> u64 {
    state.started.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

/// Every configured model the caller may use, ready or not (readiness says which are ready).
pub(crate) async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> Json<Value> {
    let created = created(&state);
    let data: Vec<Value> = state
        .registry
        .statuses()
        .iter()
        .filter(|(name, _)| caller.may_use(name))
        .map(|(name, _)| entry(name, created))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// One configured model.
pub(crate) async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    // Permission first, so that a restricted caller cannot tell which other models exist.
    let response = if let Err(err) = caller.check_model(&id) {
        OpenAiError::from(err).into_response()
    } else if !state.registry.contains(&id) {
        OpenAiError::from(InferError::ModelNotFound(id.clone())).into_response()
    } else {
        Json(entry(&id, created(&state))).into_response()
    };
    labelled(&state, &id, response)
}
