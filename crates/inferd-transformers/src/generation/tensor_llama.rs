//! The tensor engine for llama-family decoders (Llama, SmolLM, Qwen2): the forward pass in
//! candle tensors, on any candle device (CUDA in production, the CPU for tests).
//!
//! It computes what the native engine ([`super::llama`]) computes, step for step: the new
//! tokens of every sequence in a step are laid end to end as one `[tokens × hidden]` matrix,
//! so each projection is one matrix product per step whatever the batch; rotary embeddings
//! rotate each row by its own position; attention alone runs per sequence, against the
//! sequence's own key/value cache (kept on the device). GGUF matrices stay in their quantized
//! format (candle's quantized kernels compute with them, dequantizing what they must);
//! safetensors checkpoints compute in `f32` on the CPU and `f16` on CUDA (`bf16` checkpoints
//! are converted: older GPUs have no `bf16` kernels), with norms, biases, the residual stream
//! and the cache in `f32` everywhere.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::ops::{rms_norm, silu, softmax_last_dim};
use candle_nn::rotary_emb::{rope, rope_i};
use inferd_core::{CausalLm, InferError, SequenceStep};

use super::config::{LlamaConfig, RopeStyle};
use super::step::{Span, lay_out};
use super::weights::{SafetensorsTensors, TensorSource};
use crate::error::LoadError;

/// One sequence's keys and values on the device, per layer, `[kv_heads × tokens × head_dim]`.
#[derive(Debug, Clone)]
pub struct TensorCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
}

impl TensorCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One decoder layer's weights on the device.
struct Layer {
    attention_norm: Tensor,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    /// Query, key and value biases (Qwen2).
    biases: Option<[Tensor; 3]>,
    output: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// A llama-family decoder computed with candle tensors on one device.
pub struct TensorLlama {
    config: LlamaConfig,
    device: Device,
    /// Token embeddings `[vocab × hidden]`, rows looked up (and dequantized) per step.
    embeddings: QMatMul,
    layers: Vec<Layer>,
    norm: Tensor,
    /// Output head `[vocab × hidden]` (the embeddings when tied).
    head: QMatMul,
    /// `cos` and `sin` of every position's rotation, `[context_length × head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    /// What the matrices are stored as (`q4_1`, `f32`, `f16`), for metadata.
    format: String,
}

/// Tensors by GGUF name (`blk.3.attn_q.weight`), placed on the engine's device.
enum Source<'a> {
    /// A GGUF file: matrices as their quantized tensors.
    Gguf { path: PathBuf, file: File, content: &'a gguf_file::Content },
    /// A safetensors checkpoint: matrices converted to `dtype`.
    Safetensors { tensors: &'a SafetensorsTensors, dtype: DType },
}

impl Source<'_> {
    fn path(&self) -> &Path {
        match self {
            Self::Gguf { path, .. } => path,
            Self::Safetensors { tensors, .. } => tensors.path(),
        }
    }

    /// A matrix as a `QMatMul` (quantized, or dense in the source's precision), with its shape
    /// as `(rows, columns)`; `None` when absent.
    fn matrix(&mut self, name: &str, device: &Device) -> Result<Option<(QMatMul, Vec<usize>)>, LoadError> {
        let path = self.path().to_path_buf();
        let candle = |err: candle_core::Error| LoadError::invalid(&path, format!("tensor {name}: {err}"));
        match self {
            Self::Gguf { file, content, .. } => {
                if !content.tensor_infos.contains_key(name) {
                    return Ok(None);
                }
                let tensor = content.tensor(file, name, device).map_err(candle)?;
                let dims = tensor.shape().dims().to_vec();
                Ok(Some((QMatMul::from_qtensor(tensor).map_err(candle)?, dims)))
            }
            Self::Safetensors { tensors, dtype } => {
                let Some(tensor) = tensors.get(name) else { return Ok(None) };
                let dims = tensor.dims().to_vec();
                let tensor = tensor.to_dtype(*dtype).and_then(|t| t.to_device(device)).map_err(candle)?;
                let matrix = if *dtype == DType::F16 { QMatMul::TensorF16(tensor) } else { QMatMul::Tensor(tensor) };
                Ok(Some((matrix, dims)))
            }
        }
    }

    /// A required matrix of this shape.
    fn require(&mut self, name: &str, rows: usize, columns: usize, device: &Device) -> Result<QMatMul, LoadError> {
        let (matrix, dims) =
            self.matrix(name, device)?.ok_or_else(|| LoadError::invalid(self.path(), format!("no tensor {name}")))?;
        if dims != [rows, columns] {
            return Err(LoadError::invalid(
                self.path(),
                format!("tensor {name} is {dims:?}, expected [{rows}, {columns}]"),
            ));
        }
        Ok(matrix)
    }

    /// A vector of this length in `f32`, `None` when absent.
    fn optional_vector(&mut self, name: &str, length: usize, device: &Device) -> Result<Option<Tensor>, LoadError> {
        let path = self.path().to_path_buf();
        let candle = |err: candle_core::Error| LoadError::invalid(&path, format!("tensor {name}: {err}"));
        let tensor = match self {
            Self::Gguf { file, content, .. } => {
                if !content.tensor_infos.contains_key(name) {
                    return Ok(None);
                }
                content.tensor(file, name, device).and_then(|t| t.dequantize(device)).map_err(candle)?
            }
            Self::Safetensors { tensors, .. } => match tensors.get(name) {
                Some(tensor) => tensor.to_dtype(DType::F32).and_then(|t| t.to_device(device)).map_err(candle)?,
                None => return Ok(None),
            },
        };
        if tensor.dims() != [length] {
            return Err(LoadError::invalid(
                &path,
                format!("tensor {name} is {:?}, expected [{length}]", tensor.dims()),
            ));
        }
        Ok(Some(tensor))
    }

    /// A required vector of this length in `f32`.
    fn vector(&mut self, name: &str, length: usize, device: &Device) -> Result<Tensor, LoadError> {
        self.optional_vector(name, length, device)?
            .ok_or_else(|| LoadError::invalid(self.path(), format!("no tensor {name}")))
    }
}

impl TensorLlama {
    /// Loads the weights of a GGUF file (`content` is its header) onto `device`.
    pub fn from_gguf(
        path: &Path,
        file: File,
        content: &gguf_file::Content,
        config: LlamaConfig,
        format: String,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let mut source = Source::Gguf { path: path.to_path_buf(), file, content };
        // GGUF files leave the head out when it is tied to the embeddings.
        Self::load(&mut source, config, true, format, device)
    }

    /// Loads a safetensors checkpoint onto `device`: `f32` on the CPU, `f16` on a GPU. Without an
    /// `lm_head.weight`, the head is the embeddings when `tied`.
    pub fn from_safetensors(
        tensors: &SafetensorsTensors,
        config: LlamaConfig,
        tied: bool,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let dtype = if device.is_cpu() { DType::F32 } else { DType::F16 };
        let format = format!("{dtype:?}").to_lowercase();
        Self::load(&mut Source::Safetensors { tensors, dtype }, config, tied, format, device)
    }

    fn load(
        source: &mut Source<'_>,
        config: LlamaConfig,
        tied: bool,
        format: String,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let (h, kv, q) = (config.hidden_size, config.kv_size(), config.heads * config.head_dim);
        let inter = config.intermediate_size;
        let embeddings = source.require("token_embd.weight", config.vocab_size, h, device)?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let name = |part: &str| format!("blk.{i}.{part}");
            let biases = [
                source.optional_vector(&name("attn_q.bias"), q, device)?,
                source.optional_vector(&name("attn_k.bias"), kv, device)?,
                source.optional_vector(&name("attn_v.bias"), kv, device)?,
            ];
            let biases = if biases.iter().all(Option::is_none) {
                None
            } else {
                let zeros = |length: usize| Tensor::zeros(length, DType::F32, device);
                let [bq, bk, bv] = biases;
                let device_error = |err: candle_core::Error| LoadError::Device(err.to_string());
                Some([
                    bq.map_or_else(|| zeros(q), Ok).map_err(device_error)?,
                    bk.map_or_else(|| zeros(kv), Ok).map_err(device_error)?,
                    bv.map_or_else(|| zeros(kv), Ok).map_err(device_error)?,
                ])
            };
            layers.push(Layer {
                attention_norm: source.vector(&name("attn_norm.weight"), h, device)?,
                q: source.require(&name("attn_q.weight"), q, h, device)?,
                k: source.require(&name("attn_k.weight"), kv, h, device)?,
                v: source.require(&name("attn_v.weight"), kv, h, device)?,
                biases,
                output: source.require(&name("attn_output.weight"), h, q, device)?,
                ffn_norm: source.vector(&name("ffn_norm.weight"), h, device)?,
                gate: source.require(&name("ffn_gate.weight"), inter, h, device)?,
                up: source.require(&name("ffn_up.weight"), inter, h, device)?,
                down: source.require(&name("ffn_down.weight"), h, inter, device)?,
            });
        }
        let head = match source.matrix("output.weight", device)? {
            Some((head, dims)) if dims == [config.vocab_size, h] => head,
            Some((_, dims)) => {
                let reason = format!("tensor output.weight is {dims:?}, expected [{}, {h}]", config.vocab_size);
                return Err(LoadError::invalid(source.path(), reason));
            }
            None if tied => embeddings.clone(),
            None => {
                return Err(LoadError::invalid(
                    source.path(),
                    "no output head (lm_head.weight), and the configuration does not tie it to the embeddings",
                ));
            }
        };
        let norm = source.vector("output_norm.weight", h, device)?;
        let table = config.context_length.saturating_mul(config.head_dim).saturating_mul(std::mem::size_of::<f32>());
        if table > MAX_ROTATION_TABLE {
            let reason = format!(
                "the rotation tables of {} positions × {} head width need {} MiB; cap generation.context_length",
                config.context_length,
                config.head_dim,
                table >> 20
            );
            return Err(LoadError::invalid(source.path(), reason));
        }
        let (cos, sin) = rotations(&config, device).map_err(|err| LoadError::Device(err.to_string()))?;
        Ok(Self { config, device: device.clone(), embeddings, layers, norm, head, cos, sin, format })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device it computes on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What its matrices are stored as (`q4_1`, `f32`, `f16`).
    pub fn format(&self) -> &str {
        &self.format
    }

    fn run(
        &self,
        batch: &mut [SequenceStep<'_, TensorCache>],
        spans: &[Span],
        total: usize,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let config = &self.config;
        let device = &self.device;
        let (hd, heads, kv_heads) = (config.head_dim, config.heads, config.kv_heads);
        let eps = config.rms_norm_eps;

        let ids: Vec<u32> = batch.iter().flat_map(|step| step.tokens.iter().copied()).collect();
        let positions: Vec<u32> =
            spans.iter().flat_map(|span| (span.past..span.past + span.len).map(|p| p as u32)).collect();
        let ids = Tensor::from_vec(ids, total, device)?;
        let positions = Tensor::from_vec(positions, total, device)?;
        // One rotation per row: rope's batch axis is the row, each with a sequence of one.
        let cos = self.cos.index_select(&positions, 0)?.reshape((total, 1, hd / 2))?;
        let sin = self.sin.index_select(&positions, 0)?.reshape((total, 1, hd / 2))?;
        let rotate = |x: Tensor, heads: usize| -> candle_core::Result<Tensor> {
            let x = x.reshape((total, heads, 1, hd))?;
            let rotated = match config.rope {
                RopeStyle::Interleaved => rope_i(&x, &cos, &sin)?,
                RopeStyle::Halves => rope(&x, &cos, &sin)?,
            };
            rotated.reshape((total, heads, hd))
        };
        // Causal masks of the multi-token steps, `[len × (past + len)]`.
        let masks: Vec<Option<Tensor>> = spans
            .iter()
            .map(|span| {
                if span.len == 1 {
                    return Ok(None);
                }
                let width = span.past + span.len;
                let mask: Vec<f32> = (0..span.len)
                    .flat_map(|row| {
                        (0..width).map(move |column| if column <= span.past + row { 0.0 } else { f32::NEG_INFINITY })
                    })
                    .collect();
                Tensor::from_vec(mask, (span.len, width), device).map(Some)
            })
            .collect::<candle_core::Result<_>>()?;
        let group = heads / kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();

        let mut x = self.embeddings.embedding(&ids)?.to_dtype(DType::F32)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let normed = rms_norm(&x, &layer.attention_norm, eps)?;
            let (mut q, mut k, mut v) =
                (layer.q.forward(&normed)?, layer.k.forward(&normed)?, layer.v.forward(&normed)?);
            if let Some([bq, bk, bv]) = &layer.biases {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let q = rotate(q, heads)?;
            let k = rotate(k, kv_heads)?;
            let v = v.reshape((total, kv_heads, hd))?;

            let mut attended = Vec::with_capacity(spans.len());
            for ((step, span), mask) in batch.iter_mut().zip(spans).zip(&masks) {
                let cache = &mut *step.cache;
                // [kv_heads × len × head_dim], appended to the cache.
                let new_keys = k.narrow(0, span.start, span.len)?.transpose(0, 1)?.contiguous()?;
                let new_values = v.narrow(0, span.start, span.len)?.transpose(0, 1)?.contiguous()?;
                let (keys, values) = match (cache.keys.get(index), cache.values.get(index)) {
                    (Some(keys), Some(values)) => {
                        (Tensor::cat(&[keys, &new_keys], 1)?, Tensor::cat(&[values, &new_values], 1)?)
                    }
                    _ => (new_keys, new_values),
                };
                if cache.keys.len() <= index {
                    cache.keys.push(keys.clone());
                    cache.values.push(values.clone());
                } else {
                    cache.keys[index] = keys.clone();
                    cache.values[index] = values.clone();
                }
                let width = span.past + span.len;
                // Query head `kv · group + g` reads key/value head `kv`: the group's rows
                // stacked, `[kv_heads × group·len × head_dim]`.
                let queries = q.narrow(0, span.start, span.len)?.transpose(0, 1)?.contiguous()?.reshape((
                    kv_heads,
                    group * span.len,
                    hd,
                ))?;
                let mut scores = (queries.matmul(&keys.t()?)? * scale)?;
                if let Some(mask) = mask {
                    scores = scores.reshape((kv_heads, group, span.len, width))?.broadcast_add(mask)?.reshape((
                        kv_heads,
                        group * span.len,
                        width,
                    ))?;
                }
                let weights = softmax_last_dim(&scores)?;
                let output = weights.matmul(&values)?; // [kv_heads × group·len × head_dim]
                attended.push(output.reshape((heads, span.len, hd))?.transpose(0, 1)?.reshape((span.len, heads * hd))?);
            }
            let attended = Tensor::cat(&attended, 0)?;
            x = (x + layer.output.forward(&attended)?)?;

            let normed = rms_norm(&x, &layer.ffn_norm, eps)?;
            let activated = (silu(&layer.gate.forward(&normed)?)? * layer.up.forward(&normed)?)?;
            x = (x + layer.down.forward(&activated)?)?;
        }
        for (step, span) in batch.iter_mut().zip(spans) {
            step.cache.len = span.past + span.len;
        }

        // Only each sequence's last row is needed for its next token.
        let last: Vec<u32> = spans.iter().map(|span| (span.start + span.len - 1) as u32).collect();
        let last = x.index_select(&Tensor::from_vec(last, spans.len(), device)?, 0)?;
        let logits = self.head.forward(&rms_norm(&last, &self.norm, eps)?)?;
        logits.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2()
    }
}

/// The most memory the `cos` and `sin` tables of every position may take together.
const MAX_ROTATION_TABLE: usize = 4 << 30;

/// `cos` and `sin` of every position's rotation, `[context_length × head_dim / 2]` each,
/// computed in `f64` as the native engine computes them.
fn rotations(config: &LlamaConfig, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let half = config.head_dim / 2;
    let frequencies: Vec<f64> =
        (0..half).map(|i| f64::from(config.rope_theta).powf(-2.0 * i as f64 / config.head_dim as f64)).collect();
    let mut cos = Vec::with_capacity(config.context_length * half);
    let mut sin = Vec::with_capacity(config.context_length * half);
    for position in 0..config.context_length {
        for frequency in &frequencies {
            let angle = position as f64 * frequency;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (config.context_length, half), device)?,
        Tensor::from_vec(sin, (config.context_length, half), device)?,
    ))
}

impl CausalLm for TensorLlama {
    type Cache = TensorCache;

    fn new_cache(&self) -> TensorCache {
        TensorCache { keys: Vec::new(), values: Vec::new(), len: 0 }
    }

    fn forward(&mut self, batch: &mut [SequenceStep<'_, TensorCache>]) -> Result<Vec<Vec<f32>>, InferError> {
        let (spans, total) = lay_out(&self.config, batch, TensorCache::len)?;
        self.run(batch, &spans, total).map_err(|err| InferError::Internal(format!("forward pass: {err}")))
    }
}
