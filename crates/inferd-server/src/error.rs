//! Turning failures into HTTP responses.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use inferd_core::InferError;

/// The HTTP status for each kind of failure, the same for every protocol.
pub(crate) fn status_of(err: &InferError) -> StatusCode {
    match err {
        InferError::InvalidInput(_) => StatusCode::BAD_REQUEST,
        InferError::ModelNotFound(_) => StatusCode::NOT_FOUND,
        InferError::NotReady { .. } | InferError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        InferError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        InferError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        InferError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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

/// An error in the Open Inference Protocol's shape: `{"error": "..."}`, with `Retry-After` on
/// 429.
#[derive(Debug)]
pub(crate) struct V2Error {
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
    close_connection: bool,
}

impl V2Error {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None, close_connection: false }
    }

    /// Asks the client not to reuse the connection: for errors raised before the request body
    /// was read to its end, whose unread rest would otherwise be taken for the next request.
    pub(crate) fn closing_connection(mut self) -> Self {
        self.close_connection = true;
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<InferError> for V2Error {
    fn from(err: InferError) -> Self {
        Self {
            status: status_of(&err),
            retry_after: err.retry_after(),
            message: err.to_string(),
            close_connection: false,
        }
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), error = %self.message, "request failed");
        }
        let body = serde_json::json!({ "error": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.close_connection {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs().max(1);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
