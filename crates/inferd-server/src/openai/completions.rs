//! `POST /v1/chat/completions` and `POST /v1/completions`, as OpenAI defines them, plain and
//! streamed (`stream: true`: server-sent events ending with `data: [DONE]`).
//!
//! Chat messages are rendered through the model's own chat template (with the assistant's
//! generation prompt) and tokenized; a completion's `prompt` is a text or token ids (one prompt
//! per request). One choice per request (`n` = 1). inferd adds `top_k`, `repetition_penalty`
//! and `ignore_eos` (keep going past end-of-sequence tokens until `max_tokens`, for
//! benchmarks).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use inferd_core::{ChatMessage, FinishReason, InferError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::generation::{
    Output, Prepared, Running, Sampling, StreamGuards, created, generation_service, sse_response, usage,
};
use super::reply::{Api, Reply, Streaming};
use crate::auth::Caller;
use crate::error::OpenAiError;
use crate::error::rejected_body_message;
use crate::guard::ConcurrencySlot;
use crate::state::{AppState, TokenUsage, labelled};
use crate::timing::{Stage, Timing};

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
    // Refused before the prompt is rendered and tokenized when it would be refused after.
    served.check_admission()?;
    timing.mark(Stage::Parse);
    let codec = Arc::clone(service.codec());
    let prompt = match job.prompt {
        Prompt::Ids(ids) => ids,
        prompt => tokio::task::spawn_blocking(move || match prompt {
            Prompt::Chat(messages) => codec.render_chat(&messages).and_then(|text| codec.encode(&text, false)),
            Prompt::Text(text) => codec.encode(&text, true),
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
        // A request that cannot start is answered with its own status, before the stream.
        running.wait_started(timing).await?;
        let guards = StreamGuards { _slot: slot, _in_flight: state.metrics().enter_request() };
        let stream = Streaming::new(running, reply, job.prepared.include_usage, state.clone(), caller.id());
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
