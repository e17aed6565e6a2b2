//! A BERT model's `config.json`, checked for what inferd runs.

use std::path::Path;

use serde::Deserialize;

use crate::error::LoadError;

/// The activation between a layer's two feed-forward matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x Φ(x)` (Hugging Face's `gelu`).
    Gelu,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `max(x, 0)`.
    Relu,
}

/// The parts of a BERT `config.json` the forward pass needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// The feed-forward activation.
    pub activation: Activation,
    /// Positions with an embedding: the longest sequence the model can read.
    pub max_position_embeddings: usize,
    /// Token types (segments) with an embedding.
    pub type_vocab_size: usize,
    /// Layer normalisation's epsilon.
    pub layer_norm_eps: f64,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}

fn default_type_vocab() -> usize {
    2
}

fn default_eps() -> f64 {
    1e-12
}

/// Model types whose checkpoints are BERT's (same tensors, same forward pass).
const BERT_TYPES: [&str; 1] = ["bert"];

impl BertConfig {
    /// Reads and checks `config.json`: a BERT encoder with absolute positions and a supported
    /// activation, or a clear error saying what is not supported.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let raw: RawConfig = crate::source::read_json(path)?;
        let model_type = raw.model_type.clone().unwrap_or_default();
        if !BERT_TYPES.contains(&model_type.as_str()) {
            let architectures = if raw.architectures.is_empty() {
                String::new()
            } else {
                format!(" ({})", raw.architectures.join(", "))
            };
            return Err(LoadError::unsupported(
                path,
                format!(
                    "model_type '{model_type}'{architectures} is not supported for embeddings; supported: {}",
                    BERT_TYPES.join(", ")
                ),
            ));
        }
        if let Some(kind) = raw.position_embedding_type.as_deref().filter(|kind| *kind != "absolute") {
            return Err(LoadError::unsupported(
                path,
                format!("position_embedding_type '{kind}' is not supported; supported: absolute"),
            ));
        }
        let activation = match raw.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(LoadError::unsupported(
                    path,
                    format!("hidden_act '{other}' is not supported; supported: gelu, gelu_new, relu"),
                ));
            }
        };
        let config = Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            activation,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            layer_norm_eps: raw.layer_norm_eps,
        };
        let sizes = [
            config.vocab_size,
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config.max_position_embeddings,
            config.type_vocab_size,
        ];
        if sizes.contains(&0) || !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            return Err(LoadError::invalid(
                path,
                "sizes must be positive, and hidden_size a multiple of num_attention_heads",
            ));
        }
        Ok(config)
    }

    /// Width of one attention head.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The same configuration in candle-transformers' form.
    pub fn to_candle(&self) -> candle_transformers::models::bert::Config {
        use candle_transformers::models::bert::{Config, HiddenAct};
        Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: match self.activation {
                Activation::Gelu => HiddenAct::Gelu,
                Activation::GeluTanh => HiddenAct::GeluApproximate,
                Activation::Relu => HiddenAct::Relu,
            },
            max_position_embeddings: self.max_position_embeddings,
            type_vocab_size: self.type_vocab_size,
            layer_norm_eps: self.layer_norm_eps,
            model_type: Some("bert".into()),
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<BertConfig, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        BertConfig::load(&path)
    }

    const MINI: &str = r#"{"model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
        "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
        "hidden_act": "gelu", "max_position_embeddings": 512}"#;

    #[test]
    fn reads_bert() {
        let config = load(MINI).unwrap();
        assert_eq!(config.head_size(), 32);
        assert_eq!(config.activation, Activation::Gelu);
        assert_eq!(config.type_vocab_size, 2);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let roberta = MINI.replace("\"bert\"", "\"xlm-roberta\"");
        let err = load(&roberta).unwrap_err().to_string();
        assert!(err.contains("model_type 'xlm-roberta'") && err.contains("supported: bert"), "{err}");
        let act = MINI.replace("\"gelu\"", "\"swish\"");
        assert!(load(&act).unwrap_err().to_string().contains("hidden_act 'swish'"));
        let rel = MINI.replace("\"bert\",", "\"bert\", \"position_embedding_type\": \"relative_key\",");
        assert!(load(&rel).unwrap_err().to_string().contains("relative_key"));
        assert!(load("{").is_err());
    }
}
