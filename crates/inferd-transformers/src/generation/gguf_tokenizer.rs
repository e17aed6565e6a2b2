//! A Hugging Face tokenizer built from a GGUF file's own metadata (`tokenizer.ggml.*`), so that
//! a GGUF file is a whole model: byte-level BPE (`tokenizer.ggml.model = gpt2`) with the
//! pre-tokenizer that `tokenizer.ggml.pre` names, and control tokens as special tokens.

use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::config::metadata_string;
use crate::error::LoadError;

/// GGUF token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Llama 3's split: contractions, letters, numbers of up to three digits, punctuation runs,
/// line breaks, spaces.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: as Llama 3's, with single digits.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What the GGUF file says about its tokenizer, beyond the tokenizer itself.
pub struct GgufVocabulary {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Each token's text.
    pub tokens: Vec<String>,
    /// Ids of control tokens.
    pub control: Vec<u32>,
}

fn strings(content: &gguf_file::Content, key: &str, path: &Path) -> Result<Vec<String>, LoadError> {
    let values = content
        .metadata
        .get(key)
        .and_then(|value| value.to_vec().ok())
        .ok_or_else(|| LoadError::invalid(path, format!("no {key}")))?;
    values
        .iter()
        .map(|value| {
            value.to_string().cloned().map_err(|_| LoadError::invalid(path, format!("{key} holds a non-string")))
        })
        .collect()
}

/// Builds the tokenizer of a GGUF file.
pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<GgufVocabulary, LoadError> {
    let model = metadata_string(content, "tokenizer.ggml.model").unwrap_or_default();
    if model != "gpt2" {
        return Err(LoadError::unsupported(
            path,
            format!(
                "tokenizer.ggml.model '{model}': inferd builds byte-level BPE ('gpt2') tokenizers from GGUF metadata; \
                 put the model's tokenizer.json beside the GGUF file"
            ),
        ));
    }
    let tokens = strings(content, "tokenizer.ggml.tokens", path)?;
    let merges = strings(content, "tokenizer.ggml.merges", path)?;
    let types: Vec<i64> = match content.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        Some(values) => values.iter().map(|v| v.to_i32().map(i64::from).unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(id, token)| (token.clone(), id as u32)).collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| LoadError::invalid(path, format!("merge '{merge}' is not two tokens")))
        })
        .collect::<Result<_, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|err| LoadError::invalid(path, format!("cannot build the BPE model: {err}")))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let pre = metadata_string(content, "tokenizer.ggml.pre").unwrap_or_else(|| "default".into());
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, LoadError> {
        let split = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|err| LoadError::invalid(path, format!("pre-tokenizer pattern: {err}")))?;
        Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        "default" | "gpt2" | "gpt-2" => ByteLevel::new(false, true, true).into(),
        // GPT-2's split after every digit on its own.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => split(LLAMA3_SPLIT)?,
        "qwen2" => {
            tokenizer.with_normalizer(Some(NFC));
            split(QWEN2_SPLIT)?
        }
        other => {
            return Err(LoadError::unsupported(
                path,
                format!(
                    "tokenizer.ggml.pre '{other}' is not one inferd knows (default, gpt2, smollm, llama3, qwen2); \
                     put the model's tokenizer.json beside the GGUF file"
                ),
            ));
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    let mut control = Vec::new();
    let mut special = Vec::new();
    let mut added = Vec::new();
    for (id, (token, kind)) in tokens.iter().zip(&types).enumerate() {
        match *kind {
            CONTROL => {
                control.push(id as u32);
                special.push(AddedToken::from(token.clone(), true));
            }
            USER_DEFINED => added.push(AddedToken::from(token.clone(), false)),
            _ => {}
        }
    }
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&added);
    Ok(GgufVocabulary { tokenizer, tokens, control })
}
