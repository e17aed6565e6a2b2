//! How one forward pass lays out its batch: each sequence's new tokens end to end as the rows of
//! one matrix, checked against the model first. Both engines share it.

use inferd_core::{InferError, SequenceStep};

use super::config::LlamaConfig;

/// Where one sequence's rows sit in the step's matrix.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    /// Its first row.
    pub start: usize,
    /// Its new rows.
    pub len: usize,
    /// Tokens already in its cache.
    pub past: usize,
}

/// The rows of every sequence of `batch` and their total, after checking that each sequence has
/// new tokens, fits the context (`cached` gives a cache's length) and uses only known ids.
pub(super) fn lay_out<C>(
    config: &LlamaConfig,
    batch: &[SequenceStep<'_, C>],
    cached: impl Fn(&C) -> usize,
) -> Result<(Vec<Span>, usize), InferError> {
    let mut spans = Vec::with_capacity(batch.len());
    let mut total = 0;
    for step in batch {
        let past = cached(step.cache);
        if step.tokens.is_empty() || past + step.tokens.len() > config.context_length {
            return Err(InferError::Internal(format!(
                "a sequence of {} cached and {} new tokens does not fit the context of {}",
                past,
                step.tokens.len(),
                config.context_length
            )));
        }
        if let Some(&bad) = step.tokens.iter().find(|&&id| id as usize >= config.vocab_size) {
            return Err(InferError::InvalidInput(format!("token id {bad} is outside the vocabulary")));
        }
        spans.push(Span { start: total, len: step.tokens.len(), past });
        total += step.tokens.len();
    }
    Ok((spans, total))
}
