//! Request and response bodies outside the handlers' own parsing: debug logging of both (target
//! `inferd::payload`), only when `server.log_payloads` is on and the log filter enables that
//! target at debug level (it runs inside the guard, so only authenticated, admitted requests are
//! buffered and logged); and discarding the body of a request refused before it was read.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;

fn enabled() -> bool {
    tracing::enabled!(target: "inferd::payload", tracing::Level::DEBUG)
}

/// Logs the request body and puts it back; a body over `limit` is refused with 413 (what the
/// handler would have said), one that cannot be read with 400.
pub(crate) async fn log_request(request: Request, limit: usize) -> Result<Request, (StatusCode, String)> {
    if !enabled() {
        return Ok(request);
    }
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            tracing::debug!(target: "inferd::payload", body = %String::from_utf8_lossy(&bytes), "request body");
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        Err(err) => {
            let too_large =
                std::error::Error::source(&err).is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body exceeds the length limit of {limit} bytes"),
                ))
            } else {
                Err((StatusCode::BAD_REQUEST, format!("cannot read the request body: {err}")))
            }
        }
    }
}

/// Logs a response body, unless it is streamed, and puts it back.
pub(crate) async fn log_response(response: Response) -> Response {
    let streamed =
        response.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|value| value == "text/event-stream");
    if streamed || !enabled() {
        return response;
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => {
            tracing::debug!(target: "inferd::payload", body = %String::from_utf8_lossy(&bytes), "response body");
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(err) => {
            tracing::debug!(target: "inferd::payload", %err, "response body not logged");
            Response::from_parts(parts, Body::empty())
        }
    }
}

/// Reads and drops the body of `request`, refused before its body was needed, frame by frame
/// without buffering, so that the connection stays open for the client's next request (hyper
/// closes a connection whose request body was left unread, and a client still sending its body
/// then sees a reset instead of the refusal). Past `limit` bytes, or on a read error, it stops
/// and the connection closes. A client that sent `Expect: 100-continue` sends its body only
/// once asked (hyper asks when the body is first read): its body is left unasked, so the
/// refusal costs it no upload.
pub(crate) async fn discard(request: Request, limit: usize) {
    if expects_continue(request.headers()) {
        return;
    }
    let mut body = request.into_body();
    let mut read = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        read = read.saturating_add(frame.data_ref().map_or(0, |data| data.len()));
        if read > limit {
            return;
        }
    }
}

/// Whether the client waits for `100 Continue` before sending the body (curl does for large
/// bodies).
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("100-continue"))
}
