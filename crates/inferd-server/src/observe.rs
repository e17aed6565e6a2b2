//! The observer around every request: a request id (the client's `x-request-id`, or a new
//! UUID), echoed back; the stage clock handlers mark; then, once the response is ready, the
//! metrics, the `Server-Timing`, `inferd-batch-size` and `x-ratelimit-*` headers, one log line,
//! and, when configured, the trace spans.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use inferd_core::RejectReason;

use crate::app::{AppState, ModelLabel, TokenUsage};
use crate::auth::Caller;
use crate::error::reject_reason_of_status;
use crate::telemetry::RequestTrace;
use crate::timing::{Timing, server_timing};

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
    let inference = method == Method::POST;
    let trace_headers = state.telemetry.as_ref().map(|_| request.headers().clone());
    let timing = Timing::start(started);
    request.extensions_mut().insert(timing.clone());
    if state.settings.log_payloads {
        request = log_request_payload(request, &id, state.settings.max_body_bytes).await;
    }

    let metrics = state.metrics();
    if inference {
        metrics.in_flight().inc();
    }
    let mut response = next.run(request).await;
    if inference {
        metrics.in_flight().dec();
    }
    let elapsed = started.elapsed();

    let status = response.status();
    let model = response.extensions().get::<ModelLabel>().map_or("", |label| label.0.as_str()).to_string();
    let caller = response.extensions().get::<Caller>().cloned();
    let usage = response.extensions().get::<TokenUsage>().copied();
    let reason = response.extensions().get::<RejectReason>().copied().or_else(|| reject_reason_of_status(status));
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
    let stage_ms =
        |name: &str| stages.iter().find(|span| span.stage.name() == name).map(|span| span.duration.as_secs_f64() * 1e3);
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
                duration_ms = elapsed.as_secs_f64() * 1e3,
                queue_ms = stage_ms("queue"),
                compute_ms = stage_ms("compute"),
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
    if state.settings.log_payloads {
        response = log_response_payload(response, &id).await;
    }
    response
}

/// Logs the request body at debug level (target `inferd::payload`) and puts it back.
async fn log_request_payload(request: Request, id: &str, limit: usize) -> Request {
    if !tracing::enabled!(target: "inferd::payload", tracing::Level::DEBUG) {
        return request;
    }
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            tracing::debug!(target: "inferd::payload", request_id = id, body = %String::from_utf8_lossy(&bytes), "request body");
            Request::from_parts(parts, Body::from(bytes))
        }
        // Too large or broken: the handler would refuse it anyway; let it say so.
        Err(err) => {
            tracing::debug!(target: "inferd::payload", request_id = id, %err, "request body not logged");
            Request::from_parts(parts, Body::empty())
        }
    }
}

/// Logs a response body at debug level, unless it is streamed, and puts it back.
async fn log_response_payload(response: Response, id: &str) -> Response {
    let streamed =
        response.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|value| value == "text/event-stream");
    if streamed || !tracing::enabled!(target: "inferd::payload", tracing::Level::DEBUG) {
        return response;
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => {
            tracing::debug!(target: "inferd::payload", request_id = id, body = %String::from_utf8_lossy(&bytes), "response body");
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(err) => {
            tracing::debug!(target: "inferd::payload", request_id = id, %err, "response body not logged");
            Response::from_parts(parts, Body::empty())
        }
    }
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
