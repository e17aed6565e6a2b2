//! Sentence embeddings: a sentence-transformers model folder (or hub repository) loaded into a
//! tokenizer and an encoder that inferd-core's [`EmbeddingService`](inferd_core::EmbeddingService)
//! serves.
//!
//! Supported: BERT encoders (`model_type: bert`) with mean, CLS or max pooling and optional
//! normalisation, weights in `model.safetensors`. Two engines compute them: the native CPU
//! engine (the default on the CPU) and candle's tensors (the default on CUDA, where it runs in
//! `f16` unless configured otherwise).

mod pipeline;

use std::sync::Arc;

use candle_core::DType;
use inferd_core::{Device, EmbeddingInfo, EmbeddingModel, Engine, Precision, PrecisionFamily, TextEncoder};

pub use pipeline::{Pipeline, Pooling};

use crate::bert::{BertConfig, NativeBert, TensorBert, Weights};
use crate::error::LoadError;
use crate::source::ModelSource;
use crate::tokenizer::TextTokenizer;

/// A fixed text embedded at start: to warm the model up, and on a GPU to compare against the
/// CPU before the model may serve.
pub const PROBE_TEXT: &str = "inferd checks this sentence on every device before serving: naïve café, 東京, 42.";

/// Least cosine similarity between the GPU's and the CPU's embedding of the probe text; `f16`
/// models land near 0.99999, a broken kernel far below.
const PROBE_MIN_COSINE: f64 = 0.999;

/// An embedding model's engine settings as configured; unset fields take the device's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddingOptions {
    /// `native` (CPU only, the default there) or `tensor` (the default on CUDA).
    pub engine: Option<Engine>,
    /// `f32` (the default on the CPU) or `bf16` (the native engine's dense layers, on CPUs with
    /// AVX-512 BF16; elsewhere it falls back to `f32` with a warning), or `f16` (the default on
    /// CUDA).
    pub precision: Option<Precision>,
    /// Threads the native engine uses (default: every core).
    pub threads: Option<usize>,
}

/// A loaded embedding model: its encoder, its engine, and what it is.
pub struct LoadedEmbedding {
    /// What the model is.
    pub info: EmbeddingInfo,
    /// Its tokenizer.
    pub encoder: Arc<TextTokenizer>,
    /// Its engine, warmed up.
    pub model: Box<dyn EmbeddingModel>,
    /// Which engine.
    pub engine: Engine,
    /// In which precision.
    pub precision: Precision,
}

/// Loads a sentence-transformers model from `source` onto `device`. On a GPU, the model must
/// embed [`PROBE_TEXT`] as the CPU does (and without NaN) or it is refused.
pub fn load_embedding(
    source: &ModelSource,
    device: &Device,
    options: EmbeddingOptions,
) -> Result<LoadedEmbedding, LoadError> {
    let files = source.open()?;
    let pipeline = Pipeline::load(&files)?;
    let config_path = files.require("config.json")?;
    let config = BertConfig::load(&config_path)?;
    let max_seq_length =
        pipeline.max_seq_length.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
    let tokenizer_path = files.require("tokenizer.json")?;
    let encoder = Arc::new(TextTokenizer::load(&tokenizer_path, max_seq_length, pipeline.lowercase)?);
    // An id the tokenizer can give but the model has no embedding for would fail whole batches.
    if encoder.vocab_size() > config.vocab_size {
        return Err(LoadError::invalid(
            &tokenizer_path,
            format!(
                "the tokenizer has {} tokens, more than the model's vocab_size of {}",
                encoder.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    let weights_path = match files.get("model.safetensors")? {
        Some(path) => path,
        None => {
            return Err(LoadError::MissingFile {
                source_name: files.name().to_string(),
                file: "model.safetensors (weights in other formats, such as pytorch_model.bin, are not read)".into(),
            });
        }
    };
    let weights = Weights::load(&weights_path)?;

    let on_gpu = !device.is_cpu();
    let engine = Engine::or_default(options.engine, device);
    let mut precision = Precision::or_default(options.precision, PrecisionFamily::Embedding, device);
    let dtype = match precision {
        Precision::F32 => DType::F32,
        Precision::F16 if on_gpu => DType::F16,
        Precision::F16 => {
            return Err(LoadError::Device("f16 embeddings run on CUDA only; use f32 (or bf16) on the CPU".into()));
        }
        Precision::Bf16 if on_gpu || engine != Engine::Native => {
            return Err(LoadError::Device("bf16 embeddings run on the native engine on the CPU only".into()));
        }
        Precision::Bf16 => {
            if !crate::kernels::bf16_available() {
                tracing::warn!(
                    cpu_kernels = %inferd_core::cpu_level(),
                    "bf16 asked for, but this CPU (or INFERD_CPU) has no AVX-512 BF16: the encoder runs in f32"
                );
                precision = Precision::F32;
            }
            DType::F32
        }
        Precision::F64 => {
            return Err(LoadError::Device("embedding models run in f32, bf16 or f16, not f64".into()));
        }
    };
    let bf16 = precision == Precision::Bf16;
    let build = |engine: Engine, device: &Device, dtype: DType| -> Result<Box<dyn EmbeddingModel>, LoadError> {
        Ok(match engine {
            Engine::Native if !device.is_cpu() => {
                return Err(LoadError::Device(
                    "the native engine runs on the CPU only; use engine = \"tensor\" on a GPU".into(),
                ));
            }
            Engine::Native => {
                let pipeline = (pipeline.pooling, pipeline.normalize);
                Box::new(NativeBert::new(&weights, &config, pipeline, bf16, options.threads)?)
            }
            Engine::Tensor => Box::new(TensorBert::new(
                &weights_path,
                &weights,
                &config,
                device,
                dtype,
                pipeline.pooling,
                pipeline.normalize,
            )?),
        })
    };
    let mut model = build(engine, device, dtype)?;

    let probe = encoder.encode_text(PROBE_TEXT, true).map_err(|err| LoadError::Device(err.to_string()))?;
    let embedding = embed_one(model.as_mut(), &probe)?;
    if on_gpu {
        let mut reference = build(Engine::Native, &Device::Cpu, DType::F32)?;
        let expected = embed_one(reference.as_mut(), &probe)?;
        let cosine = cosine(&embedding, &expected);
        let non_finite = embedding.iter().any(|v| !v.is_finite());
        // A NaN cosine fails this comparison too.
        let agrees = cosine >= PROBE_MIN_COSINE;
        if non_finite || !agrees {
            let what = if non_finite { "holds NaN or infinity, unlike" } else { "disagrees with" };
            return Err(LoadError::Device(format!(
                "refusing to serve: on the GPU the probe text's embedding {what} the CPU's (cosine {cosine:.6}, at \
                 least {PROBE_MIN_COSINE} needed)"
            )));
        }
        tracing::info!(cosine, "GPU embeddings agree with the CPU's");
    }
    let info = EmbeddingInfo {
        platform: "inferd_bert".into(),
        dimensions: embedding.len(),
        max_seq_length,
        normalized: pipeline.normalize,
    };
    Ok(LoadedEmbedding { info, encoder, model, engine, precision })
}

fn embed_one(model: &mut dyn EmbeddingModel, ids: &[u32]) -> Result<Vec<f32>, LoadError> {
    model
        .embed(&[ids])
        .map_err(|err| LoadError::Device(format!("the probe text cannot be embedded: {err}")))?
        .pop()
        .ok_or_else(|| LoadError::Device("the probe text gave no embedding".into()))
}

/// Cosine similarity of two vectors, in `f64` to keep rounding out of the comparison.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    dot / (aa.sqrt() * bb.sqrt())
}
