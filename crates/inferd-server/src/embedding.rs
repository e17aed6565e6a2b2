//! The embedding pipeline both protocols share (OpenAI's `/v1/embeddings` and v2 inference on
//! an embedding model): admission, tokenization off the async threads, the per-request token
//! limit, the caller's token quota, the model's batcher, and the timing of each stage. Each
//! protocol reads its own request shape before and writes its own response after.

use std::sync::Arc;
use std::time::Instant;

use axum::response::Response;
use inferd_core::{InferError, ServedModel, TextInput};

use crate::auth::Caller;
use crate::quota::TokenReservation;
use crate::state::{AppState, TokenUsage};
use crate::timing::{Stage, Timing};

/// Embeddings with the tokens they took, still reserved against the caller's quota.
pub(crate) struct Embedded {
    pub(crate) vectors: Vec<Vec<f32>>,
    pub(crate) tokens: usize,
    pub(crate) reservation: Option<TokenReservation>,
}

impl Embedded {
    /// Charges the tokens to the caller's quota and records them on the response.
    pub(crate) fn settle(reservation: Option<TokenReservation>, tokens: usize, response: &mut Response) {
        if let Some(reservation) = reservation {
            reservation.settle(tokens as u64);
        }
        response.extensions_mut().insert(TokenUsage { prompt: tokens as u64, completion: 0 });
    }
}

/// Checks that the model's queue would admit the request, encodes the inputs off the async
/// threads, checks them against `max_input_tokens`, reserves their tokens from the caller's
/// quota, then embeds them through the model's batcher, marking the stages on `timing`.
pub(crate) async fn embed(
    state: &AppState,
    served: &Arc<ServedModel>,
    inputs: Vec<TextInput>,
    truncate: bool,
    deadline: Option<Instant>,
    caller: &Caller,
    timing: &Timing,
) -> Result<Embedded, InferError> {
    served.check_admission()?;
    let model = Arc::clone(served);
    let sequences = tokio::task::spawn_blocking(move || match model.embedding() {
        Some(service) => service.encode(&inputs, truncate),
        None => Err(InferError::Internal(format!("model '{}' is not an embedding model", model.name))),
    })
    .await
    .map_err(|err| InferError::Internal(format!("tokenization failed: {err}")))??;
    let tokens: usize = sequences.iter().map(Vec::len).sum();
    timing.mark(Stage::Tokenize);
    let limit = state.settings.max_input_tokens;
    if tokens > limit {
        return Err(InferError::InvalidInput(format!(
            "the request has {tokens} input tokens; at most {limit} are allowed in one request"
        )));
    }
    let reservation = caller.reserve_tokens(tokens as u64)?;
    let service = served
        .embedding()
        .ok_or_else(|| InferError::Internal(format!("model '{}' is not an embedding model", served.name)))?;
    let done = service.embed(sequences, deadline).await?;
    timing.batch(&done.stats);
    Ok(Embedded { vectors: done.output, tokens, reservation })
}
