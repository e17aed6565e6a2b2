//! One request of a load test: send it, read the whole answer as a real client does (a streamed
//! answer event by event), and time it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "status")]
pub enum Outcome {
    /// A 2xx answer, read to its end (for a stream, to its `[DONE]`).
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
}

/// Sends `body` to `url` and measures the answer. `timeout` bounds the whole exchange.
pub async fn send(client: &reqwest::Client, url: &str, body: &Value, timeout: Duration) -> Sample {
    let started = Instant::now();
    let measured = tokio::time::timeout(timeout, exchange(client, url, body, started)).await;
    let mut sample = match measured {
        Ok(sample) => sample,
        Err(_) => empty(Outcome::Timeout),
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
    }
}

async fn exchange(client: &reqwest::Client, url: &str, body: &Value, started: Instant) -> Sample {
    let response = match client.post(url).json(body).send().await {
        Ok(response) => response,
        Err(_) => return empty(Outcome::Transport),
    };
    let status = response.status();
    let streamed = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    if !status.is_success() {
        // Read the refusal to its end, as a client would, so the connection can be reused.
        let _ = response.bytes().await;
        return empty(Outcome::Status(status.as_u16()));
    }
    if streamed {
        read_stream(response, started).await
    } else {
        match response.bytes().await {
            Ok(bytes) => {
                let mut sample = empty(Outcome::Ok);
                if let Ok(answer) = serde_json::from_slice::<Value>(&bytes) {
                    read_usage(&answer, &mut sample);
                }
                sample
            }
            Err(_) => empty(Outcome::Transport),
        }
    }
}

fn read_usage(event: &Value, sample: &mut Sample) {
    if let Some(usage) = event.get("usage").filter(|usage| usage.is_object()) {
        sample.prompt_tokens = usage.get("prompt_tokens").and_then(Value::as_u64).or(sample.prompt_tokens);
        sample.output_tokens = usage.get("completion_tokens").and_then(Value::as_u64).or(sample.output_tokens);
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

/// Reads server-sent events to `[DONE]` (or the end of the body), timing the events with text.
async fn read_stream(mut response: reqwest::Response, started: Instant) -> Sample {
    let mut sample = empty(Outcome::Ok);
    let mut buffer: Vec<u8> = Vec::new();
    let mut first: Option<f64> = None;
    let mut last = 0.0;
    let mut text_events = 0u64;
    let mut done = false;
    while !done {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => return empty(Outcome::Transport),
        };
        let now = started.elapsed().as_secs_f64();
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:") else { continue };
            let data = data.trim();
            if data == "[DONE]" {
                done = true;
                break;
            }
            let Ok(event) = serde_json::from_str::<Value>(data) else { continue };
            if event.get("error").is_some() {
                let status = event.pointer("/error/code").and_then(Value::as_u64).unwrap_or(500);
                return empty(Outcome::Status(u16::try_from(status).unwrap_or(500)));
            }
            if carries_text(&event) {
                text_events += 1;
                first.get_or_insert(now);
                last = now;
            }
            read_usage(&event, &mut sample);
        }
    }
    let tokens = sample.output_tokens.unwrap_or(text_events);
    sample.output_tokens = Some(tokens);
    sample.ttft = first;
    if let Some(first) = first
        && tokens >= 2
    {
        sample.itl = Some((last - first) / (tokens - 1) as f64);
    }
    sample
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

    #[test]
    fn usage_fills_token_counts() {
        let mut sample = empty(Outcome::Ok);
        read_usage(&json!({"usage": {"prompt_tokens": 12, "completion_tokens": 30}}), &mut sample);
        assert_eq!((sample.prompt_tokens, sample.output_tokens), (Some(12), Some(30)));
        read_usage(&json!({"usage": null}), &mut sample);
        assert_eq!(sample.output_tokens, Some(30));
        assert_eq!(Outcome::Status(429).label(), "429");
    }
}
