//! Text to token ids with a Hugging Face `tokenizer.json`, as the model's own library does it.
//!
//! Padding is switched off (the batcher groups sequences itself) and truncation is set to the
//! model's `max_seq_length`, so the ids are exactly those sentence-transformers feeds the
//! model. Token arrays from clients get the same special tokens a text would: they are found
//! once, at load, by encoding a probe text with and without them.

use std::path::Path;

use inferd_core::{InferError, TextEncoder};
use tokenizers::{PaddingParams, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::LoadError;

/// A text that tokenizes to one content token in WordPiece, BPE and SentencePiece vocabularies.
const PROBE: &str = "a";

/// A model's tokenizer, bounded by the longest sequence the model reads.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
    /// Special tokens before and after the content of one sequence.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    vocab_size: u32,
    lowercase: bool,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, cutting sequences to `max_length` tokens, special ones included;
    /// `lowercase` lowercases texts first (sentence-transformers' `do_lower_case`).
    pub fn load(path: &Path, max_length: usize, lowercase: bool) -> Result<Self, LoadError> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|err| LoadError::invalid(path, err.to_string()))?;
        tokenizer.with_padding(None::<PaddingParams>);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|err| LoadError::invalid(path, err.to_string()))?;
        let vocab_size = u32::try_from(tokenizer.get_vocab_size(true))
            .map_err(|_| LoadError::invalid(path, "the vocabulary is too large"))?;

        let encode = |special: bool| {
            tokenizer
                .encode(PROBE, special)
                .map(|encoding| encoding.get_ids().to_vec())
                .map_err(|err| LoadError::invalid(path, format!("cannot encode a probe text: {err}")))
        };
        let (with, without) = (encode(true)?, encode(false)?);
        let start = (0..=with.len().saturating_sub(without.len()))
            .find(|&start| with[start..].starts_with(&without))
            .filter(|_| !without.is_empty())
            .ok_or_else(|| LoadError::invalid(path, "cannot find where special tokens go around the content"))?;
        let prefix = with[..start].to_vec();
        let suffix = with[start + without.len()..].to_vec();
        if prefix.len() + suffix.len() >= max_length {
            return Err(LoadError::invalid(path, format!("max_seq_length {max_length} leaves no room for content")));
        }
        Ok(Self { tokenizer, max_length, prefix, suffix, vocab_size, lowercase })
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size as usize
    }

    /// The underlying tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn too_long(&self, tokens: usize) -> InferError {
        InferError::InvalidInput(format!(
            "the input has {tokens} tokens, more than this model's {} and truncation is off",
            self.max_length
        ))
    }
}

impl TextEncoder for TextTokenizer {
    fn encode_text(&self, text: &str, truncate: bool) -> Result<Vec<u32>, InferError> {
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|err| InferError::InvalidInput(format!("the text cannot be tokenized: {err}")))?;
        let overflow = encoding.get_overflowing();
        if !truncate && !overflow.is_empty() {
            // Each overflowing part carries its own special tokens.
            let specials = self.prefix.len() + self.suffix.len();
            let dropped: usize = overflow.iter().map(|part| part.len().saturating_sub(specials)).sum();
            return Err(self.too_long(encoding.len() + dropped));
        }
        Ok(encoding.get_ids().to_vec())
    }

    fn encode_ids(&self, ids: &[u32], truncate: bool) -> Result<Vec<u32>, InferError> {
        if let Some(bad) = ids.iter().find(|&&id| id >= self.vocab_size) {
            return Err(InferError::InvalidInput(format!(
                "token id {bad} is outside this model's vocabulary of {} tokens",
                self.vocab_size
            )));
        }
        let room = self.max_length - self.prefix.len() - self.suffix.len();
        if ids.len() > room && !truncate {
            return Err(self.too_long(ids.len() + self.prefix.len() + self.suffix.len()));
        }
        let content = &ids[..ids.len().min(room)];
        Ok([self.prefix.as_slice(), content, self.suffix.as_slice()].concat())
    }
}
