//! Text embedding models: texts in, one vector per text out.
//!
//! Serving an embedding model has two halves. A [`TextEncoder`] turns each text (or token array)
//! into the token ids the model reads; it runs on the caller's side, before the request queues,
//! so a text that cannot be encoded is refused without costing the model anything. An
//! [`EmbeddingModel`] turns sequences of ids into vectors on the batcher's worker thread.
//!
//! [`EmbeddingService`] joins them behind a [`Batcher`]. The batcher gathers requests; the
//! worker then sorts every sequence of the batch by length and cuts the sorted list into
//! sub-batches within `max_batch_size` sequences and `max_batch_tokens` tokens (padded or real,
//! by the model's [`TokenLayout`]), so texts of similar length run together and a padded engine
//! spends little on padding.

use std::sync::Arc;
use std::time::Instant;

use crate::batcher::{BatchItem, BatchModel, BatchPolicy, Batcher, Completed, TokenCount, TokenLayout};
use crate::error::InferError;
use crate::metrics::BatchMetrics;

/// What an embedding model is, for metadata and validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingInfo {
    /// The model family, shown as the model's platform (`inferd_bert`).
    pub platform: String,
    /// Length of each embedding.
    pub dimensions: usize,
    /// Longest sequence the model reads, special tokens included; longer inputs are truncated
    /// (or refused when the request asks not to truncate).
    pub max_seq_length: usize,
    /// Whether embeddings have unit length, so that a shortened one (`dimensions`) must be
    /// normalised again.
    pub normalized: bool,
}

/// Turns text into the token ids a model reads. Shared by every request thread.
pub trait TextEncoder: Send + Sync + 'static {
    /// The ids for `text`, special tokens included. A text longer than the model reads is cut
    /// to fit when `truncate` is set, and refused otherwise.
    fn encode_text(&self, text: &str, truncate: bool) -> Result<Vec<u32>, InferError>;

    /// The ids for an already tokenized input (ids of this model's vocabulary, without special
    /// tokens), with the special tokens added as for a text; ids outside the vocabulary are
    /// refused.
    fn encode_ids(&self, ids: &[u32], truncate: bool) -> Result<Vec<u32>, InferError>;
}

/// A model that embeds sequences of token ids. It runs on the batcher's worker thread.
pub trait EmbeddingModel: Send + 'static {
    /// One embedding per sequence, in order. The sequences are non-empty, at most the model's
    /// `max_seq_length` long, and sorted by length.
    fn embed(&mut self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferError>;

    /// How the engine lays out a forward pass's sequences, which decides how the token budget
    /// is counted; padded unless it says otherwise.
    fn token_layout(&self) -> TokenLayout {
        TokenLayout::Padded
    }
}

/// One input of an embedding request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextInput {
    /// A text.
    Text(String),
    /// Token ids of the model's vocabulary, without special tokens.
    Ids(Vec<u32>),
}

/// One request's sequences of token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedInputs {
    sequences: Vec<Vec<u32>>,
}

impl TokenizedInputs {
    /// The sequences.
    pub fn sequences(&self) -> &[Vec<u32>] {
        &self.sequences
    }

    /// Tokens in all the sequences together.
    pub fn total_tokens(&self) -> usize {
        self.sequences.iter().map(Vec::len).sum()
    }
}

impl BatchItem for TokenizedInputs {
    fn size(&self) -> usize {
        self.sequences.len()
    }

    fn tokens(&self) -> TokenCount {
        TokenCount { longest: self.sequences.iter().map(Vec::len).max().unwrap_or(0), total: self.total_tokens() }
    }
}

/// Runs an [`EmbeddingModel`] on batches: sorts the batch's sequences by length, embeds them in
/// sub-batches within the policy's limits, and gives each request its own vectors back.
struct EmbeddingRunner {
    model: Box<dyn EmbeddingModel>,
    max_sequences: usize,
    max_tokens: Option<usize>,
}

impl EmbeddingRunner {
    /// Cuts `lengths` (sorted ascending) into consecutive chunks within the limits; returns the
    /// chunks' end positions.
    fn chunk_ends(&self, lengths: &[usize]) -> Vec<usize> {
        let layout = self.model.token_layout();
        let mut ends = Vec::new();
        let mut start = 0;
        let mut total = 0usize;
        for (position, &length) in lengths.iter().enumerate() {
            let count = position + 1 - start;
            total = total.saturating_add(length);
            // Sorted ascending: this sequence is the chunk's longest, so padded tokens are
            // length × count.
            let cost = match layout {
                TokenLayout::Padded => length.saturating_mul(count),
                TokenLayout::Ragged => total,
            };
            let over_size = count > self.max_sequences;
            let over_tokens = self.max_tokens.is_some_and(|budget| cost > budget);
            if count > 1 && (over_size || over_tokens) {
                ends.push(position);
                start = position;
                total = length;
            }
        }
        if start < lengths.len() {
            ends.push(lengths.len());
        }
        ends
    }
}

impl BatchModel for EmbeddingRunner {
    type Request = TokenizedInputs;
    type Response = Vec<Vec<f32>>;

    fn token_layout(&self) -> TokenLayout {
        self.model.token_layout()
    }

    fn run_batch(&mut self, requests: Vec<TokenizedInputs>) -> Result<Vec<Vec<Vec<f32>>>, InferError> {
        // (request, position in request, ids), shortest first.
        let mut order: Vec<(usize, usize, &[u32])> = requests
            .iter()
            .enumerate()
            .flat_map(|(request, inputs)| {
                inputs.sequences.iter().enumerate().map(move |(position, ids)| (request, position, ids.as_slice()))
            })
            .collect();
        order.sort_by_key(|&(_, _, ids)| ids.len());
        let lengths: Vec<usize> = order.iter().map(|&(_, _, ids)| ids.len()).collect();

        let mut answers: Vec<Vec<Vec<f32>>> =
            requests.iter().map(|inputs| vec![Vec::new(); inputs.sequences.len()]).collect();
        let mut start = 0;
        for end in self.chunk_ends(&lengths) {
            let chunk = &order[start..end];
            let sequences: Vec<&[u32]> = chunk.iter().map(|&(_, _, ids)| ids).collect();
            let vectors = self.model.embed(&sequences)?;
            if vectors.len() != sequences.len() {
                return Err(InferError::Internal(format!(
                    "model returned {} embeddings for {} sequences",
                    vectors.len(),
                    sequences.len()
                )));
            }
            for (&(request, position, _), vector) in chunk.iter().zip(vectors) {
                answers[request][position] = vector;
            }
            start = end;
        }
        Ok(answers)
    }
}

/// An embedding model served behind its own batcher, with its encoder.
pub struct EmbeddingService {
    info: EmbeddingInfo,
    encoder: Arc<dyn TextEncoder>,
    batcher: Batcher<EmbeddingRunner>,
}

impl EmbeddingService {
    /// Starts serving `model`, whose inputs `encoder` prepares, with the given batching policy.
    /// The policy's `max_batch_size` and `max_batch_tokens` also bound each forward pass.
    pub fn start(
        name: &str,
        info: EmbeddingInfo,
        encoder: Arc<dyn TextEncoder>,
        model: Box<dyn EmbeddingModel>,
        policy: BatchPolicy,
        metrics: BatchMetrics,
    ) -> Result<Self, String> {
        let runner =
            EmbeddingRunner { model, max_sequences: policy.max_batch_size, max_tokens: policy.max_batch_tokens };
        let batcher = Batcher::spawn(name, runner, policy, metrics)?;
        Ok(Self { info, encoder, batcher })
    }

    /// What the model is.
    pub fn info(&self) -> &EmbeddingInfo {
        &self.info
    }

    /// The model's encoder, for turning texts into ids before [`embed`](Self::embed).
    pub fn encoder(&self) -> &Arc<dyn TextEncoder> {
        &self.encoder
    }

    /// The batching policy in force.
    pub fn policy(&self) -> &BatchPolicy {
        self.batcher.policy()
    }

    /// Encodes every input, in order; the first that cannot be encoded fails the request,
    /// naming its position. Tokenizing long texts takes a while: call this off the async
    /// runtime's threads.
    pub fn encode(&self, inputs: &[TextInput], truncate: bool) -> Result<Vec<Vec<u32>>, InferError> {
        inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let encoded = match input {
                    TextInput::Text(text) => self.encoder.encode_text(text, truncate),
                    TextInput::Ids(ids) => self.encoder.encode_ids(ids, truncate),
                };
                encoded.map_err(|err| match err {
                    InferError::InvalidInput(message) => InferError::InvalidInput(format!("input {index}: {message}")),
                    other => other,
                })
            })
            .collect()
    }

    /// Whether the model's queue would admit a request now (see [`Batcher::check_admission`]):
    /// called before tokenizing, so that a refusal under overload costs little.
    pub fn check_admission(&self) -> Result<(), InferError> {
        self.batcher.check_admission()
    }

    /// Embeds already encoded sequences through the batcher; one vector per sequence, in order.
    pub async fn embed(
        &self,
        sequences: Vec<Vec<u32>>,
        deadline: Option<Instant>,
    ) -> Result<Completed<Vec<Vec<f32>>>, InferError> {
        if sequences.is_empty() {
            return Err(InferError::InvalidInput("the input is empty: give at least one text".into()));
        }
        if let Some(index) = sequences.iter().position(|ids| ids.is_empty() || ids.len() > self.info.max_seq_length) {
            return Err(InferError::InvalidInput(format!(
                "input {index} has {} tokens; this model reads 1 to {}",
                sequences[index].len(),
                self.info.max_seq_length
            )));
        }
        self.batcher.submit(TokenizedInputs { sequences }, deadline).await
    }

    /// Stops accepting requests; queued ones still run.
    pub fn close(&self) {
        self.batcher.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Embeds a sequence as [its length, its first id, the size of the chunk it ran in].
    struct Shape {
        chunks: Vec<Vec<usize>>,
        layout: TokenLayout,
    }

    impl EmbeddingModel for Shape {
        fn embed(&mut self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferError> {
            self.chunks.push(sequences.iter().map(|ids| ids.len()).collect());
            Ok(sequences.iter().map(|ids| vec![ids.len() as f32, ids[0] as f32, sequences.len() as f32]).collect())
        }

        fn token_layout(&self) -> TokenLayout {
            self.layout
        }
    }

    fn runner(layout: TokenLayout, max_sequences: usize, max_tokens: Option<usize>) -> EmbeddingRunner {
        EmbeddingRunner { model: Box::new(Shape { chunks: vec![], layout }), max_sequences, max_tokens }
    }

    fn inputs(lengths: &[usize], first: u32) -> TokenizedInputs {
        TokenizedInputs { sequences: lengths.iter().enumerate().map(|(i, &n)| vec![first + i as u32; n]).collect() }
    }

    #[test]
    fn sequences_are_grouped_by_length_and_returned_in_order() {
        let mut runner = runner(TokenLayout::Padded, 2, None);
        let answers = runner.run_batch(vec![inputs(&[9, 1], 10), inputs(&[2, 8, 1], 20)]).unwrap();
        // Sorted lengths 1, 1, 2, 8, 9 run as [1, 1], [2, 8], [9].
        assert_eq!(answers[0], vec![vec![9.0, 10.0, 1.0], vec![1.0, 11.0, 2.0]]);
        assert_eq!(answers[1], vec![vec![2.0, 20.0, 2.0], vec![8.0, 21.0, 2.0], vec![1.0, 22.0, 2.0]]);
    }

    #[test]
    fn chunks_respect_the_token_budget() {
        let padded = runner(TokenLayout::Padded, 100, Some(20));
        // Padded: 4 × 5 = 20 fits; a fifth of 6 would make 30.
        assert_eq!(padded.chunk_ends(&[2, 3, 4, 5, 6, 6, 30]), vec![4, 6, 7]);
        // A sequence longer than the budget still runs, alone.
        assert_eq!(padded.chunk_ends(&[30]), vec![1]);
        assert!(padded.chunk_ends(&[]).is_empty());
        // Ragged: 2 + 3 + 4 + 5 + 6 = 20 real tokens fit; the next 6 starts a chunk.
        let ragged = runner(TokenLayout::Ragged, 100, Some(20));
        assert_eq!(ragged.chunk_ends(&[2, 3, 4, 5, 6, 6, 30]), vec![5, 6, 7]);
    }
}
