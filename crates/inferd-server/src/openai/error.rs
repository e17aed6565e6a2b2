//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with the same
//! status codes as every other protocol, and `Retry-After` when the wait is known.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use inferd_core::{InferError, RejectReason};
use serde_json::json;

use crate::error::{finish_error, mark_fault, reject_reason, status_of};

/// An error as OpenAI's API reports it.
#[derive(Debug)]
pub(crate) struct OpenAiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
    retry_after: Option<Duration>,
    close_connection: bool,
    reason: Option<RejectReason>,
}

impl OpenAiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
            close_connection: false,
            reason: None,
        }
    }

    /// A 400 about the request's parameter `param`.
    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self { param: Some(param), ..Self::new(StatusCode::BAD_REQUEST, message) }
    }

    /// Asks the client not to reuse the connection (the body was not read to its end).
    pub(crate) fn closing_connection(mut self) -> Self {
        self.close_connection = true;
        self
    }

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

impl From<InferError> for OpenAiError {
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
            message: err.to_string(),
            param,
            code,
            retry_after: err.retry_after(),
            close_connection: false,
            reason: reject_reason(&err),
        }
    }
}

impl OpenAiError {
    /// The `error` object of the response body.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({ "message": self.message, "type": self.kind(), "param": self.param, "code": self.code })
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.body() });
        let mut response = (self.status, axum::Json(body)).into_response();
        finish_error(&mut response, self.close_connection, self.retry_after, self.reason);
        mark_fault(&mut response, self.message);
        response
    }
}
