//! The configuration file: a `[server]` table and one `[[models]]` entry per model.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//!
//! [[models]]
//! name = "iris-logistic"
//! kind = "linear"
//! path = "iris-logistic/model.json"   # relative to this file
//! device = "auto"
//!
//! [models.batching]
//! max_batch_size = 256
//! max_queue_delay = "1ms"
//! ```

use std::path::{Path, PathBuf};

use inferd_classical::EngineOptions;
use inferd_core::{BatchPolicy, DeviceSpec, Engine, Precision, SchedulerPolicy};
use inferd_server::ServerSettings;
use inferd_transformers::{EmbeddingOptions, GenerationOptions, ModelSource};
use serde::Deserialize;

/// The bundled default configuration, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "models/default.toml";

/// A whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP server's settings.
    #[serde(default)]
    pub server: ServerSettings,
    /// The models to serve.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

/// The model families inferd loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Linear or logistic regression in inferd's JSON format (see `inferd_classical::linear`).
    Linear,
    /// An XGBoost JSON model (`booster.save_model("model.json")`).
    Xgboost,
    /// A LightGBM text model (`booster.save_model("model.txt")`).
    Lightgbm,
    /// A sentence-transformers embedding model: a folder in the Hugging Face layout, or a hub
    /// repository `hf:org/name[@revision]`.
    Embedding,
    /// A llama-family text generation model: a GGUF file, or a folder or hub repository with
    /// a GGUF file or a Hugging Face checkpoint (`config.json`, safetensors, `tokenizer.json`).
    Llm,
}

/// One model to serve.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients address the model by.
    pub name: String,
    /// The model family.
    pub kind: ModelKind,
    /// The model file or folder; relative paths are relative to the configuration file. For
    /// embedding models, `hf:org/name[@revision]` names a Hugging Face hub repository instead.
    pub path: PathBuf,
    /// Where it runs: `auto` (the default), `cpu`, `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Which engine computes it (`native` or `tensor`); default per device.
    #[serde(default)]
    pub engine: Option<Engine>,
    /// The precision (`f64`, `f32`; `f16` for embedding models on CUDA; `bf16` for embedding
    /// models on the native engine, on CPUs with AVX-512 BF16); default per device and model
    /// family.
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Most threads the native engines use for one batch; default every core the process may
    /// use (within a container's CPU quota; one per physical core for transformers).
    #[serde(default)]
    pub threads: Option<usize>,
    /// How its batches form.
    #[serde(default)]
    pub batching: BatchPolicy,
    /// For `llm` models: the continuous-batching scheduler's bounds.
    #[serde(default)]
    pub generation: SchedulerPolicy,
    /// For `llm` models: cap the context (prompt and completion) below the model's own.
    #[serde(default)]
    pub context_length: Option<usize>,
    /// For `llm` models: the GGUF file in a folder or hub repository holding several.
    #[serde(default)]
    pub gguf_file: Option<String>,
}

impl ModelConfig {
    /// A model with default device, engine and batching.
    pub fn new(name: impl Into<String>, kind: ModelKind, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            kind,
            path: path.into(),
            device: DeviceSpec::Auto,
            engine: None,
            precision: None,
            threads: None,
            batching: BatchPolicy::default(),
            generation: SchedulerPolicy::default(),
            context_length: None,
            gguf_file: None,
        }
    }

    /// The classical engine options.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions { engine: self.engine, precision: self.precision, threads: self.threads }
    }

    /// The generation options.
    pub fn generation_options(&self) -> GenerationOptions {
        GenerationOptions {
            threads: self.threads,
            context_length: self.context_length,
            gguf_file: self.gguf_file.clone(),
            engine: self.engine,
        }
    }

    /// The embedding engine options.
    pub fn embedding_options(&self) -> EmbeddingOptions {
        EmbeddingOptions { engine: self.engine, precision: self.precision, threads: self.threads }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read configuration {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("invalid configuration {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        message: String,
    },
    /// The configuration is well-formed but cannot be served.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a configuration file; model paths, and the key, JWKS and TLS files the server
    /// settings name, become relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|err| ConfigError::Parse { path: path.to_path_buf(), message: err.to_string() })?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.server.rebase_paths(base);
        for model in &mut config.models {
            let hub = model.path.to_str().is_some_and(ModelSource::is_hub);
            if model.path.is_relative() && !hub {
                model.path = base.join(&model.path);
            }
        }
        Ok(config)
    }

    /// Checks what parsing cannot: server settings in range, at least one model, sensible
    /// names, valid batching policies. (Duplicate names are refused by the model registry.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate().map_err(ConfigError::Invalid)?;
        if self.models.is_empty() {
            return Err(ConfigError::Invalid("no models are configured".into()));
        }
        for model in &self.models {
            if model.name.is_empty() || model.name.contains('/') {
                return Err(ConfigError::Invalid(format!(
                    "model name '{}' must be non-empty and without '/'",
                    model.name
                )));
            }
            model
                .batching
                .validate()
                .and_then(|()| model.generation.validate())
                .map_err(|reason| ConfigError::Invalid(format!("model '{}': {reason}", model.name)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("inferd.toml");
        std::fs::write(
            &file,
            r#"
            [server]
            listen = "0.0.0.0:9000"
            request_timeout = "5s"

            [server.auth]
            keys_file = "keys.toml"

            [[models]]
            name = "iris"
            kind = "linear"
            path = "iris/model.json"
            device = "cpu"
            engine = "tensor"
            precision = "f32"
            batching = { max_batch_size = 8, max_queue_delay = "500us" }
            "#,
        )
        .unwrap();
        let config = Config::load(&file).unwrap();
        config.validate().unwrap();
        assert_eq!(config.server.listen.port(), 9000);
        assert_eq!(config.server.auth.keys_file, Some(dir.path().join("keys.toml")));
        assert_eq!(config.server.request_timeout, std::time::Duration::from_secs(5));
        let model = &config.models[0];
        assert_eq!(model.path, dir.path().join("iris/model.json"));
        assert_eq!(model.device, DeviceSpec::Cpu);
        assert_eq!(model.engine, Some(Engine::Tensor));
        assert_eq!(model.batching.max_batch_size, 8);
        assert_eq!(model.batching.max_queue_delay, std::time::Duration::from_micros(500));
        assert_eq!(model.batching.queue_capacity, BatchPolicy::default().queue_capacity);
    }

    #[test]
    fn mistakes_are_reported_with_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[[models]]\nname = \"a\"\nkind = \"linear\"\npath = \"m.json\"\ndevise = \"cpu\"\n")
            .unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(err.contains("devise"), "{err}");
        std::fs::write(&file, "[[models]]\nname = \"a\"\nkind = \"linear\"\npath = \"m.json\"\ndevice = \"tpu\"\n")
            .unwrap();
        assert!(Config::load(&file).unwrap_err().to_string().contains("unknown device 'tpu'"));
        assert!(Config::default().validate().unwrap_err().to_string().contains("no models"));
        let mut endless = Config { models: vec![ModelConfig::new("a", ModelKind::Linear, "x")], ..Config::default() };
        endless.server.request_timeout = std::time::Duration::from_secs(1 << 40);
        assert!(endless.validate().unwrap_err().to_string().contains("request_timeout"));
        let mut open = Config { models: vec![ModelConfig::new("a", ModelKind::Linear, "x")], ..Config::default() };
        open.server.listen = "0.0.0.0:8080".parse().unwrap();
        assert!(open.validate().unwrap_err().to_string().contains("without authentication"));
        open.server.allow_unauthenticated = true;
        open.validate().unwrap();
    }
}
