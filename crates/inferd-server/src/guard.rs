//! The guard in front of every route but health (and `/metrics`, unless protected): who is
//! calling, whether their requests-per-minute quota allows one more, whether the server has a
//! free slot under `max_concurrent_requests`, and the request timeout. Refusals come in the
//! error shape of the protocol the path belongs to.

use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use inferd_core::InferError;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use crate::error::{protocol_error, protocol_status};
use crate::payload;
use crate::state::AppState;
use crate::timing::Timing;

/// A request's place under `max_concurrent_requests`, held until the response is complete: for
/// a streamed response, the stream keeps a clone until its last event.
#[derive(Clone)]
pub(crate) struct ConcurrencySlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// Paths anyone may call: liveness and readiness, for orchestrators and load balancers.
fn is_public(path: &str, state: &AppState) -> bool {
    matches!(path, "/v2/health/live" | "/v2/health/ready") || (path == "/metrics" && !state.auth.protects_metrics())
}

/// Inference requests are the POSTs; they count against quotas and the concurrency limit.
pub(crate) fn is_inference(method: &Method) -> bool {
    method == Method::POST
}

pub(crate) async fn guard(state: &AppState, path: &str, mut request: Request, next: Next) -> Response {
    if is_public(path, state) {
        return next.run(request).await;
    }
    let caller = match state.auth.authenticate(request.headers()).await {
        Ok(caller) => caller,
        Err(refused) => return protocol_error(path, InferError::Unauthenticated(refused.0)),
    };
    let with_caller = |mut response: Response, caller| {
        response.extensions_mut().insert(caller);
        response
    };
    if !is_inference(request.method()) {
        request.extensions_mut().insert(caller.clone());
        return with_caller(next.run(request).await, caller);
    }
    // The concurrency limit before the quota, so that a request shed for load costs the caller
    // nothing.
    let Ok(permit) = state.concurrency.clone().try_acquire_owned() else {
        let err = InferError::Busy { retry_after: state.busy_retry_after() };
        return with_caller(protocol_error(path, err), caller);
    };
    if let Err(err) = caller.take_request() {
        return with_caller(protocol_error(path, err), caller);
    }
    // One deadline for the whole request: this timer, and the batcher's (which drops a request
    // still queued at it), through the request's clock.
    let deadline = Instant::now() + state.settings.request_timeout;
    if let Some(timing) = request.extensions().get::<Timing>() {
        timing.set_deadline(deadline);
    }
    request.extensions_mut().insert(caller.clone());
    // Held here until the response is ready, and by a streamed response's body until its end.
    let slot = ConcurrencySlot(Arc::new(permit));
    request.extensions_mut().insert(slot.clone());
    if state.settings.log_payloads {
        request = match payload::log_request(request, state.settings.max_body_bytes).await {
            Ok(request) => request,
            Err(refusal) => return with_caller(protocol_status(path, refusal.0, refusal.1), caller),
        };
    }
    let response = match tokio::time::timeout_at(deadline.into(), next.run(request)).await {
        Ok(response) => response,
        Err(_) => protocol_error(path, InferError::Timeout),
    };
    let response = if state.settings.log_payloads { payload::log_response(response).await } else { response };
    drop(slot);
    with_caller(response, caller)
}
