//! A Hugging Face tokenizer built from a GGUF file's own metadata (`tokenizer.ggml.*`), so that
//! a GGUF file is a whole model. Two kinds, as `tokenizer.ggml.model` names them:
//! - `gpt2`: byte-level BPE from the file's merges, with the pre-tokenizer that
//!   `tokenizer.ggml.pre` names;
//! - `llama`: SentencePiece BPE (Llama 2, Mistral, TinyLlama, Phi-3), which has scores and no
//!   merges. SentencePiece repeatedly joins the adjacent pair whose union is the vocabulary
//!   piece with the highest score; a BPE model whose merges are every split of every piece,
//!   ranked by the piece's score, makes the same choices. Spaces become `▁`, a `▁` is put
//!   before the text (`tokenizer.ggml.add_space_prefix`, and after each special token, as
//!   llama.cpp does), and characters outside the vocabulary fall back to byte tokens
//!   (`<0x41>`).
//!
//! Control tokens become special tokens, user-defined ones added tokens.

use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::config::{metadata_number, metadata_string};
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

/// SentencePiece's word boundary: a space, in the vocabulary's pieces.
const SPACE_MARK: &str = "\u{2581}";

/// Builds the tokenizer of a GGUF file.
pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<GgufVocabulary, LoadError> {
    let model = metadata_string(content, "tokenizer.ggml.model").unwrap_or_default();
    let tokens = strings(content, "tokenizer.ggml.tokens", path)?;
    let types: Vec<i64> = match content.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        Some(values) => values.iter().map(|v| v.to_i32().map(i64::from).unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let mut tokenizer = match model.as_str() {
        "gpt2" => byte_level_bpe(content, &tokens, path)?,
        "llama" => sentencepiece_bpe(content, &tokens, path)?,
        other => {
            return Err(LoadError::unsupported(
                path,
                format!(
                    "tokenizer.ggml.model '{other}': inferd builds byte-level BPE ('gpt2') and SentencePiece BPE \
                     ('llama') tokenizers from GGUF metadata; put the model's tokenizer.json beside the GGUF file"
                ),
            ));
        }
    };

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

/// SentencePiece BPE from the vocabulary's pieces and scores (see the module's documentation).
fn sentencepiece_bpe(content: &gguf_file::Content, tokens: &[String], path: &Path) -> Result<Tokenizer, LoadError> {
    let scores: Vec<f32> = content
        .metadata
        .get("tokenizer.ggml.scores")
        .and_then(|value| value.to_vec().ok())
        .ok_or_else(|| LoadError::invalid(path, "no tokenizer.ggml.scores"))?
        .iter()
        .map(|value| value.to_f32().map_err(|_| LoadError::invalid(path, "tokenizer.ggml.scores holds a non-number")))
        .collect::<Result<_, _>>()?;
    if scores.len() != tokens.len() {
        return Err(LoadError::invalid(path, "tokenizer.ggml.scores and tokenizer.ggml.tokens differ in length"));
    }
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(id, token)| (token.clone(), id as u32)).collect();
    // Every split of every piece into two pieces, the best-scored piece's first; between splits
    // of pieces that score alike, the piece's own id, then the left part's, decides.
    let mut ranked: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(_)) = (vocab.get(left), vocab.get(right)) {
                ranked.push((scores[id], id as u32, l, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges = ranked.into_iter().map(|(_, _, _, left, right)| (left.to_string(), right.to_string())).collect();
    let unk = metadata_number(content, "tokenizer.ggml.unknown_token_id")
        .and_then(|id| tokens.get(id as usize))
        .cloned()
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|err| LoadError::invalid(path, format!("cannot build the SentencePiece model: {err}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let spaces = Replace::new(" ", SPACE_MARK).map_err(|err| LoadError::invalid(path, err.to_string()))?;
    let add_space_prefix =
        content.metadata.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok()).unwrap_or(true);
    let mut decoders = vec![
        Replace::new(SPACE_MARK, " ").map_err(|err| LoadError::invalid(path, err.to_string()))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
            Prepend::new(SPACE_MARK.into()).into(),
            spaces.into(),
        ])));
        decoders.push(Strip::new(' ', 1, 0).into());
    } else {
        tokenizer.with_normalizer(Some(spaces));
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// Byte-level BPE from the vocabulary's merges, with the pre-tokenizer `tokenizer.ggml.pre` names.
fn byte_level_bpe(content: &gguf_file::Content, tokens: &[String], path: &Path) -> Result<Tokenizer, LoadError> {
    let merges = strings(content, "tokenizer.ggml.merges", path)?;
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
    let pre = metadata_string(content, "tokenizer.ggml.pre").unwrap_or_else(|| "default".into());
    let llama3 = matches!(pre.as_str(), "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        // Llama 3 takes a word that is itself a token whole, whatever its merges would make.
        .ignore_merges(llama3)
        .build()
        .map_err(|err| LoadError::invalid(path, format!("cannot build the BPE model: {err}")))?;
    let mut tokenizer = Tokenizer::new(bpe);

    // Pieces matching `pattern` split from the text around them.
    let isolate = |pattern: &str| -> Result<PreTokenizerWrapper, LoadError> {
        Ok(Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|err| LoadError::invalid(path, format!("pre-tokenizer pattern: {err}")))?
            .into())
    };
    // `pattern`'s split instead of GPT-2's.
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, LoadError> {
        Ok(Sequence::new(vec![isolate(pattern)?, ByteLevel::new(false, true, false).into()]).into())
    };
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        "default" | "gpt2" | "gpt-2" | "mpt" => ByteLevel::new(false, true, true).into(),
        // Runs of punctuation first, then GPT-2's split, then groups of three digits.
        "falcon" => Sequence::new(vec![
            isolate(r"[\p{P}\$\+<=>\^~\|`]+")?,
            ByteLevel::new(false, true, true).into(),
            isolate("[0-9][0-9][0-9]")?,
        ])
        .into(),
        // Line breaks, letter runs, punctuation runs, CJK runs and single digits, each isolated.
        "deepseek-coder" => Sequence::new(vec![
            isolate(r"[\r\n]")?,
            isolate(r"\s?\p{L}+")?,
            isolate(r"\s?\p{P}+")?,
            isolate("[一-龥ࠀ-一가-퟿]+")?,
            Digits::new(true).into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
        // Qwen2's split without its NFC normalization: accents stay separate tokens.
        "qwen35" => split(QWEN2_SPLIT)?,
        // GPT-2's split after every digit on its own.
        "smollm" | "starcoder" | "refact" | "command-r" => {
            Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
        }
        _ if llama3 => split(LLAMA3_SPLIT)?,
        "qwen2" => {
            tokenizer.with_normalizer(Some(NFC));
            split(QWEN2_SPLIT)?
        }
        other => {
            return Err(LoadError::unsupported(
                path,
                format!(
                    "tokenizer.ggml.pre '{other}' is not one inferd knows (default, gpt2, mpt, smollm, starcoder, \
                     refact, command-r, llama3, qwen2, qwen35, falcon, deepseek-coder); \
                     put the model's tokenizer.json beside the GGUF file"
                ),
            ));
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}
