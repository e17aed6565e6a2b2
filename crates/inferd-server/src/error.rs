//! Turning failures into HTTP responses: one error type, [`ApiError`], rendered in the shape of
//! the protocol it answers ([`V2Error`]: `{"error": "..."}`; [`OpenAiError`]: `{"error":
//! {"message", "type", "param", "code"}}`, so that the official `openai` clients raise their
//! usual exceptions), with the same status codes for every protocol and `Retry-After` when the
//! wait is known.

use std::marker::PhantomData;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use inferd_core::{InferError, Overload, RejectReason};
use serde_json::{Value, json};

/// The HTTP status for each kind of failure, the same for every protocol.
pub(crate) fn status_of(err: &InferError) -> StatusCode {
    match err {
        InferError::InvalidInput(_) => StatusCode::BAD_REQUEST,
        InferError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        InferError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        InferError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
        InferError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        InferError::ModelNotFound(_) => StatusCode::NOT_FOUND,
        InferError::NotReady { .. } | InferError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        InferError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        InferError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        InferError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Why a failure refused the request, for `inferd_rejected_requests_total`; `None` for faults
/// of the server itself.
pub(crate) fn reject_reason(err: &InferError) -> Option<RejectReason> {
    match err {
        InferError::Unauthenticated(_) | InferError::PermissionDenied(_) => Some(RejectReason::Auth),
        InferError::QuotaExceeded { .. } => Some(RejectReason::Quota),
        InferError::Overloaded { cause: Overload::QueueTime { .. }, .. } => Some(RejectReason::QueueTime),
        InferError::Overloaded { cause: Overload::QueueFull, .. } => Some(RejectReason::QueueFull),
        InferError::Busy { .. } => Some(RejectReason::Concurrency),
        InferError::NotReady { .. } | InferError::ShuttingDown => Some(RejectReason::Unavailable),
        InferError::Timeout => Some(RejectReason::Timeout),
        InferError::InvalidInput(_) | InferError::ModelNotFound(_) => Some(RejectReason::Invalid),
        InferError::Internal(_) => None,
    }
}

/// The reason for a refusal that did not come from an [`InferError`], from its status.
pub(crate) fn reject_reason_of_status(status: StatusCode) -> Option<RejectReason> {
    match status.as_u16() {
        401 | 403 => Some(RejectReason::Auth),
        429 | 503 => Some(RejectReason::Unavailable),
        504 => Some(RejectReason::Timeout),
        400..=499 => Some(RejectReason::Invalid),
        _ => None,
    }
}

/// Whether `path` belongs to the OpenAI-compatible API, whose errors have OpenAI's shape.
fn is_openai(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// `err` in the error shape of the protocol that `path` belongs to: OpenAI's under `/v1/`, the
/// Open Inference Protocol's elsewhere.
pub(crate) fn protocol_error(path: &str, err: InferError) -> Response {
    if is_openai(path) { OpenAiError::from(err).into_response() } else { V2Error::from(err).into_response() }
}

/// A refusal with `status` and `message` in the shape of the protocol `path` belongs to.
pub(crate) fn protocol_status(path: &str, status: StatusCode, message: String) -> Response {
    if is_openai(path) {
        OpenAiError::new(status, message).into_response()
    } else {
        V2Error::new(status, message).into_response()
    }
}

/// The JSON body of a refusal with `status` and `message` in the shape of the protocol `path`
/// belongs to, for answers written below the router ([`crate::parse_refusals`]).
pub(crate) fn protocol_body(path: &str, status: StatusCode, message: String) -> Vec<u8> {
    let body = if is_openai(path) {
        OpenAi::body(&OpenAiError::new(status, message))
    } else {
        V2::body(&V2Error::new(status, message))
    };
    body.to_string().into_bytes()
}

/// The headers every error response shares: `Connection: close` when the body was not read
/// to its end, `Retry-After` in whole seconds when the wait is known, `WWW-Authenticate` on
/// 401, and the refusal's reason for the metrics.
pub(crate) fn finish_error(
    response: &mut Response,
    close_connection: bool,
    retry_after: Option<Duration>,
    reason: Option<RejectReason>,
) {
    let headers = response.headers_mut();
    if close_connection {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(wait) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
    }
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(reason) = reason {
        response.extensions_mut().insert(reason);
    }
}

/// Logs a failure of the server itself, or marks an internal one's `message` on `response`:
/// the observer then logs it with the request id and answers a generic message in its place
/// ([`crate::edge::in_protocol_shape`]). Other server errors (503, 504) are logged here.
pub(crate) fn mark_fault(response: &mut Response, message: String) {
    let status = response.status();
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        response.extensions_mut().insert(InternalFault(message));
    } else if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), error = %message, "request failed");
    }
}

/// What to tell a client whose body could not be read: its size against the limit, or axum's
/// own reason.
pub(crate) fn rejected_body_message(rejection: &axum::extract::rejection::BytesRejection, limit: usize) -> String {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        format!("the request body exceeds the length limit of {limit} bytes")
    } else {
        rejection.body_text()
    }
}

/// An internal failure's own message, carried on the response from [`ApiError`]'s rendering to
/// the observer, which logs it with the request id and answers a generic message in its place
/// ([`crate::edge::in_protocol_shape`]).
#[derive(Clone, Debug)]
pub(crate) struct InternalFault(pub(crate) String);

/// The error shape of one protocol.
pub(crate) trait Shape {
    /// The response body for `error`.
    fn body(error: &ApiError<Self>) -> Value
    where
        Self: Sized;
}

/// The Open Inference Protocol's error shape: `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct V2;

/// OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct OpenAi;

/// A refusal or failure in the Open Inference Protocol's shape.
pub(crate) type V2Error = ApiError<V2>;
/// A refusal or failure in OpenAI's shape.
pub(crate) type OpenAiError = ApiError<OpenAi>;

/// A failure to answer a request: its status, message and headers, in the shape `S`.
#[derive(Debug)]
pub(crate) struct ApiError<S> {
    status: StatusCode,
    message: String,
    /// The request field at fault (OpenAI's `param`).
    param: Option<&'static str>,
    /// A machine-readable code (OpenAI's `code`).
    code: Option<&'static str>,
    retry_after: Option<Duration>,
    close_connection: bool,
    reason: Option<RejectReason>,
    shape: PhantomData<S>,
}

impl<S> ApiError<S> {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            close_connection: false,
            reason: None,
            shape: PhantomData,
        }
    }

    /// A 400.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 400 about the request's field `param`.
    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self { param: Some(param), ..Self::bad_request(message) }
    }

    /// Asks the client not to reuse the connection: for errors raised before the request body
    /// was read to its end, whose unread rest would otherwise be taken for the next request.
    pub(crate) fn closing_connection(mut self) -> Self {
        self.close_connection = true;
        self
    }

    /// OpenAI's `type` for this status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            status if status.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl OpenAiError {
    /// The `error` object of the response body (also sent inside a stream).
    pub(crate) fn body(&self) -> Value {
        json!({ "message": self.message, "type": self.kind(), "param": self.param, "code": self.code })
    }
}

impl Shape for V2 {
    fn body(error: &ApiError<Self>) -> Value {
        json!({ "error": error.message })
    }
}

impl Shape for OpenAi {
    fn body(error: &ApiError<Self>) -> Value {
        json!({ "error": error.body() })
    }
}

impl<S> From<InferError> for ApiError<S> {
    fn from(err: InferError) -> Self {
        let code = match &err {
            InferError::ModelNotFound(_) => Some("model_not_found"),
            InferError::Overloaded { .. } | InferError::QuotaExceeded { .. } => Some("rate_limit_exceeded"),
            InferError::Unauthenticated(_) => Some("invalid_api_key"),
            InferError::PermissionDenied(_) => Some("model_not_allowed"),
            InferError::Busy { .. } => Some("server_busy"),
            InferError::Timeout => Some("timeout"),
            InferError::NotReady { .. } | InferError::ShuttingDown => Some("service_unavailable"),
            InferError::InvalidInput(_) | InferError::Internal(_) => None,
        };
        let param = match &err {
            InferError::ModelNotFound(_) | InferError::PermissionDenied(_) => Some("model"),
            InferError::InvalidInput(_) => Some("input"),
            _ => None,
        };
        Self {
            status: status_of(&err),
            retry_after: err.retry_after(),
            reason: reject_reason(&err),
            message: err.to_string(),
            param,
            code,
            close_connection: false,
            shape: PhantomData,
        }
    }
}

impl<S: Shape> IntoResponse for ApiError<S> {
    fn into_response(self) -> Response {
        let body = S::body(&self);
        let mut response = (self.status, axum::Json(body)).into_response();
        finish_error(&mut response, self.close_connection, self.retry_after, self.reason);
        mark_fault(&mut response, self.message);
        response
    }
}
