//! hyper's own refusals, in the protocol's error shape.
//!
//! A request that hyper cannot parse never reaches the router: a request target over its fixed
//! 65,534-byte limit (414), more header lines than it parses or a head larger than its buffer
//! (431), a malformed request line or header (400). hyper answers those itself, with an empty
//! body, and closes the connection. [`ShapedRefusals`] wraps each connection's stream and
//! rewrites such an answer, as it is written, into the same refusal with a JSON body in the shape
//! of the protocol the request's path belongs to (OpenAI's under `/v1/`, the Open Inference
//! Protocol's elsewhere), as every refusal inferd makes itself has.
//!
//! The rewrite is safe to recognise: every response the router produces with a 4xx status has a
//! JSON body ([`crate::edge::in_protocol_shape`] reshapes any other), so a 400, 414 or 431 with
//! `content-length: 0` can only be hyper's own. The path is read from the first bytes of the
//! request hyper was reading (those that follow the previous response); a request pipelined
//! behind another, whose bytes arrived before that response was written, is refused in the Open
//! Inference Protocol's shape.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::protocol_body;

/// Bytes of a request's start kept to tell its protocol: the method, a space, and `/v1/`.
const REQUEST_START: usize = 16;

/// The longest response head that can be one of hyper's refusals.
const MAX_REFUSAL_HEAD: usize = 512;

/// A connection's stream, with hyper's empty-bodied refusals rewritten in the protocol's shape.
pub(crate) struct ShapedRefusals<IO> {
    io: IO,
    /// The first bytes read of the request now being read.
    request_start: Vec<u8>,
    /// Whether the next bytes read begin a request.
    at_request_start: bool,
    /// A rewritten refusal being written: its bytes, how many are written, and the length of
    /// hyper's original to report once all are.
    rewrite: Option<(Vec<u8>, usize, usize)>,
}

impl<IO> ShapedRefusals<IO> {
    /// Wraps a newly accepted connection.
    pub(crate) fn new(io: IO) -> Self {
        Self { io, request_start: Vec::with_capacity(REQUEST_START), at_request_start: true, rewrite: None }
    }

    /// The path's protocol prefix of the request being read, as far as it is known.
    fn path(&self) -> &str {
        let start = std::str::from_utf8(&self.request_start).unwrap_or("");
        start.split_once(' ').map_or("", |(_, rest)| rest)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ShapedRefusals<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        if self.at_request_start {
            let room = REQUEST_START - self.request_start.len();
            let read = &buf.filled()[before..];
            let take = read.len().min(room);
            self.request_start.extend_from_slice(&read[..take]);
            if self.request_start.len() == REQUEST_START {
                self.at_request_start = false;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ShapedRefusals<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none() {
            match rewritten(buf, self.path()) {
                Some(bytes) => self.rewrite = Some((bytes, 0, buf.len())),
                None => {
                    self.response_written(buf);
                    return Pin::new(&mut self.io).poll_write(cx, buf);
                }
            }
        }
        self.poll_rewrite(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none() {
            // hyper writes a refusal as its head alone, in one slice.
            let mut slices = bufs.iter().filter(|slice| !slice.is_empty());
            let only = match (slices.next(), slices.next()) {
                (Some(first), None) => Some(first),
                _ => None,
            };
            match only.and_then(|head| Some((rewritten(head, self.path())?, head.len()))) {
                Some((bytes, original)) => self.rewrite = Some((bytes, 0, original)),
                None => {
                    if let Some(first) = bufs.iter().find(|slice| !slice.is_empty()) {
                        self.response_written(first);
                    }
                    return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
                }
            }
        }
        self.poll_rewrite(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rewrite.is_some() {
            ready!(self.as_mut().poll_rewrite(cx))?;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rewrite.is_some() {
            ready!(self.as_mut().poll_rewrite(cx))?;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: AsyncWrite + Unpin> ShapedRefusals<IO> {
    /// Writes what remains of the rewritten refusal; once all of it is written, reports hyper's
    /// original as written.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let Some((bytes, written, original)) = &mut self.rewrite else {
                return Poll::Ready(Ok(0));
            };
            if *written == bytes.len() {
                let original = *original;
                self.rewrite = None;
                return Poll::Ready(Ok(original));
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
    }
}

impl<IO> ShapedRefusals<IO> {
    /// A response starts with `bytes`: what is read next begins the next request.
    fn response_written(&mut self, bytes: &[u8]) {
        if bytes.starts_with(b"HTTP/1.") {
            self.request_start.clear();
            self.at_request_start = true;
        }
    }
}

/// hyper's refusal `head`, rewritten with a body in the shape of `path`'s protocol; `None` for
/// anything else.
fn rewritten(head: &[u8], path: &str) -> Option<Vec<u8>> {
    // Every response write passes here: look no further than the status line's first bytes
    // unless this can be a refusal head (hyper's are under 200 bytes).
    let client_error = head.starts_with(b"HTTP/1.1 4") || head.starts_with(b"HTTP/1.0 4");
    if !client_error || head.len() > MAX_REFUSAL_HEAD {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 ").or_else(|| text.strip_prefix("HTTP/1.0 "))?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    let message = match status {
        400 => "the request is not valid HTTP/1.1",
        414 => "the request target (path and query) is longer than this server accepts",
        431 => "the request's headers are more, or larger, than this server accepts",
        _ => return None,
    };
    let headers = text.strip_suffix("\r\n\r\n")?;
    let mut lines = headers.split("\r\n");
    let status_line = lines.next()?;
    let mut kept = Vec::new();
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            empty = value.trim() == "0";
        } else if !name.eq_ignore_ascii_case("content-type") && !name.eq_ignore_ascii_case("connection") {
            kept.push(line);
        }
    }
    if !empty {
        return None;
    }
    let body = protocol_body(path, StatusCode::from_u16(status).ok()?, message.to_string());
    let mut out = Vec::with_capacity(head.len() + body.len() + 96);
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\nconnection: close\r\n");
    for line in kept {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(response: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(response).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn hypers_refusals_are_rewritten_in_the_protocols_shape() {
        let head = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 16:00:00 GMT\r\n\r\n";
        let v2 = rewritten(head, "/v2/models/aaaa").unwrap();
        let text = std::str::from_utf8(&v2).unwrap();
        assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-type: application/json\r\n") && text.contains("\r\ndate: "), "{text}");
        assert!(body_of(&v2)["error"].as_str().unwrap().contains("longer than this server accepts"));
        let openai = rewritten(head, "/v1/models/aaa").unwrap();
        assert!(body_of(&openai)["error"]["message"].as_str().unwrap().contains("longer"));
        let length: usize = std::str::from_utf8(&openai)
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, serde_json::to_vec(&body_of(&openai)).unwrap().len());
    }

    #[test]
    fn everything_else_passes_unchanged() {
        for head in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n{}",
            b"{\"error\": \"HTTP/1.1 400\"}",
        ] {
            assert!(rewritten(head, "/v2").is_none(), "{}", String::from_utf8_lossy(head));
        }
    }
}
