//! The axum application: every route behind the guard and the observer.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::protocol_status;
use crate::state::AppState;
use crate::{observe, openai, v2};

/// Every route of the server, behind the observer (request ids, metrics, Server-Timing, logs,
/// traces), which runs the guard (credentials, quotas, concurrency, timeout) inside it.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.max_body_bytes;
    Router::new()
        .merge(v2::routes())
        .merge(openai::routes())
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe::observe))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics().render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    protocol_status(path, StatusCode::NOT_FOUND, format!("no route for {} {path}", request.method()))
}

async fn method_not_allowed(request: Request) -> Response {
    let path = request.uri().path();
    protocol_status(
        path,
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {} is not allowed on {path}", request.method()),
    )
}
