//! Text generation with llama-family decoders (Llama, SmolLM, Qwen2):
//!
//! - [`config`]: the model's shape from GGUF metadata or `config.json`;
//! - [`weights`]: GGUF tensors (Q4_1 and Q8_0 kept quantized, other formats dequantized) and
//!   safetensors checkpoints, under one naming;
//! - [`llama`]: the native CPU engine, one forward pass over a ragged batch of sequences;
//! - [`tensor_llama`]: the same forward pass in candle tensors, for CUDA (and the CPU, where
//!   tests check it against the same references as the native engine);
//! - [`engine`]: either engine behind one `CausalLm`;
//! - [`gguf_header`]: a GGUF header, checked against its file before anything is allocated;
//! - [`gguf_tokenizer`], [`chat_template`], [`codec`]: the text side, self-contained for GGUF
//!   files (tokenizer and template from the file's metadata).
//!
//! [`load_generation`] puts them together into what inferd-core's `GenerationService` serves:
//! on the CPU the native engine by default, on CUDA the tensor engine (the only one there);
//! [`GenerationOptions::engine`] picks the other on the CPU.

mod attention;
pub mod chat_template;
pub mod codec;
pub mod config;
pub mod engine;
pub mod gguf_header;
pub mod gguf_tokenizer;
pub mod kv_cache;
pub mod llama;
mod step;
pub mod tensor_llama;
pub mod weights;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use inferd_core::{Device, Engine, GenerationInfo};
use serde::Deserialize;
use tokenizers::Tokenizer;

pub use chat_template::ChatTemplate;
pub use codec::LlmCodec;
pub use config::{LlamaConfig, RopeStyle};
pub use engine::{LlamaEngine, LlamaEngineCache};
pub use kv_cache::{KvPrecision, LlamaCache};
pub use llama::NativeLlama;
pub use tensor_llama::{TensorCache, TensorLlama};
pub use weights::LlamaWeights;

use crate::error::LoadError;
use crate::source::{ModelSource, read_json, read_text};

/// A generative model's settings as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationOptions {
    /// Threads the native engine computes on; every physical core by default. (The tensor
    /// engine on the CPU uses candle's own thread pool.)
    pub threads: Option<usize>,
    /// Caps the context (prompt and completion) below what the model was trained for, to bound
    /// key/value memory per sequence.
    pub context_length: Option<usize>,
    /// The GGUF file inside a folder or hub repository holding several.
    pub gguf_file: Option<String>,
    /// Which engine computes it: `native` (the CPU only; the default there) or `tensor` (candle
    /// tensors on the model's device; the default, and the only engine, on CUDA).
    pub engine: Option<Engine>,
}

/// A generative model loaded and ready to serve.
pub struct LoadedGeneration {
    /// What it is.
    pub info: GenerationInfo,
    /// Its tokenizer and chat template.
    pub codec: Arc<LlmCodec>,
    /// The engine.
    pub model: LlamaEngine,
    /// How it computes, for metadata (`native (q4_1, avx512)`, `tensor (q4_1, cuda)`).
    pub engine: String,
}

/// Tokens that end a turn in common chat formats; GGUF files mark them only as control tokens.
const END_OF_TURN: &[&str] =
    &["<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|end_of_text|>"];

/// Loads a generative model: a GGUF file (a path ending in `.gguf`, or a folder or hub
/// repository with one), or a Hugging Face folder with `config.json`, safetensors weights and
/// `tokenizer.json`.
pub fn load_generation(
    source: &ModelSource,
    device: &Device,
    options: &GenerationOptions,
) -> Result<LoadedGeneration, LoadError> {
    let target = Target::new(device, options)?;
    if let ModelSource::Folder(path) = source
        && path.extension().is_some_and(|ext| ext == "gguf")
    {
        let tokenizer = path.parent().map(|dir| dir.join("tokenizer.json")).filter(|file| file.is_file());
        return load_gguf(path, tokenizer.as_deref(), &target, options);
    }
    let files = source.open()?;
    if let Some(name) = &options.gguf_file {
        let path = files.require(name)?;
        let tokenizer = files.get("tokenizer.json")?;
        return load_gguf(&path, tokenizer.as_deref(), &target, options);
    }
    if let ModelSource::Folder(root) = source {
        let ggufs: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(|source| LoadError::Io { path: root.clone(), source })?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "gguf"))
            .collect();
        match ggufs.as_slice() {
            [one] => {
                let tokenizer = files.get("tokenizer.json")?;
                return load_gguf(one, tokenizer.as_deref(), &target, options);
            }
            [] => {}
            _ => {
                return Err(LoadError::invalid(root, "the folder holds several GGUF files: name one with gguf_file"));
            }
        }
    }
    load_safetensors(&files, &target, options)
}

/// Where and how a generative model computes.
#[derive(Debug, Clone)]
pub enum Target {
    /// The native engine on the CPU, on this many threads.
    Native {
        /// Threads of the forward pass.
        threads: usize,
    },
    /// The tensor engine on this device.
    Tensor(Device),
}

impl Target {
    /// The engine `options` ask for on `device` (by default the native engine on the CPU and
    /// the tensor engine elsewhere); the native engine on a GPU is refused.
    pub fn new(device: &Device, options: &GenerationOptions) -> Result<Self, LoadError> {
        let on_cpu = device.is_cpu();
        match Engine::or_default(options.engine, device) {
            Engine::Native if !on_cpu => Err(LoadError::Device(
                "the native generation engine runs on the CPU only; use engine = \"tensor\" on a GPU".into(),
            )),
            Engine::Native => {
                Ok(Self::Native { threads: options.threads.unwrap_or_else(inferd_core::cpu::default_threads).max(1) })
            }
            Engine::Tensor => Ok(Self::Tensor(device.clone())),
        }
    }

    /// `native (q4_1, avx512)` (with the CPU kernels' level), `tensor (q4_1, cuda)`.
    fn describe(&self, formats: &str) -> String {
        match self {
            Self::Native { .. } => format!("native ({formats}, {})", inferd_core::cpu_level()),
            Self::Tensor(device) => {
                format!("tensor ({formats}, {})", if device.is_cpu() { "cpu" } else { "cuda" })
            }
        }
    }
}

fn context_length(trained: usize, options: &GenerationOptions) -> usize {
    options.context_length.map_or(trained, |cap| cap.min(trained)).max(2)
}

/// Loads a GGUF file, with its own tokenizer and template unless a `tokenizer.json` is given.
pub fn load_gguf(
    path: &Path,
    tokenizer_json: Option<&Path>,
    target: &Target,
    options: &GenerationOptions,
) -> Result<LoadedGeneration, LoadError> {
    let io = |source| LoadError::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io)?;
    let content = gguf_header::read(&mut file, path)?;
    let mut config = LlamaConfig::from_gguf(&content, path)?;
    config.context_length = context_length(config.context_length, options);

    let vocabulary = gguf_tokenizer::from_gguf(&content, path)?;
    let number = |key: &str| config::metadata_number(&content, key).map(|v| v as u32);
    let token_text =
        |id: Option<u32>| id.and_then(|id| vocabulary.tokens.get(id as usize).cloned()).unwrap_or_default();
    let bos_id = number("tokenizer.ggml.bos_token_id");
    let eos_id = number("tokenizer.ggml.eos_token_id");
    let add_bos = content.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    let template = match config::metadata_string(&content, "tokenizer.chat_template") {
        Some(source) => Some(
            ChatTemplate::new(source, token_text(bos_id), token_text(eos_id))
                .map_err(|reason| LoadError::invalid(path, reason))?,
        ),
        None => None,
    };
    let mut stops: BTreeSet<u32> =
        [eos_id, number("tokenizer.ggml.eot_token_id"), number("tokenizer.ggml.eom_token_id")]
            .into_iter()
            .flatten()
            .collect();
    stops.extend(
        vocabulary.control.iter().filter(|&&id| END_OF_TURN.contains(&vocabulary.tokens[id as usize].as_str())),
    );
    let tokenizer = match tokenizer_json {
        Some(file) => Tokenizer::from_file(file).map_err(|err| LoadError::invalid(file, err.to_string()))?,
        None => vocabulary.tokenizer,
    };
    let codec = LlmCodec::new(tokenizer, template, if add_bos { bos_id } else { None });

    let formats = describe_formats(&content);
    let model = match target {
        Target::Native { threads } => {
            let mut tensors = weights::GgufTensors::new(path, file.try_clone().map_err(io)?, &content);
            let weights = LlamaWeights::load(&mut tensors, &config, true)?;
            LlamaEngine::Native(
                NativeLlama::new(config.clone(), weights, *threads, KvPrecision::F16).map_err(LoadError::Device)?,
            )
        }
        Target::Tensor(device) => {
            let file = file.try_clone().map_err(io)?;
            LlamaEngine::Tensor(TensorLlama::from_gguf(path, file, &content, config.clone(), formats.clone(), device)?)
        }
    };
    finish(&config, model, codec, stops.into_iter().collect(), target.describe(&formats))
}

/// The weight formats of a GGUF file's matrices, most common first (`q4_1, q8_0`).
fn describe_formats(content: &gguf_file::Content) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for info in content.tensor_infos.values().filter(|info| info.shape.dims().len() == 2) {
        *counts.entry(format!("{:?}", info.ggml_dtype).to_lowercase()).or_default() += 1;
    }
    let mut formats: Vec<(String, usize)> = counts.into_iter().collect();
    formats.sort_by_key(|format| std::cmp::Reverse(format.1));
    formats.into_iter().map(|(name, _)| name).collect::<Vec<_>>().join(", ")
}

fn finish(
    config: &LlamaConfig,
    model: LlamaEngine,
    codec: LlmCodec,
    stop_ids: Vec<u32>,
    engine: String,
) -> Result<LoadedGeneration, LoadError> {
    let info = GenerationInfo {
        platform: format!("inferd_{}", config.architecture),
        context_length: config.context_length,
        vocab_size: config.vocab_size,
        stop_ids,
    };
    Ok(LoadedGeneration { info, codec: Arc::new(codec), model, engine })
}

/// The weights of a Hugging Face checkpoint folder: `config.json` and `model.safetensors` (or
/// shards listed in `model.safetensors.index.json`). For tools and tests that feed token ids.
pub fn load_llama_safetensors(files: &crate::source::ModelFiles, threads: usize) -> Result<NativeLlama, LoadError> {
    let (config, weights) = read_safetensors(files, None)?;
    NativeLlama::new(config, weights, threads, KvPrecision::F32).map_err(LoadError::Device)
}

/// The tensor engine on `device` for a Hugging Face checkpoint folder (as
/// [`load_llama_safetensors`] reads it): `f32` on the CPU, `f16` on CUDA.
pub fn load_tensor_llama_safetensors(
    files: &crate::source::ModelFiles,
    device: &Device,
) -> Result<TensorLlama, LoadError> {
    let (config, tied, tensors) = read_checkpoint(files, None)?;
    TensorLlama::from_safetensors(&tensors, config, tied, device)
}

fn read_safetensors(
    files: &crate::source::ModelFiles,
    options: Option<&GenerationOptions>,
) -> Result<(LlamaConfig, LlamaWeights), LoadError> {
    let (config, tied, mut tensors) = read_checkpoint(files, options)?;
    let weights = LlamaWeights::load(&mut tensors, &config, tied)?;
    Ok((config, weights))
}

/// A checkpoint's configuration, whether its head is tied to the embeddings, and its tensors.
fn read_checkpoint(
    files: &crate::source::ModelFiles,
    options: Option<&GenerationOptions>,
) -> Result<(LlamaConfig, bool, weights::SafetensorsTensors), LoadError> {
    let config_path = files.require("config.json")?;
    let (mut config, tied) = LlamaConfig::from_hf(&config_path)?;
    if let Some(options) = options {
        config.context_length = context_length(config.context_length, options);
    }
    let shards = match files.get("model.safetensors.index.json")? {
        Some(index) => {
            #[derive(Deserialize)]
            struct Index {
                weight_map: std::collections::BTreeMap<String, String>,
            }
            let index: Index = read_json(&index)?;
            let names: BTreeSet<String> = index.weight_map.into_values().collect();
            names.iter().map(|name| files.require(name)).collect::<Result<Vec<_>, _>>()?
        }
        None => vec![files.require("model.safetensors")?],
    };
    let tensors = weights::SafetensorsTensors::load(&config_path, &shards)?;
    Ok((config, tied, tensors))
}

fn load_safetensors(
    files: &crate::source::ModelFiles,
    target: &Target,
    options: &GenerationOptions,
) -> Result<LoadedGeneration, LoadError> {
    let (config, tied, mut tensors) = read_checkpoint(files, Some(options))?;
    let (model, format) = match target {
        Target::Native { threads } => {
            let weights = LlamaWeights::load(&mut tensors, &config, tied)?;
            let model =
                NativeLlama::new(config.clone(), weights, *threads, KvPrecision::F32).map_err(LoadError::Device)?;
            (LlamaEngine::Native(model), "f32".to_string())
        }
        Target::Tensor(device) => {
            let model = TensorLlama::from_safetensors(&tensors, config.clone(), tied, device)?;
            let format = model.format().to_string();
            (LlamaEngine::Tensor(model), format)
        }
    };
    drop(tensors);
    let tokenizer_path = files.require("tokenizer.json")?;
    let tokenizer =
        Tokenizer::from_file(&tokenizer_path).map_err(|err| LoadError::invalid(&tokenizer_path, err.to_string()))?;

    #[derive(Deserialize, Default)]
    struct TokenizerConfig {
        chat_template: Option<serde_json::Value>,
        bos_token: Option<serde_json::Value>,
        eos_token: Option<serde_json::Value>,
        #[serde(default)]
        add_bos_token: bool,
    }
    let tokenizer_config: TokenizerConfig = match files.get("tokenizer_config.json")? {
        Some(path) => read_json(&path)?,
        None => TokenizerConfig::default(),
    };
    let text_of = |value: &Option<serde_json::Value>| -> String {
        match value {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(serde_json::Value::Object(map)) => {
                map.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string()
            }
            _ => String::new(),
        }
    };
    let (bos, eos) = (text_of(&tokenizer_config.bos_token), text_of(&tokenizer_config.eos_token));
    let template_source = match (&tokenizer_config.chat_template, files.get("chat_template.jinja")?) {
        (_, Some(file)) => Some(read_text(&file)?),
        (Some(serde_json::Value::String(text)), None) => Some(text.clone()),
        (Some(serde_json::Value::Array(named)), None) => named
            .iter()
            .find(|entry| entry.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|entry| entry.get("template").and_then(|t| t.as_str()))
            .map(str::to_string),
        _ => None,
    };
    let template = match template_source {
        Some(source) => Some(
            ChatTemplate::new(source, bos.clone(), eos.clone())
                .map_err(|reason| LoadError::invalid(&tokenizer_path, reason))?,
        ),
        None => None,
    };

    // Stop tokens: generation_config.json's and config.json's eos_token_id (a number or a
    // list), and the tokenizer's eos token.
    let mut stops = BTreeSet::new();
    for file in ["generation_config.json", "config.json"] {
        if let Some(path) = files.get(file)? {
            let value: serde_json::Value = read_json(&path)?;
            match value.get("eos_token_id") {
                Some(serde_json::Value::Number(id)) => stops.extend(id.as_u64().map(|id| id as u32)),
                Some(serde_json::Value::Array(ids)) => {
                    stops.extend(ids.iter().filter_map(|id| id.as_u64()).map(|id| id as u32))
                }
                _ => {}
            }
        }
    }
    stops.extend(tokenizer.token_to_id(&eos));
    let bos_id = if tokenizer_config.add_bos_token { tokenizer.token_to_id(&bos) } else { None };
    let codec = LlmCodec::new(tokenizer, template, bos_id);
    finish(&config, model, codec, stops.into_iter().collect(), target.describe(&format))
}
