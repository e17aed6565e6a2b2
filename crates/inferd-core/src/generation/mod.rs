//! Text generation: a causal language model served by a continuous-batching scheduler.
//!
//! Serving an LLM has two halves, as embeddings do. A [`TextCodec`] renders chat messages
//! through the model's template, turns text into token ids and ids back into text; it runs on
//! the caller's side. A [`CausalLm`] runs forward passes over a batch of sequences, each with
//! its own key/value cache, on the scheduler's thread.
//!
//! [`GenerationService`] joins them behind the [`scheduler`]: requests queue (bounded: a full
//! queue answers [`InferError::Overloaded`]), join the running batch between decode steps, and
//! stream their tokens back as [`Event`]s. Dropping the [`GenerationStream`] cancels the
//! sequence before the next step.

pub mod sampling;
pub mod scheduler;
pub mod text;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::error::InferError;
use crate::metrics::BatchMetrics;
pub use sampling::{MAX_TOP_LOGPROBS, Sampler, SamplingParams, TokenLogprobs};
use scheduler::Scheduler;
pub use text::{IncrementalText, MAX_STOP_BYTES, StopMatch};

/// What a generative model is, for metadata and validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationInfo {
    /// The model family, shown as the model's platform (`inferd_llama`).
    pub platform: String,
    /// The most tokens a sequence may hold, prompt and completion together.
    pub context_length: usize,
    /// Size of the vocabulary (length of each logits vector).
    pub vocab_size: usize,
    /// Tokens that end a sequence (end of sequence, end of turn); never emitted.
    pub stop_ids: Vec<u32>,
}

/// One chat message, as the template reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or another role the template knows).
    pub role: String,
    /// The message's text.
    pub content: String,
}

/// Turns chat messages and text into the token ids a model reads, and ids back into text.
/// Shared by every request thread.
pub trait TextCodec: Send + Sync + 'static {
    /// The prompt text for `messages`, rendered by the model's chat template with the
    /// generation prompt (the opening of the assistant's turn) appended.
    fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, InferError>;

    /// The ids of `text`. Special tokens written in the text (as a rendered chat template writes
    /// them) become their ids. With `add_special_tokens` (a raw prompt, not a rendered chat),
    /// the tokenizer adds what it adds to every text (a beginning-of-sequence token, for
    /// many); a model whose metadata asks for one always gets it.
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, InferError>;

    /// The text of `ids`, special tokens left out. Bytes that do not form UTF-8 yet (a
    /// character split over tokens) come out as U+FFFD.
    fn decode(&self, ids: &[u32]) -> String;

    /// The raw bytes a token stands for (for `logprobs`' `bytes`).
    fn token_bytes(&self, id: u32) -> Vec<u8>;
}

/// One sequence's new tokens in a forward pass, with its cache.
pub struct SequenceStep<'a, C> {
    /// The sequence's key/value cache; the pass appends the new tokens to it.
    pub cache: &'a mut C,
    /// Tokens to feed: the whole prompt on a sequence's first step, then one token per step.
    pub tokens: &'a [u32],
}

/// A causal language model that advances many sequences in one forward pass. It lives on the
/// scheduler's thread.
pub trait CausalLm: Send + 'static {
    /// One sequence's key/value cache.
    type Cache: Send + 'static;

    /// An empty cache for a new sequence.
    fn new_cache(&self) -> Self::Cache;

    /// Runs the model over every sequence's new tokens at once, appending them to the caches,
    /// and returns, per sequence and in order, the logits after its last new token. A
    /// sequence's result must not depend on the others in the batch.
    fn forward(&mut self, batch: &mut [SequenceStep<'_, Self::Cache>]) -> Result<Vec<Vec<f32>>, InferError>;
}

/// Bounds of the running batch and of the queue in front of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerPolicy {
    /// Most sequences decoding together.
    pub max_running_sequences: usize,
    /// Key/value budget: the running sequences' prompts plus their `max_tokens`, together. A
    /// request joins only when its whole budget fits, so a running sequence never has to stop
    /// for memory.
    pub max_total_tokens: usize,
    /// Most prompt tokens prefilled in one step (new sequences beyond it join at later steps,
    /// so that a burst of long prompts does not stall the running ones for long); a single
    /// longer prompt still runs, alone.
    pub max_prefill_tokens: usize,
    /// Requests that may wait for a place; more are refused with 429 and Retry-After.
    pub max_queued_requests: usize,
    /// Longest a request may expect to wait for a place in the running batch (its time to
    /// first token, less the prefill): one that would wait longer, at the rate the batch has
    /// been freeing places, is refused at once (429 with `Retry-After`) instead of queueing.
    #[serde(with = "humantime_serde")]
    pub max_queue_time: Duration,
}

impl Default for SchedulerPolicy {
    fn default() -> Self {
        Self {
            max_running_sequences: 16,
            max_total_tokens: 65_536,
            max_prefill_tokens: 2048,
            max_queued_requests: 256,
            max_queue_time: Duration::from_secs(2),
        }
    }
}

impl SchedulerPolicy {
    /// Refuses zero bounds, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("max_running_sequences", self.max_running_sequences),
            ("max_total_tokens", self.max_total_tokens),
            ("max_prefill_tokens", self.max_prefill_tokens),
            ("max_queued_requests", self.max_queued_requests),
        ] {
            if value == 0 {
                return Err(format!("generation.{name} must be at least 1"));
            }
        }
        if self.max_queue_time.is_zero() || self.max_queue_time > Duration::from_secs(3600) {
            return Err("generation.max_queue_time must be more than zero and at most 3600s".into());
        }
        Ok(())
    }
}

/// What to generate from a prompt.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate; `None`: as many as the context (and the key/value budget)
    /// leaves.
    pub max_tokens: Option<usize>,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Keep generating past end-of-sequence tokens (for benchmarks), until `max_tokens`.
    pub ignore_eos: bool,
    /// When to give up waiting: a request not yet running then fails with
    /// [`InferError::Timeout`]. A running sequence goes on to its end (bounded by `max_tokens`);
    /// its caller cancels it by dropping the stream.
    pub deadline: Option<Instant>,
}

/// Why a sequence ended, as OpenAI's `finish_reason` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token (or, decided by the caller, a stop string).
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
}

impl FinishReason {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What a running sequence reports, in order: `Started`, then `Token`s, then `Finished` or
/// `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The sequence joined the running batch after waiting this long.
    Started {
        /// Time in the queue.
        queue_time: Duration,
    },
    /// A generated token (stop tokens are not reported).
    Token {
        /// Its id.
        id: u32,
        /// Its log-probabilities, when asked for.
        logprobs: Option<TokenLogprobs>,
    },
    /// The sequence ended.
    Finished {
        /// Why.
        reason: FinishReason,
    },
    /// The sequence could not go on.
    Failed(InferError),
}

/// The events of one sequence. Dropping it cancels the sequence.
pub struct GenerationStream {
    events: mpsc::UnboundedReceiver<Event>,
    prompt_tokens: usize,
    max_tokens: usize,
}

impl GenerationStream {
    /// The next event; `None` once the sequence has ended.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Tokens in the prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The most tokens this sequence may generate.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

/// A generative model served by its scheduler, with its codec.
pub struct GenerationService {
    info: GenerationInfo,
    codec: Arc<dyn TextCodec>,
    policy: SchedulerPolicy,
    scheduler: Scheduler,
}

impl GenerationService {
    /// Starts the scheduler thread for `model`, whose text `codec` handles.
    pub fn start<M: CausalLm>(
        name: &str,
        info: GenerationInfo,
        codec: Arc<dyn TextCodec>,
        model: M,
        policy: SchedulerPolicy,
        metrics: BatchMetrics,
    ) -> Result<Self, String> {
        policy.validate()?;
        let scheduler = Scheduler::spawn(name, model, info.clone(), policy.clone(), metrics)?;
        Ok(Self { info, codec, policy, scheduler })
    }

    /// What the model is.
    pub fn info(&self) -> &GenerationInfo {
        &self.info
    }

    /// The model's codec.
    pub fn codec(&self) -> &Arc<dyn TextCodec> {
        &self.codec
    }

    /// The scheduler's bounds.
    pub fn policy(&self) -> &SchedulerPolicy {
        &self.policy
    }

    /// Checks `request` against the model and the policy without queueing it; returns the
    /// most tokens it may generate.
    pub fn check(&self, request: &GenerationRequest) -> Result<usize, InferError> {
        request.sampling.validate()?;
        let context = self.info.context_length;
        let prompt = request.prompt.len();
        if prompt == 0 {
            return Err(InferError::InvalidInput("the prompt is empty".into()));
        }
        if let Some(&id) = request.prompt.iter().find(|&&id| id as usize >= self.info.vocab_size) {
            return Err(InferError::InvalidInput(format!(
                "token id {id} is outside the vocabulary (0 to {})",
                self.info.vocab_size - 1
            )));
        }
        if prompt >= context {
            return Err(InferError::InvalidInput(format!(
                "the prompt has {prompt} tokens; this model's context holds {context}, completion included"
            )));
        }
        let max_tokens = match request.max_tokens {
            Some(0) => return Err(InferError::InvalidInput("max_tokens must be at least 1".into())),
            Some(max) if prompt + max > context => {
                return Err(InferError::InvalidInput(format!(
                    "max_tokens is {max}, but the prompt has {prompt} tokens and the context holds {context}: \
                     at most {} can be generated",
                    context - prompt
                )));
            }
            Some(max) => max,
            // As many as the context leaves, within what one sequence may reserve.
            None => context.min(self.policy.max_total_tokens).saturating_sub(prompt).max(1),
        };
        let budget = self.policy.max_total_tokens;
        if prompt + max_tokens > budget {
            return Err(InferError::InvalidInput(format!(
                "the prompt ({prompt} tokens) and max_tokens ({max_tokens}) exceed the server's key/value budget \
                 of {budget} tokens per batch; ask for fewer tokens"
            )));
        }
        Ok(max_tokens)
    }

    /// Checks `request` (as [`check`](Self::check) does) and queues it. Refuses at once (with
    /// [`InferError::Overloaded`]) when the queue is full or the request would wait past
    /// `max_queue_time` for a place in the running batch.
    pub fn submit(&self, request: GenerationRequest) -> Result<GenerationStream, InferError> {
        let max_tokens = self.check(&request)?;
        let prompt_tokens = request.prompt.len();
        let (sender, events) = mpsc::unbounded_channel();
        self.scheduler.enqueue(request, max_tokens, sender)?;
        Ok(GenerationStream { events, prompt_tokens, max_tokens })
    }

    /// Whether a request submitted now would be admitted (not when the queue is full, nor when
    /// it would wait past `max_queue_time`): for refusing before preparing the prompt.
    /// [`submit`](Self::submit) checks again.
    pub fn check_admission(&self) -> Result<(), InferError> {
        self.scheduler.check_admission()
    }

    /// Stops accepting requests; running and queued sequences finish.
    pub fn close(&self) {
        self.scheduler.close();
    }
}
