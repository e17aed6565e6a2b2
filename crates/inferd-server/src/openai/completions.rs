//! `POST /v1/chat/completions` and `POST /v1/completions`, as OpenAI defines them, plain and
//! streamed (`stream: true`: server-sent events ending with `data: [DONE]`).
//!
//! Chat messages are rendered through the model's own chat template (with the assistant's
//! generation prompt) and tokenized; a completion's `prompt` is a text or token ids (one prompt
//! per request). One choice per request (`n` = 1). inferd adds `top_k`, `repetition_penalty`
//! and `ignore_eos` (keep going past end-of-sequence tokens until `max_tokens`, for
//! benchmarks).

use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use inferd_core::generation::TokenLogprobs;
use inferd_core::{ChatMessage, FinishReason, InferError, TextCodec};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::OpenAiError;
use super::generation::{
    Output, Prepared, Running, Sampling, StreamGuards, created, generation_service, sse_data, sse_response,
    stream_error, usage,
};
use crate::app::{AppState, TokenUsage, labelled};
use crate::auth::Caller;
use crate::error::rejected_body_message;
use crate::guard::ConcurrencySlot;
use crate::timing::{Stage, Timing};

/// Which of the two APIs a request came through; they differ only in their JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
}

impl Api {
    fn object(self) -> &'static str {
        match self {
            Self::Chat => "chat.completion",
            Self::Completions => "text_completion",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Self::Chat => "chat.completion.chunk",
            Self::Completions => "text_completion",
        }
    }

    fn id(self) -> String {
        let prefix = match self {
            Self::Chat => "chatcmpl",
            Self::Completions => "cmpl",
        };
        format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
    }

    /// The parameter a prompt that is too long is blamed on.
    fn prompt_param(self) -> &'static str {
        match self {
            Self::Chat => "messages",
            Self::Completions => "prompt",
        }
    }
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<MessageIn>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<i64>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
}

#[derive(Deserialize)]
struct MessageIn {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: Value,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    logprobs: Option<i64>,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    best_of: Option<i64>,
}

/// What a request asks for, once parsed and checked: the prompt still to be encoded.
struct Job {
    api: Api,
    model: String,
    prompt: Prompt,
    prepared: Prepared,
}

enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    Ids(Vec<u32>),
}

/// Answers `POST /v1/chat/completions`.
pub(crate) async fn chat(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(timing): Extension<Timing>,
    slot: Option<Extension<ConcurrencySlot>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = parse_body::<ChatRequest>(&state, body).and_then(chat_job);
    handle(state, caller, timing, slot.map(|Extension(slot)| slot), parsed).await
}

/// Answers `POST /v1/completions`.
pub(crate) async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(timing): Extension<Timing>,
    slot: Option<Extension<ConcurrencySlot>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = parse_body::<CompletionRequest>(&state, body).and_then(completion_job);
    handle(state, caller, timing, slot.map(|Extension(slot)| slot), parsed).await
}

fn parse_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, OpenAiError> {
    let body = body.map_err(|rejection| {
        let message = rejected_body_message(&rejection, state.settings.max_body_bytes);
        OpenAiError::new(rejection.status(), message).closing_connection()
    })?;
    serde_json::from_slice(&body)
        .map_err(|err| OpenAiError::new(StatusCode::BAD_REQUEST, format!("invalid request body: {err}")))
}

fn chat_job(request: ChatRequest) -> Result<Job, OpenAiError> {
    if request.messages.is_empty() {
        return Err(OpenAiError::invalid("messages", "messages must hold at least one message"));
    }
    if request.tools.as_ref().is_some_and(|tools| !tools.is_null() && tools.as_array().is_none_or(|t| !t.is_empty())) {
        return Err(OpenAiError::invalid("tools", "tools are not supported"));
    }
    if let Some(format) = &request.response_format
        && format.get("type").and_then(Value::as_str).is_some_and(|kind| kind != "text")
    {
        return Err(OpenAiError::invalid("response_format", "only the 'text' response format is supported"));
    }
    let messages = request
        .messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| {
            let role = match message.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(OpenAiError::invalid(
                        "messages",
                        format!(
                            "messages[{index}]: role '{other}' is not supported (system, developer, user, assistant)"
                        ),
                    ));
                }
            };
            let content = message_text(message.content)
                .map_err(|reason| OpenAiError::invalid("messages", format!("messages[{index}].content: {reason}")))?;
            Ok(ChatMessage { role: role.to_string(), content })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let logprobs = match (request.logprobs.unwrap_or(false), request.top_logprobs) {
        (false, None) => None,
        (false, Some(_)) => return Err(OpenAiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
        (true, top) => Some(top_count(top, "top_logprobs")?),
    };
    let mut sampling = request.sampling;
    if request.max_completion_tokens.is_some() {
        sampling.max_tokens = request.max_completion_tokens;
    }
    let prepared = sampling.prepare(logprobs)?;
    Ok(Job { api: Api::Chat, model: request.model, prompt: Prompt::Chat(messages), prepared })
}

/// A message's text: a string, an array of text parts, or null (an empty text).
fn message_text(content: Option<Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(text)) => Ok(text),
                (Some(kind), _) => Err(format!("content parts of type '{kind}' are not supported (text only)")),
                _ => Err("each content part must be {\"type\": \"text\", \"text\": ...}".to_string()),
            })
            .collect(),
        Some(_) => Err("must be a string or an array of text parts".into()),
    }
}

fn top_count(top: Option<i64>, param: &'static str) -> Result<usize, OpenAiError> {
    match top {
        None => Ok(0),
        Some(value) if (0..=inferd_core::generation::MAX_TOP_LOGPROBS as i64).contains(&value) => Ok(value as usize),
        Some(value) => Err(OpenAiError::invalid(
            param,
            format!("{param} must be between 0 and {}, not {value}", inferd_core::generation::MAX_TOP_LOGPROBS),
        )),
    }
}

fn completion_job(request: CompletionRequest) -> Result<Job, OpenAiError> {
    if request.echo {
        return Err(OpenAiError::invalid("echo", "echo is not supported"));
    }
    if request.suffix.as_ref().is_some_and(|suffix| !suffix.is_empty()) {
        return Err(OpenAiError::invalid("suffix", "suffix is not supported"));
    }
    if request.best_of.is_some_and(|best| best != 1) {
        return Err(OpenAiError::invalid("best_of", "best_of must be 1"));
    }
    let one = "prompt must be a string or an array of token ids (one prompt per request)";
    let ids = |items: &[Value]| -> Option<Vec<u32>> {
        items.iter().map(|item| item.as_u64().and_then(|id| u32::try_from(id).ok())).collect()
    };
    let prompt = match request.prompt {
        Value::String(text) => Prompt::Text(text),
        Value::Array(items) => match items.as_slice() {
            [Value::String(text)] => Prompt::Text(text.clone()),
            [Value::Array(inner)] => Prompt::Ids(ids(inner).ok_or_else(|| OpenAiError::invalid("prompt", one))?),
            items if items.iter().all(Value::is_number) => {
                Prompt::Ids(ids(items).ok_or_else(|| OpenAiError::invalid("prompt", one))?)
            }
            _ => return Err(OpenAiError::invalid("prompt", one)),
        },
        _ => return Err(OpenAiError::invalid("prompt", one)),
    };
    let logprobs = request.logprobs.map(|top| top_count(Some(top), "logprobs")).transpose()?;
    let prepared = request.sampling.prepare(logprobs)?;
    Ok(Job { api: Api::Completions, model: request.model, prompt, prepared })
}

async fn handle(
    state: AppState,
    caller: Caller,
    timing: Timing,
    slot: Option<ConcurrencySlot>,
    parsed: Result<Job, OpenAiError>,
) -> Response {
    let job = match parsed {
        Ok(job) => job,
        Err(err) => return err.into_response(),
    };
    let model = job.model.clone();
    let result = run(&state, &caller, &timing, slot, job).await;
    labelled(&state, &model, result)
}

async fn run(
    state: &AppState,
    caller: &Caller,
    timing: &Timing,
    slot: Option<ConcurrencySlot>,
    job: Job,
) -> Result<Response, OpenAiError> {
    let served = state.model(caller, &job.model)?;
    let service = generation_service(&served, &job.model)?;
    timing.mark(Stage::Parse);
    let codec = Arc::clone(service.codec());
    let prompt = match job.prompt {
        Prompt::Ids(ids) => ids,
        prompt => tokio::task::spawn_blocking(move || match prompt {
            Prompt::Chat(messages) => codec.render_chat(&messages).and_then(|text| codec.encode(&text)),
            Prompt::Text(text) => codec.encode(&text),
            Prompt::Ids(ids) => Ok(ids),
        })
        .await
        .map_err(|err| OpenAiError::from(InferError::Internal(format!("tokenizer task failed: {err}"))))??,
    };
    timing.mark(Stage::Tokenize);
    let mut running = Running::start(state, caller, service, prompt, &job.prepared, timing, job.api.prompt_param())?;
    let reply = Reply {
        api: job.api,
        id: job.api.id(),
        model: job.model.clone(),
        created: created(),
        codec: Arc::clone(service.codec()),
    };
    if job.prepared.stream {
        let guards = StreamGuards { slot, in_flight: state.metrics().enter_request() };
        let stream = Streaming {
            running,
            reply,
            include_usage: job.prepared.include_usage,
            first: true,
            state: state.clone(),
            caller: caller.id().to_string(),
            started: Instant::now(),
            ended: false,
        };
        return Ok(sse_response(stream, guards, Streaming::produce));
    }

    let mut text = String::new();
    let mut logprobs = Vec::new();
    let mut finish = FinishReason::Length;
    while let Some(output) = running.next(Some(timing)).await {
        match output? {
            Output::Piece(piece) => {
                text.push_str(&piece.text);
                logprobs.extend(piece.logprobs);
            }
            Output::Finished(reason) => finish = reason,
        }
    }
    timing.mark(Stage::Compute);
    let logprobs = job.prepared.sampling.logprobs.map(|_| reply.logprobs(&logprobs, 0));
    let choice = match reply.api {
        Api::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "logprobs": logprobs,
            "finish_reason": finish.as_str(),
        }),
        Api::Completions => json!({ "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish.as_str() }),
    };
    let body = json!({
        "id": reply.id,
        "object": reply.api.object(),
        "created": reply.created,
        "model": reply.model,
        "choices": [choice],
        "usage": usage(running.prompt_tokens, running.completion_tokens),
    });
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    timing.mark(Stage::Serialize);
    response
        .extensions_mut()
        .insert(TokenUsage { prompt: running.prompt_tokens as u64, completion: running.completion_tokens as u64 });
    Ok(response)
}

/// What every chunk of a response repeats.
struct Reply {
    api: Api,
    id: String,
    model: String,
    created: u64,
    codec: Arc<dyn TextCodec>,
}

impl Reply {
    /// Log-probabilities in the API's shape; `offset` is the text's length before these tokens
    /// (legacy completions report each token's offset).
    fn logprobs(&self, entries: &[(u32, TokenLogprobs)], offset: usize) -> Value {
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
                    position += token(*id).len();
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
struct Streaming {
    running: Running,
    reply: Reply,
    include_usage: bool,
    first: bool,
    state: AppState,
    caller: String,
    started: Instant,
    ended: bool,
}

impl Streaming {
    /// The next events; `None` after the last.
    async fn produce(mut self) -> Option<(Vec<Bytes>, Self)> {
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
                let logprobs = (!piece.logprobs.is_empty()).then(|| self.reply.logprobs(&piece.logprobs, 0));
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
                self.finish("stop");
            }
            Some(Err(err)) => {
                events.push(stream_error(err));
                self.finish("error");
            }
            None => self.finish("stop"),
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
