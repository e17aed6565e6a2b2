//! The protocol's error shape for what the handlers do not answer themselves: requests refused
//! for the size of their head (URI, header count), refusals made by axum's extractors and
//! routing in plain text or with an empty body, and internal failures, whose own message is
//! logged with the request id and never sent to the client.

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::Response;

use crate::error::{InternalFault, protocol_status};

/// Longest request target (path and query) accepted, in bytes; longer ones are answered 414.
pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;
/// Most of a plain-text refusal's body read to become the message of its JSON form.
const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// The refusal of a request whose target is longer than the server accepts, if it is. (More
/// than 100 header lines hyper refuses itself: see [`crate::serve`].)
pub(crate) fn refuse_oversized(request: &Request) -> Option<Response> {
    let path = request.uri().path();
    let target = request.uri().path_and_query().map_or(0, |target| target.as_str().len());
    if target > MAX_URI_BYTES {
        let message = format!("the request target is {target} bytes, past the limit of {MAX_URI_BYTES}");
        return Some(protocol_status(path, StatusCode::URI_TOO_LONG, message));
    }
    None
}

/// `response` to a request for `path`, with an error in the shape of the protocol `path`
/// belongs to: an internal failure becomes a generic message that carries `request_id` (its
/// own message is logged), and a refusal that is not JSON (axum's plain-text rejections, empty
/// bodies) becomes JSON with its text, or its status's reason, as the message. Headers and
/// extensions (`Retry-After`, `Allow`, metrics labels) are kept.
pub(crate) async fn in_protocol_shape(path: &str, request_id: &str, mut response: Response) -> Response {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    if let Some(InternalFault(detail)) = response.extensions_mut().remove::<InternalFault>() {
        tracing::error!(request_id, status = status.as_u16(), error = %detail, "request failed");
        let message = format!("internal server error (request id {request_id})");
        let mut shaped = with_parts_of(response, protocol_status(path, status, message));
        shaped.extensions_mut().remove::<InternalFault>();
        return shaped;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|kind| kind.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_MESSAGE_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("refused").to_string() } else { text };
    with_parts_of(Response::from_parts(parts, axum::body::Body::empty()), protocol_status(path, status, message))
}

/// `shaped`, with the headers (but its own body's type and length) and extensions of `original`.
/// Every value of a repeated header (`WWW-Authenticate`, `Vary`) is kept.
fn with_parts_of(original: Response, shaped: Response) -> Response {
    let (original, _) = original.into_parts();
    let (mut parts, body) = shaped.into_parts();
    let mut headers = original.headers;
    headers.remove(header::CONTENT_TYPE);
    headers.remove(header::CONTENT_LENGTH);
    for name in parts.headers.keys() {
        if !headers.contains_key(name) {
            for value in parts.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    parts.headers = headers;
    parts.extensions.extend(original.extensions);
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[tokio::test]
    async fn a_reshaped_refusal_keeps_every_value_of_a_repeated_header() {
        let mut refused = Response::new(axum::body::Body::from("no"));
        *refused.status_mut() = StatusCode::UNAUTHORIZED;
        let headers = refused.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
        let shaped = in_protocol_shape("/v2/models/m/infer", "r1", refused).await;
        let challenges: Vec<_> = shaped.headers().get_all(header::WWW_AUTHENTICATE).iter().collect();
        assert_eq!(challenges, ["Bearer", "ApiKey"]);
        let kinds: Vec<_> = shaped.headers().get_all(header::CONTENT_TYPE).iter().collect();
        assert_eq!(kinds, ["application/json"]);
        let body = axum::body::to_bytes(shaped.into_body(), 1024).await.unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap(), serde_json::json!({"error": "no"}));
    }
}
