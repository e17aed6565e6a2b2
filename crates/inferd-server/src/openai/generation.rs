//! What `/v1/chat/completions` and `/v1/completions` share: sampling parameters as OpenAI names
//! them, running a sequence and turning its tokens into text (held back at stop strings), token
//! accounting against the caller's quota, and server-sent events.
//!
//! A streamed response outlives the handler, so the stream itself holds what the request holds
//! while it runs: its place under `max_concurrent_requests`, its in-flight count and its token
//! reservation. When the client disconnects, the body is dropped, and with it the sequence's
//! event stream: the scheduler drops the sequence before its next step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use inferd_core::generation::{IncrementalText, MAX_STOP_BYTES, StopMatch, TokenLogprobs};
use inferd_core::{
    Event, FinishReason, GenerationRequest, GenerationService, GenerationStream, InFlightRequest, InferError,
    SamplingParams, ServedModel, TextCodec,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::OpenAiError;
use crate::guard::ConcurrencySlot;
use crate::quota::TokenReservation;
use crate::state::AppState;
use crate::timing::{Stage, Timing};

/// Sampling and length parameters common to both endpoints, with inferd's extensions
/// (`top_k`, `repetition_penalty`, `ignore_eos`).
#[derive(Deserialize, Default)]
pub(super) struct Sampling {
    #[serde(default)]
    pub(super) max_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    pub(super) stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    ignore_eos: bool,
    #[serde(default)]
    logit_bias: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// A request checked and ready to run.
pub(super) struct Prepared {
    pub(super) sampling: SamplingParams,
    pub(super) max_tokens: Option<usize>,
    pub(super) stops: Vec<String>,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) ignore_eos: bool,
}

impl Sampling {
    /// Checks the parameters; `logprobs` is the number of alternatives asked for, if any.
    pub(super) fn prepare(self, logprobs: Option<usize>) -> Result<Prepared, OpenAiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(OpenAiError::invalid("n", format!("n must be 1 (one choice per request), not {n}")));
        }
        if self.logit_bias.as_ref().is_some_and(|bias| !bias.is_empty()) {
            return Err(OpenAiError::invalid("logit_bias", "logit_bias is not supported"));
        }
        let max_tokens = match self.max_tokens {
            None => None,
            Some(value) if value < 1 => {
                return Err(OpenAiError::invalid("max_tokens", format!("max_tokens must be at least 1, not {value}")));
            }
            Some(value) => Some(value as usize),
        };
        let top_k = match self.top_k {
            None | Some(-1) => 0,
            Some(value) if value < 0 => {
                return Err(OpenAiError::invalid(
                    "top_k",
                    format!("top_k must be -1 (off) or at least 0, not {value}"),
                ));
            }
            Some(value) => value as usize,
        };
        let stops = match self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(stop)) => vec![stop],
            Some(Value::Array(items)) => {
                let stops: Option<Vec<String>> = items.iter().map(|item| item.as_str().map(str::to_string)).collect();
                match stops {
                    Some(stops) if stops.len() <= 4 => stops,
                    _ => {
                        return Err(OpenAiError::invalid(
                            "stop",
                            "stop must be a string or an array of up to 4 strings",
                        ));
                    }
                }
            }
            Some(_) => {
                return Err(OpenAiError::invalid("stop", "stop must be a string or an array of up to 4 strings"));
            }
        };
        if let Some(long) = stops.iter().find(|stop| stop.len() > MAX_STOP_BYTES) {
            return Err(OpenAiError::invalid(
                "stop",
                format!("stop strings may have at most {MAX_STOP_BYTES} bytes, not {}", long.len()),
            ));
        }
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k,
            seed: self.seed.map(|seed| seed as u64),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            logprobs,
        };
        sampling.validate().map_err(|err| {
            let message = err.to_string();
            let param =
                ["temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "top_logprobs"]
                    .into_iter()
                    .find(|name| message.starts_with(name))
                    .unwrap_or("input");
            OpenAiError::invalid(param, message)
        })?;
        Ok(Prepared {
            sampling,
            max_tokens,
            stops,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|options| options.include_usage),
            ignore_eos: self.ignore_eos,
        })
    }
}

/// The generation service of `model`, or a 400 naming it when it is not a generative model.
pub(super) fn generation_service<'a>(
    served: &'a ServedModel,
    name: &str,
) -> Result<&'a GenerationService, OpenAiError> {
    served.generation().ok_or_else(|| OpenAiError::invalid("model", format!("model '{name}' does not generate text")))
}

/// A queued sequence with what its request holds while it runs.
pub(super) struct Running {
    /// `None` once the sequence has ended: dropping it cancels the sequence.
    stream: Option<GenerationStream>,
    codec: Arc<dyn TextCodec>,
    text: IncrementalText,
    stop: StopMatch,
    pending: VecDeque<Output>,
    /// Tokens generated so far.
    pub(super) completion_tokens: usize,
    /// Tokens in the prompt.
    pub(super) prompt_tokens: usize,
    reservation: Option<TokenReservation>,
    /// Whether the sequence joined the running batch (from then on, its tokens cost quota).
    started: bool,
}

/// Text (possibly empty) with the log-probabilities of the tokens that produced it.
pub(super) struct Piece {
    pub(super) text: String,
    pub(super) logprobs: Vec<(u32, TokenLogprobs)>,
}

/// What a running sequence produces next.
pub(super) enum Output {
    /// More text.
    Piece(Piece),
    /// The end, with its reason.
    Finished(FinishReason),
}

impl Running {
    /// Checks the prompt against the server's `max_input_tokens`, reserves the prompt and the
    /// most tokens the sequence may generate from the caller's token quota, and queues it.
    pub(super) fn start(
        state: &AppState,
        caller: &Caller,
        service: &GenerationService,
        prompt: Vec<u32>,
        prepared: &Prepared,
        timing: &Timing,
        param: &'static str,
    ) -> Result<Self, OpenAiError> {
        let limit = state.settings.max_input_tokens;
        if prompt.len() > limit {
            return Err(OpenAiError::invalid(
                param,
                format!("the prompt has {} tokens; this server accepts at most {limit} per request", prompt.len()),
            ));
        }
        let prompt_tokens = prompt.len();
        let text = IncrementalText::after_prompt(&prompt);
        let request = GenerationRequest {
            prompt,
            max_tokens: prepared.max_tokens,
            sampling: prepared.sampling.clone(),
            ignore_eos: prepared.ignore_eos,
            deadline: timing.deadline(),
        };
        // A request the service refuses (too long, bad parameters) must not cost quota: check
        // it first, then reserve, then queue.
        let most = service.check(&request).map_err(|err| with_param(err, param))?;
        let reservation = caller.reserve_tokens((prompt_tokens + most) as u64)?;
        let stream = service.submit(request).map_err(|err| with_param(err, param))?;
        Ok(Self {
            stream: Some(stream),
            codec: Arc::clone(service.codec()),
            text,
            stop: StopMatch::new(prepared.stops.clone()),
            pending: VecDeque::new(),
            completion_tokens: 0,
            prompt_tokens,
            reservation,
            started: false,
        })
    }

    /// Waits until the sequence joins the running batch, so that a request that cannot start
    /// (its deadline passed in the queue, the scheduler stopped) is answered with its own status
    /// before a stream begins.
    pub(super) async fn wait_started(&mut self, timing: &Timing) -> Result<(), InferError> {
        let stream = self.stream.as_mut().ok_or_else(|| InferError::Internal("the sequence has ended".into()))?;
        match stream.next().await {
            Some(Event::Started { .. }) => {
                self.started = true;
                timing.mark(Stage::Queue);
                Ok(())
            }
            Some(Event::Failed(err)) => {
                self.stream = None;
                Err(err)
            }
            other => {
                self.stream = None;
                Err(InferError::Internal(format!("the scheduler sent {other:?} before starting the sequence")))
            }
        }
    }

    /// The next text or the end; an error when the sequence failed; `None` after the end.
    pub(super) async fn next(&mut self, timing: Option<&Timing>) -> Option<Result<Output, InferError>> {
        loop {
            if let Some(output) = self.pending.pop_front() {
                return Some(Ok(output));
            }
            let stream = self.stream.as_mut()?;
            let Some(event) = stream.next().await else {
                self.stream = None;
                return Some(Err(InferError::Internal("the scheduler stopped".into())));
            };
            match event {
                Event::Started { .. } => {
                    self.started = true;
                    if let Some(timing) = timing {
                        timing.mark(Stage::Queue);
                    }
                }
                Event::Token { id, logprobs } => {
                    self.completion_tokens += 1;
                    let delta = self.text.push(self.codec.as_ref(), id);
                    let (text, stopped) = self.stop.push(&delta);
                    let logprobs: Vec<_> = logprobs.map(|logprobs| (id, logprobs)).into_iter().collect();
                    if !text.is_empty() || !logprobs.is_empty() {
                        self.pending.push_back(Output::Piece(Piece { text, logprobs }));
                    }
                    if stopped {
                        self.end(FinishReason::Stop);
                    }
                }
                Event::Finished { reason } => {
                    let tail = self.text.finish(self.codec.as_ref());
                    let (mut text, stopped) = self.stop.push(&tail);
                    if !stopped {
                        text.push_str(&self.stop.finish());
                    }
                    if !text.is_empty() {
                        self.pending.push_back(Output::Piece(Piece { text, logprobs: Vec::new() }));
                    }
                    self.end(if stopped { FinishReason::Stop } else { reason });
                }
                Event::Failed(err) => {
                    self.stream = None;
                    return Some(Err(err));
                }
            }
        }
    }

    /// Ends the sequence (cancelling it if it still runs) and charges the caller for the tokens
    /// it used.
    fn end(&mut self, reason: FinishReason) {
        self.stream = None;
        self.pending.push_back(Output::Finished(reason));
        if let Some(reservation) = self.reservation.take() {
            reservation.settle((self.prompt_tokens + self.completion_tokens) as u64);
        }
    }
}

impl Drop for Running {
    /// A sequence that ends early (the client left, the request timed out) still costs the
    /// tokens it processed; one that never started costs nothing (the reservation is refunded).
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take()
            && self.started
        {
            reservation.settle((self.prompt_tokens + self.completion_tokens) as u64);
        }
    }
}

/// Names the request's parameter in errors about the input.
fn with_param(err: InferError, param: &'static str) -> OpenAiError {
    let message = err.to_string();
    match err {
        InferError::InvalidInput(_) if message.contains("max_tokens") => OpenAiError::invalid("max_tokens", message),
        InferError::InvalidInput(_) if message.starts_with("temperature") => {
            OpenAiError::invalid("temperature", message)
        }
        InferError::InvalidInput(_) => OpenAiError::invalid(param, message),
        other => OpenAiError::from(other),
    }
}

/// Seconds since 1970, for `created`.
pub(super) fn created() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// `usage` as OpenAI writes it.
pub(super) fn usage(prompt: usize, completion: usize) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// What a streamed response holds until its last event; dropping them (at the end, or when the
/// client leaves) frees the request's concurrency slot and its place in the in-flight gauge.
pub(super) struct StreamGuards {
    pub(super) _slot: Option<ConcurrencySlot>,
    pub(super) _in_flight: InFlightRequest,
}

/// One server-sent event carrying `value`.
pub(super) fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// A `text/event-stream` response whose events `produce` yields, then `data: [DONE]`. Each
/// call of `produce` returns the next events, or `None` at the end.
pub(super) fn sse_response<S, F, Fut>(state: S, guards: StreamGuards, produce: F) -> Response
where
    S: Send + 'static,
    F: FnMut(S) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<(Vec<Bytes>, S)>> + Send + 'static,
{
    use futures_util::StreamExt;
    let events =
        futures_util::stream::unfold((Some(state), produce, Some(guards)), |(state, mut produce, guards)| async move {
            let state = state?;
            match produce(state).await {
                Some((events, state)) => Some((events, (Some(state), produce, guards))),
                // The end: [DONE], then the guards go with the stream's state.
                None => Some((vec![Bytes::from_static(b"data: [DONE]\n\n")], (None, produce, None))),
            }
        })
        .flat_map(|events| futures_util::stream::iter(events.into_iter().map(Ok::<Bytes, Infallible>)));
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    *response.status_mut() = StatusCode::OK;
    response
}

/// An error inside a stream, in OpenAI's shape.
pub(super) fn stream_error(err: InferError) -> Bytes {
    // A stream's events pass no layer that could replace an internal failure's own message.
    let err = match err {
        InferError::Internal(message) => {
            tracing::error!(error = %message, "stream failed");
            InferError::Internal("internal server error".into())
        }
        other => other,
    };
    let error = OpenAiError::from(err);
    sse_data(&json!({ "error": error.body() }))
}
