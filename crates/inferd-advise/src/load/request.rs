//! One request of a load test: send it, read the whole answer as a real client does (a streamed
//! answer event by event), and time it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "status")]
pub enum Outcome {
    /// A 2xx answer, read to its end (for a stream, to its `[DONE]`, or to its end after a choice
    /// reported why it finished).
    Ok,
    /// An HTTP error status (4xx, 5xx), or a stream that reported an error event.
    Status(u16),
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection failed or broke (refused, reset, a body cut short).
    Transport,
}

impl Outcome {
    /// The label reports group errors by: `200`-class answers are `ok`, else `429`, `503`,
    /// `timeout`, `transport`.
    pub fn label(self) -> String {
        match self {
            Self::Ok => "ok".to_string(),
            Self::Status(status) => status.to_string(),
            Self::Timeout => "timeout".to_string(),
            Self::Transport => "transport".to_string(),
        }
    }
}

/// What one request measured. Times are seconds; `scheduled` and `sent` count from the start of
/// the point the request belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When the profile meant to send it (for a closed loop: when it was sent).
    pub scheduled: f64,
    /// When it was sent.
    pub sent: f64,
    /// From sending to the end of the answer.
    pub latency: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// Time to the first generated token (streamed generation only).
    pub ttft: Option<f64>,
    /// Mean time between generated tokens after the first: (last token − first token) /
    /// (tokens − 1) (streamed generation with at least two tokens only).
    pub itl: Option<f64>,
    /// Prompt tokens, as the server's `usage` reported them.
    pub prompt_tokens: Option<u64>,
    /// Generated tokens: the server's `usage`, else the streamed events that carried text.
    pub output_tokens: Option<u64>,
    /// For a failure, what went wrong (the transport error, or the start of the error body).
    pub detail: Option<String>,
}

/// Sends `body` to `url` and measures the answer. `timeout` bounds the whole exchange.
pub async fn send(client: &reqwest::Client, url: &str, body: &Value, timeout: Duration) -> Sample {
    let started = Instant::now();
    let measured = tokio::time::timeout(timeout, exchange(client, url, body, started)).await;
    let mut sample = match measured {
        Ok(sample) => sample,
        Err(_) => failed(Outcome::Timeout, format!("no complete answer within {timeout:?}")),
    };
    sample.latency = started.elapsed().as_secs_f64();
    sample
}

fn empty(outcome: Outcome) -> Sample {
    Sample {
        scheduled: 0.0,
        sent: 0.0,
        latency: 0.0,
        outcome,
        ttft: None,
        itl: None,
        prompt_tokens: None,
        output_tokens: None,
        detail: None,
    }
}

/// A failed sample with what went wrong.
fn failed(outcome: Outcome, detail: String) -> Sample {
    Sample { detail: Some(detail), ..empty(outcome) }
}

/// A transport error in full: reqwest's message and its causes (`error sending request: connection
/// closed before message completed`).
fn transport(err: &reqwest::Error) -> Sample {
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    failed(Outcome::Transport, detail)
}

async fn exchange(client: &reqwest::Client, url: &str, body: &Value, started: Instant) -> Sample {
    let response = match client.post(url).json(body).send().await {
        Ok(response) => response,
        Err(err) => return transport(&err),
    };
    let status = response.status();
    let streamed = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    if !status.is_success() {
        // Read the refusal to its end, as a client would, so the connection can be reused.
        let body = response.bytes().await.unwrap_or_default();
        let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        return failed(Outcome::Status(status.as_u16()), text);
    }
    if streamed {
        read_stream(response, started).await
    } else {
        match response.bytes().await {
            Ok(bytes) => {
                let mut sample = empty(Outcome::Ok);
                if let Ok(answer) = serde_json::from_slice::<Value>(&bytes) {
                    read_usage(&answer, &mut sample.prompt_tokens, &mut sample.output_tokens);
                }
                sample
            }
            Err(err) => transport(&err),
        }
    }
}

/// Takes the token counts of an answer's or event's `usage`, where it has them.
fn read_usage(event: &Value, prompt_tokens: &mut Option<u64>, output_tokens: &mut Option<u64>) {
    if let Some(usage) = event.get("usage").filter(|usage| usage.is_object()) {
        *prompt_tokens = usage.get("prompt_tokens").and_then(Value::as_u64).or(*prompt_tokens);
        *output_tokens = usage.get("completion_tokens").and_then(Value::as_u64).or(*output_tokens);
    }
}

/// Whether a streamed event carries generated text (chat's `delta.content`, completions' `text`).
fn carries_text(event: &Value) -> bool {
    event.get("choices").and_then(Value::as_array).is_some_and(|choices| {
        choices.iter().any(|choice| {
            let text = choice.pointer("/delta/content").or_else(|| choice.get("text"));
            text.and_then(Value::as_str).is_some_and(|text| !text.is_empty())
        })
    })
}

/// What a stream of server-sent events has said so far: events are lines of `data:` (several
/// per event are joined with newlines) ended by a blank line, in chunks cut anywhere; lines end
/// with `\n` or `\r\n`.
#[derive(Default)]
struct EventStream {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The data lines of the event being read.
    data: Vec<String>,
    /// Events with generated text, and when the first and last of them arrived.
    text_events: u64,
    first: Option<f64>,
    last: f64,
    /// Whether a choice reported its `finish_reason`.
    finished: bool,
    /// `[DONE]` arrived.
    done: bool,
    /// An error event: its status and text.
    error: Option<(u16, String)>,
    prompt_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl EventStream {
    /// Reads a chunk that arrived `now` seconds after the request was sent.
    fn feed(&mut self, bytes: &[u8], now: f64) {
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
            self.line_ended(&line, now);
        }
    }

    fn line_ended(&mut self, line: &str, now: f64) {
        if line.is_empty() {
            self.dispatch(now);
        } else if let Some(data) = line.strip_prefix("data:") {
            self.data.push(data.strip_prefix(' ').unwrap_or(data).to_string());
        }
    }

    /// The body ended: a last line or event without its terminator still counts.
    fn end(&mut self, now: f64) {
        if !self.line.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
            self.line_ended(&line, now);
        }
        self.dispatch(now);
    }

    fn dispatch(&mut self, now: f64) {
        if self.data.is_empty() || self.done || self.error.is_some() {
            self.data.clear();
            return;
        }
        let data = std::mem::take(&mut self.data).join("\n");
        if data.trim() == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(event) = serde_json::from_str::<Value>(&data) else { return };
        if let Some(error) = event.get("error").filter(|error| !error.is_null()) {
            let status = error.get("code").and_then(Value::as_u64).and_then(|code| u16::try_from(code).ok());
            self.error = Some((status.filter(|code| *code >= 400).unwrap_or(500), data.chars().take(200).collect()));
            return;
        }
        if carries_text(&event) {
            self.text_events += 1;
            self.first.get_or_insert(now);
            self.last = now;
        }
        if let Some(choices) = event.get("choices").and_then(Value::as_array) {
            self.finished |= choices.iter().any(|choice| choice.get("finish_reason").is_some_and(|r| !r.is_null()));
        }
        read_usage(&event, &mut self.prompt_tokens, &mut self.output_tokens);
    }

    /// The sample the stream makes: an error event's status; a stream that ended before
    /// `[DONE]` and before any choice finished is cut short (a transport failure).
    fn sample(self) -> Sample {
        if let Some((status, text)) = self.error {
            return failed(Outcome::Status(status), text);
        }
        if !self.done && !self.finished {
            return failed(Outcome::Transport, "the stream ended before [DONE]".to_string());
        }
        let tokens = self.output_tokens.unwrap_or(self.text_events);
        let itl = match self.first {
            Some(first) if tokens >= 2 => Some((self.last - first) / (tokens - 1) as f64),
            _ => None,
        };
        Sample {
            ttft: self.first,
            itl,
            prompt_tokens: self.prompt_tokens,
            output_tokens: Some(tokens),
            ..empty(Outcome::Ok)
        }
    }
}

/// Reads server-sent events to `[DONE]` (or the end of the body), timing the events with text.
async fn read_stream(mut response: reqwest::Response, started: Instant) -> Sample {
    let mut stream = EventStream::default();
    while !stream.done && stream.error.is_none() {
        match response.chunk().await {
            Ok(Some(chunk)) => stream.feed(&chunk, started.elapsed().as_secs_f64()),
            Ok(None) => break,
            Err(err) => return transport(&err),
        }
    }
    stream.end(started.elapsed().as_secs_f64());
    stream.sample()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_events_are_chat_deltas_or_completion_text() {
        assert!(carries_text(&json!({"choices": [{"delta": {"content": "Hi"}}]})));
        assert!(carries_text(&json!({"choices": [{"text": " there"}]})));
        assert!(!carries_text(&json!({"choices": [{"delta": {"role": "assistant"}}]})));
        assert!(!carries_text(&json!({"choices": [{"delta": {"content": ""}}]})));
        assert!(!carries_text(&json!({"choices": [], "usage": {"completion_tokens": 3}})));
    }

    /// The sample from feeding `chunks` at times 0.1, 0.2, ... and ending the body.
    fn stream(chunks: &[&str]) -> Sample {
        let mut stream = EventStream::default();
        for (i, chunk) in chunks.iter().enumerate() {
            stream.feed(chunk.as_bytes(), 0.1 * (i + 1) as f64);
        }
        stream.end(9.0);
        stream.sample()
    }

    #[test]
    fn events_are_read_whatever_the_chunks() {
        let delta = |text: &str| format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n");
        let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\r\n\r\n";
        let whole = format!("{}{}{}{usage}data: [DONE]\n\n", delta("a"), delta("b"), delta("c"));
        // One chunk per event, then the same bytes cut in the middle of lines.
        let sample = stream(&[&delta("a"), &delta("b"), &delta("c"), usage, "data: [DONE]\n\n"]);
        assert_eq!(sample.outcome, Outcome::Ok);
        assert_eq!((sample.prompt_tokens, sample.output_tokens), (Some(7), Some(3)));
        assert!((sample.ttft.unwrap() - 0.1).abs() < 1e-12);
        assert!((sample.itl.unwrap() - 0.1).abs() < 1e-12, "(0.3 - 0.1) / (3 - 1)");
        let (a, b) = whole.split_at(17);
        let (b, c) = b.split_at(40);
        let cut = stream(&[a, b, c]);
        assert_eq!((cut.outcome, cut.output_tokens), (Outcome::Ok, Some(3)));
        // An event whose data spans two lines, and a body without a final blank line.
        let multi = stream(&["data: {\"choices\":\ndata: [{\"text\":\"x\",\"finish_reason\":\"length\"}]}\n\n"]);
        assert_eq!((multi.outcome, multi.output_tokens), (Outcome::Ok, Some(1)));
        assert_eq!(stream(&[&delta("a"), "data: [DONE]"]).outcome, Outcome::Ok);
    }

    #[test]
    fn a_cut_stream_or_an_error_event_is_a_failure() {
        let delta = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n";
        assert_eq!(stream(&[delta]).outcome, Outcome::Transport);
        let error = stream(&[delta, "data: {\"error\":{\"code\":503,\"message\":\"busy\"}}\n\n"]);
        assert_eq!(error.outcome, Outcome::Status(503));
        assert!(error.detail.unwrap().contains("busy"));
        let null_error = stream(&["data: {\"error\":null,\"choices\":[{\"text\":\"a\"}]}\n\ndata: [DONE]\n\n"]);
        assert_eq!(null_error.outcome, Outcome::Ok);
    }

    #[test]
    fn usage_fills_token_counts() {
        let (mut prompt, mut output) = (None, None);
        read_usage(&json!({"usage": {"prompt_tokens": 12, "completion_tokens": 30}}), &mut prompt, &mut output);
        assert_eq!((prompt, output), (Some(12), Some(30)));
        read_usage(&json!({"usage": null}), &mut prompt, &mut output);
        assert_eq!(output, Some(30));
        assert_eq!(Outcome::Status(429).label(), "429");
    }
}
