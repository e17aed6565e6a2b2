//! A llama-family model's shape, read from GGUF metadata or a Hugging Face `config.json`.

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::Deserialize;

use crate::error::LoadError;

/// The widest hidden, feed-forward, head count or head width a model may declare.
pub const MAX_WIDTH: usize = 1 << 20;
/// The most decoder layers a model may declare.
pub const MAX_LAYERS: usize = 1 << 12;
/// The largest vocabulary a model may declare.
pub const MAX_VOCABULARY: usize = 1 << 24;
/// The longest context a model may declare (Llama 4 Scout's 10M tokens fit).
pub const MAX_CONTEXT: usize = 1 << 24;

/// How rotary position embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i + 1)`: llama.cpp's layout for llama GGUF files, whose query and
    /// key weights the converter permuted.
    Interleaved,
    /// Halves `(i, i + d/2)`: Hugging Face's `rotate_half`, and GGUF files of Qwen2.
    Halves,
}

/// The shape and constants of a llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// The architecture's name (`llama`, `qwen2`).
    pub architecture: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer than `heads` for grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence (prompt and completion) the model was trained for.
    pub context_length: usize,
    /// RMS norm epsilon.
    pub rms_norm_eps: f32,
    /// Rotary base frequency.
    pub rope_theta: f32,
    /// Rotary pairing.
    pub rope: RopeStyle,
}

impl LlamaConfig {
    /// Checks the shape is one the engine computes.
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let invalid = |reason: String| Err(LoadError::invalid(path, reason));
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return invalid(format!("{} query heads cannot share {} key/value heads", self.heads, self.kv_heads));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return invalid(format!("head width {} must be even", self.head_dim));
        }
        if self.hidden_size == 0 || self.layers == 0 || self.vocab_size == 0 || self.context_length == 0 {
            return invalid("the model has an empty dimension".into());
        }
        // Far beyond any published model; what is past these is a corrupted or hostile file,
        // refused before anything is allocated from it.
        let limits = [
            ("hidden size", self.hidden_size, MAX_WIDTH),
            ("feed-forward width", self.intermediate_size, MAX_WIDTH),
            ("query heads", self.heads, MAX_WIDTH),
            ("key/value heads", self.kv_heads, MAX_WIDTH),
            ("head width", self.head_dim, MAX_WIDTH),
            ("layer count", self.layers, MAX_LAYERS),
            ("vocabulary size", self.vocab_size, MAX_VOCABULARY),
            ("context length", self.context_length, MAX_CONTEXT),
        ];
        if let Some((what, value, limit)) = limits.into_iter().find(|(_, value, limit)| value > limit) {
            return invalid(format!("{what} {value} is past inferd's limit of {limit}"));
        }
        Ok(())
    }

    /// Width of the keys (and values) of one token.
    pub fn kv_size(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Reads `{arch}.*` metadata of a GGUF file.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self, LoadError> {
        let invalid = |reason: String| LoadError::invalid(path, reason);
        let architecture = metadata_string(content, "general.architecture")
            .ok_or_else(|| invalid("no general.architecture".into()))?;
        let rope = match architecture.as_str() {
            "llama" => RopeStyle::Interleaved,
            "qwen2" => RopeStyle::Halves,
            other => {
                return Err(LoadError::unsupported(
                    path,
                    format!("GGUF architecture '{other}' (inferd runs llama and qwen2)"),
                ));
            }
        };
        if let Some(kind) =
            metadata_string(content, &format!("{architecture}.rope.scaling.type")).filter(|k| k != "none")
        {
            return Err(LoadError::unsupported(path, format!("rope scaling '{kind}' is not supported")));
        }
        if content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(LoadError::unsupported(path, "rotary frequency factors (rope_freqs.weight) are not supported"));
        }
        let number = |key: &str| -> Result<usize, LoadError> {
            metadata_number(content, &format!("{architecture}.{key}"))
                .map(|value| value as usize)
                .ok_or_else(|| invalid(format!("no {architecture}.{key}")))
        };
        let hidden_size = number("embedding_length")?;
        let heads = number("attention.head_count")?;
        let kv_heads = number("attention.head_count_kv").unwrap_or(heads);
        let vocab_size = match number("vocab_size") {
            Ok(size) => size,
            Err(_) => content
                .metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|tokens| tokens.to_vec().ok())
                .map(Vec::len)
                .ok_or_else(|| invalid("no vocabulary size".into()))?,
        };
        let head_dim = metadata_number(content, &format!("{architecture}.attention.key_length"))
            .map(|value| value as usize)
            .unwrap_or(hidden_size.checked_div(heads).unwrap_or(0));
        let config = Self {
            hidden_size,
            intermediate_size: number("feed_forward_length")?,
            layers: number("block_count")?,
            heads,
            kv_heads,
            head_dim,
            vocab_size,
            context_length: number("context_length")?,
            rms_norm_eps: metadata_number(content, &format!("{architecture}.attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f32,
            rope_theta: metadata_number(content, &format!("{architecture}.rope.freq_base")).unwrap_or(10_000.0) as f32,
            rope,
            architecture,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json` of a `LlamaForCausalLM` or `Qwen2ForCausalLM`.
    pub fn from_hf(path: &Path) -> Result<(Self, bool), LoadError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
        let raw: HfConfig = serde_json::from_str(&text).map_err(|err| LoadError::invalid(path, err.to_string()))?;
        let architecture = match raw.model_type.as_str() {
            "llama" | "qwen2" => raw.model_type.clone(),
            other => {
                return Err(LoadError::unsupported(
                    path,
                    format!("model_type '{other}' (inferd runs llama and qwen2)"),
                ));
            }
        };
        let heads = raw.num_attention_heads;
        let config = Self {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            layers: raw.num_hidden_layers,
            heads,
            kv_heads: raw.num_key_value_heads.unwrap_or(heads),
            head_dim: raw.head_dim.unwrap_or(raw.hidden_size.checked_div(heads).unwrap_or(0)),
            vocab_size: raw.vocab_size,
            context_length: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps as f32,
            rope_theta: raw.rope_theta.or(raw.rope_parameters.as_ref().and_then(|p| p.rope_theta)).unwrap_or(10_000.0)
                as f32,
            rope: RopeStyle::Halves,
        };
        if let Some(kind) = raw.rope_parameters.and_then(|p| p.rope_type).filter(|kind| kind != "default") {
            return Err(LoadError::unsupported(path, format!("rope_type '{kind}' is not supported")));
        }
        if let Some(scaling) = raw.rope_scaling.filter(|value| !value.is_null()) {
            return Err(LoadError::unsupported(path, format!("rope_scaling {scaling} is not supported")));
        }
        config.validate(path)?;
        Ok((config, raw.tie_word_embeddings))
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    /// transformers 5 writes `rope_theta` here.
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

/// A string metadata value.
pub(crate) fn metadata_string(content: &gguf_file::Content, key: &str) -> Option<String> {
    content.metadata.get(key).and_then(|value| value.to_string().ok()).cloned()
}

/// A numeric metadata value of any width.
pub(crate) fn metadata_number(content: &gguf_file::Content, key: &str) -> Option<f64> {
    use gguf_file::Value;
    Some(match content.metadata.get(key)? {
        Value::U8(v) => f64::from(*v),
        Value::I8(v) => f64::from(*v),
        Value::U16(v) => f64::from(*v),
        Value::I16(v) => f64::from(*v),
        Value::U32(v) => f64::from(*v),
        Value::I32(v) => f64::from(*v),
        Value::U64(v) => *v as f64,
        Value::I64(v) => *v as f64,
        Value::F32(v) => f64::from(*v),
        Value::F64(v) => *v,
        Value::Bool(v) => f64::from(u8::from(*v)),
        Value::String(_) | Value::Array(_) => return None,
    })
}
