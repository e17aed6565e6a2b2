//! The OpenAI-compatible API: `POST /v1/embeddings`, `POST /v1/chat/completions`,
//! `POST /v1/completions`, `GET /v1/models`, `GET /v1/models/{id}`.
//! Errors come in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), so the
//! official `openai` clients raise their usual exceptions.

mod completions;
mod embeddings;
mod generation;
mod models;
mod reply;

use axum::Router;
use axum::routing::{get, post};

use crate::state::AppState;

/// The OpenAI-compatible routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
}
