//! The JSON of chat and text completions: whole responses' choices, streamed chunks, and
//! log-probabilities in each API's shape.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use inferd_core::TextCodec;
use inferd_core::generation::TokenLogprobs;
use serde_json::{Map, Value, json};

use super::generation::{Output, Running, sse_data, stream_error, usage};
use crate::state::AppState;

/// Which of the two APIs a request came through; they differ only in their JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

impl Api {
    pub(super) fn object(self) -> &'static str {
        match self {
            Self::Chat => "chat.completion",
            Self::Completions => "text_completion",
        }
    }

    pub(super) fn chunk_object(self) -> &'static str {
        match self {
            Self::Chat => "chat.completion.chunk",
            Self::Completions => "text_completion",
        }
    }

    pub(super) fn id(self) -> String {
        let prefix = match self {
            Self::Chat => "chatcmpl",
            Self::Completions => "cmpl",
        };
        format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
    }

    /// The parameter a prompt that is too long is blamed on.
    pub(super) fn prompt_param(self) -> &'static str {
        match self {
            Self::Chat => "messages",
            Self::Completions => "prompt",
        }
    }
}

/// What every chunk of a response repeats.
pub(super) struct Reply {
    pub(super) api: Api,
    pub(super) id: String,
    pub(super) model: String,
    pub(super) created: u64,
    pub(super) codec: Arc<dyn TextCodec>,
}

impl Reply {
    /// Log-probabilities in the API's shape; `offset` is the text's length in characters before
    /// these tokens (legacy completions report each token's offset).
    pub(super) fn logprobs(&self, entries: &[(u32, TokenLogprobs)], offset: usize) -> Value {
        let token = |id: u32| String::from_utf8_lossy(&self.codec.token_bytes(id)).into_owned();
        match self.api {
            Api::Chat => {
                let content: Vec<Value> = entries
                    .iter()
                    .map(|(id, logprobs)| {
                        let top: Vec<Value> = logprobs
                            .top
                            .iter()
                            .map(|&(alt, logprob)| {
                                json!({ "token": token(alt), "logprob": logprob, "bytes": self.codec.token_bytes(alt) })
                            })
                            .collect();
                        json!({
                            "token": token(*id),
                            "logprob": logprobs.logprob,
                            "bytes": self.codec.token_bytes(*id),
                            "top_logprobs": top,
                        })
                    })
                    .collect();
                json!({ "content": content })
            }
            Api::Completions => {
                let mut offsets = Vec::with_capacity(entries.len());
                let mut position = offset;
                for (id, _) in entries {
                    offsets.push(position);
                    position += token(*id).chars().count();
                }
                let top: Vec<Value> = entries
                    .iter()
                    .map(|(_, logprobs)| {
                        let map: Map<String, Value> =
                            logprobs.top.iter().map(|&(alt, logprob)| (token(alt), json!(logprob))).collect();
                        Value::Object(map)
                    })
                    .collect();
                json!({
                    "tokens": entries.iter().map(|(id, _)| token(*id)).collect::<Vec<_>>(),
                    "token_logprobs": entries.iter().map(|(_, logprobs)| logprobs.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }

    fn chunk(&self, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.api.chunk_object(),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

/// A streamed response's state between events.
pub(super) struct Streaming {
    running: Running,
    reply: Reply,
    include_usage: bool,
    first: bool,
    state: AppState,
    caller: String,
    started: Instant,
    /// Characters of text sent so far (legacy completions' `text_offset`).
    offset: usize,
    ended: bool,
}

impl Streaming {
    /// The state of a stream whose sequence has started.
    pub(super) fn new(running: Running, reply: Reply, include_usage: bool, state: AppState, caller: &str) -> Self {
        Self {
            running,
            reply,
            include_usage,
            first: true,
            state,
            caller: caller.to_string(),
            started: Instant::now(),
            offset: 0,
            ended: false,
        }
    }

    /// The next events; `None` after the last.
    pub(super) async fn produce(mut self) -> Option<(Vec<Bytes>, Self)> {
        if self.ended {
            return None;
        }
        let mut events = Vec::new();
        if self.first && self.reply.api == Api::Chat {
            let choice = json!({ "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null });
            events.push(sse_data(&self.reply.chunk(vec![choice])));
        }
        self.first = false;
        match self.running.next(None).await {
            Some(Ok(Output::Piece(piece))) => {
                let logprobs = (!piece.logprobs.is_empty()).then(|| self.reply.logprobs(&piece.logprobs, self.offset));
                self.offset += piece.text.chars().count();
                let choice = match self.reply.api {
                    Api::Chat => {
                        json!({ "index": 0, "delta": { "content": piece.text }, "logprobs": logprobs, "finish_reason": null })
                    }
                    Api::Completions => {
                        json!({ "index": 0, "text": piece.text, "logprobs": logprobs, "finish_reason": null })
                    }
                };
                events.push(sse_data(&self.reply.chunk(vec![choice])));
            }
            Some(Ok(Output::Finished(reason))) => {
                let choice = match self.reply.api {
                    Api::Chat => json!({ "index": 0, "delta": {}, "logprobs": null, "finish_reason": reason.as_str() }),
                    Api::Completions => {
                        json!({ "index": 0, "text": "", "logprobs": null, "finish_reason": reason.as_str() })
                    }
                };
                events.push(sse_data(&self.reply.chunk(vec![choice])));
                if self.include_usage {
                    let mut chunk = self.reply.chunk(Vec::new());
                    chunk["usage"] = usage(self.running.prompt_tokens, self.running.completion_tokens);
                    events.push(sse_data(&chunk));
                }
                self.finish(reason.as_str());
            }
            Some(Err(err)) => {
                events.push(stream_error(err));
                self.finish("error");
            }
            None => self.finish("ended"),
        }
        Some((events, self))
    }

    /// Counts the tokens and logs the stream's end (the request's own log line was written
    /// when its headers left).
    fn finish(&mut self, outcome: &str) {
        self.ended = true;
        let (prompt, completion) = (self.running.prompt_tokens as u64, self.running.completion_tokens as u64);
        self.state.metrics().observe_tokens(&self.reply.model, prompt, completion);
        tracing::info!(
            target: "inferd::request",
            id = %self.reply.id,
            caller = %self.caller,
            model = %self.reply.model,
            outcome,
            prompt_tokens = prompt,
            completion_tokens = completion,
            duration_ms = self.started.elapsed().as_secs_f64() * 1e3,
            "stream ended"
        );
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if !self.ended {
            // The client went away mid-stream: the sequence is cancelled with this value.
            self.finish("disconnected");
        }
    }
}
