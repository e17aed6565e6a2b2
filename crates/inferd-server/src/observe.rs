//! The observer around every request: a request id (the client's `x-request-id`, or a new
//! UUID), echoed back; the stage clock handlers mark; the edge's checks and error shapes
//! ([`crate::edge`]); the guard ([`crate::guard`]: credentials, quotas, limits, timeout), called
//! from here rather than as a second middleware layer, which cost each request another boxed
//! future and clone of the routes; then, once the response is ready, the
//! metrics, the `Server-Timing`, `inferd-batch-size` and `x-ratelimit-*` headers, one log line,
//! and, when configured, the trace spans.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use inferd_core::RejectReason;

use crate::auth::Caller;
use crate::edge;
use crate::error::reject_reason_of_status;
use crate::guard::{guard, is_inference};
use crate::state::{AppState, ModelLabel, TokenUsage};
use crate::telemetry::RequestTrace;
use crate::timing::{Timing, millis, server_timing};

const REQUEST_ID: &str = "x-request-id";

/// The client's id when it is short printable ASCII (so it is safe in logs and headers);
/// otherwise a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

pub(crate) async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers());
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let inference = is_inference(&method);
    let trace_headers = state.telemetry.as_ref().map(|_| request.headers().clone());
    let timing = Timing::start(started);
    request.extensions_mut().insert(timing.clone());

    let metrics = state.metrics();
    let in_flight = inference.then(|| metrics.enter_request());
    let response = match edge::refuse_oversized(&request) {
        Some(refused) => refused,
        None => guard(&state, &path, request, next).await,
    };
    let mut response = edge::in_protocol_shape(&path, &id, response).await;
    drop(in_flight);
    let elapsed = started.elapsed();

    let status = response.status();
    let model = response.extensions().get::<ModelLabel>().map_or("", |label| label.0.as_str()).to_string();
    let caller = response.extensions().get::<Caller>().cloned();
    let usage = response.extensions().get::<TokenUsage>().copied();
    // Probes answered 503 while models load or the server drains are not refused requests.
    let probe = endpoint.starts_with("/v2/health/");
    let reason = response
        .extensions()
        .get::<RejectReason>()
        .copied()
        .or_else(|| if probe { None } else { reject_reason_of_status(status) });
    let stages = timing.stages();
    let batch_size = timing.batch_size();

    metrics.observe_request(&model, &endpoint, status.as_u16(), elapsed);
    for span in &stages {
        metrics.observe_stage(&model, span.stage.name(), span.duration);
    }
    if let Some(usage) = usage {
        metrics.observe_tokens(&model, usage.prompt, usage.completion);
    }
    if let Some(reason) = reason {
        metrics.observe_rejection(reason);
    }
    if inference && status.is_success() {
        state.record_request_time(elapsed);
    }

    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
    if !stages.is_empty()
        && let Ok(value) = HeaderValue::from_str(&server_timing(&stages))
    {
        headers.insert("server-timing", value);
    }
    if let Some(size) = batch_size {
        headers.insert("inferd-batch-size", HeaderValue::from(size));
    }
    if let Some(caller) = &caller {
        caller.insert_headers(headers);
    }

    let caller_id = caller.as_ref().map_or("-", Caller::id);
    let stage_ms = |name: &str| stages.iter().find(|span| span.stage.name() == name).map(|span| millis(span.duration));
    let (prompt, completion) = usage.map_or((0, 0), |usage| (usage.prompt, usage.completion));
    macro_rules! request_line {
        ($level:ident) => {
            tracing::$level!(
                target: "inferd::request",
                request_id = %id,
                caller = caller_id,
                method = %method,
                endpoint = %endpoint,
                model = %model,
                status = status.as_u16(),
                prompt_tokens = prompt,
                completion_tokens = completion,
                duration_ms = millis(elapsed),
                parse_ms = stage_ms("parse"),
                tokenize_ms = stage_ms("tokenize"),
                queue_ms = stage_ms("queue"),
                compute_ms = stage_ms("compute"),
                serialize_ms = stage_ms("serialize"),
                batch_size,
                "request"
            )
        };
    }
    // Probes and scrapes arrive every few seconds: keep them out of the info-level log.
    if inference || status.is_client_error() || status.is_server_error() {
        request_line!(info);
    } else {
        request_line!(debug);
    }

    if let (Some(telemetry), Some(headers)) = (&state.telemetry, &trace_headers) {
        telemetry.record(&RequestTrace {
            headers,
            method: method.as_str(),
            route: &endpoint,
            status: status.as_u16(),
            model: &model,
            request_id: &id,
            caller: caller_id,
            started,
            stages: &stages,
            batch_size,
        });
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_honoured_when_safe() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&headers).len(), 36, "replaced by a UUID");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}
