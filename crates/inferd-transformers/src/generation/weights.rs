//! A llama-family model's weights, from a GGUF file (quantized blocks kept as they are) or a
//! Hugging Face safetensors checkpoint (`f32`), under one naming: GGUF's.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use crate::error::LoadError;
use crate::kernels::{self, PackedWeight};
use crate::quant::{BlockFormat, BlockMatrix, Interleaved, QuantizedRows};

/// A matrix as loaded, before it is prepared for computing.
#[derive(Debug, Clone)]
pub enum RawMatrix {
    /// In a block format the quantized kernels compute with.
    Blocks(BlockMatrix),
    /// Row-major `f32`.
    Dense {
        /// Rows.
        rows: usize,
        /// Columns.
        columns: usize,
        /// `rows × columns` values.
        values: Vec<f32>,
    },
}

impl RawMatrix {
    /// Rows.
    pub fn rows(&self) -> usize {
        match self {
            Self::Blocks(blocks) => blocks.rows(),
            Self::Dense { rows, .. } => *rows,
        }
    }

    /// Columns.
    pub fn columns(&self) -> usize {
        match self {
            Self::Blocks(blocks) => blocks.columns(),
            Self::Dense { columns, .. } => *columns,
        }
    }

    /// Row `row` in `f32`.
    pub fn row(&self, row: usize, out: &mut [f32]) {
        match self {
            Self::Blocks(blocks) => blocks.dequantize_row(row, out),
            Self::Dense { columns, values, .. } => out.copy_from_slice(&values[row * columns..(row + 1) * columns]),
        }
    }

    fn into_dense(self) -> Vec<f32> {
        match self {
            Self::Blocks(blocks) => blocks.dequantize(),
            Self::Dense { values, .. } => values,
        }
    }

    /// The rows of several matrices with the same columns, stacked: in their block format when
    /// they share it, else in `f32`.
    pub fn stack(parts: Vec<Self>) -> Self {
        let blocks: Vec<&BlockMatrix> = parts
            .iter()
            .filter_map(|part| match part {
                Self::Blocks(blocks) => Some(blocks),
                Self::Dense { .. } => None,
            })
            .collect();
        if blocks.len() == parts.len()
            && let Some(stacked) = BlockMatrix::stack(&blocks)
        {
            return Self::Blocks(stacked);
        }
        let columns = parts.first().map_or(0, Self::columns);
        let rows = parts.iter().map(Self::rows).sum();
        let values = parts.into_iter().flat_map(Self::into_dense).collect();
        Self::Dense { rows, columns, values }
    }
}

/// A linear layer's weight, prepared for `x · Wᵀ`.
pub enum Linear {
    /// Quantized blocks interleaved by 8 rows: activations are quantized to 8 bits per row first.
    Interleaved(Interleaved),
    /// `f32`, packed for the AVX2 micro-kernel.
    Dense(PackedWeight),
}

impl Linear {
    /// Prepares a loaded matrix.
    pub fn new(matrix: RawMatrix) -> Self {
        match matrix {
            RawMatrix::Blocks(blocks) => Self::Interleaved(Interleaved::new(&blocks)),
            RawMatrix::Dense { rows, columns, values } => Self::Dense(PackedWeight::new(&values, rows, columns)),
        }
    }

    /// Output width.
    pub fn rows(&self) -> usize {
        match self {
            Self::Interleaved(interleaved) => interleaved.rows(),
            Self::Dense(packed) => packed.n(),
        }
    }

    /// `out[m × rows] = x[m × columns] · Wᵀ`; `scratch` holds the quantized activations.
    pub fn forward(&self, x: &[f32], m: usize, scratch: &mut QuantizedRows, out: &mut [f32]) {
        match self {
            Self::Interleaved(interleaved) => {
                scratch.quantize(x, m, interleaved.columns());
                interleaved.matmul(scratch, out);
            }
            Self::Dense(packed) => {
                out.fill(0.0);
                kernels::linear(x, packed, out, m);
            }
        }
    }
}

/// Where tensors come from, by GGUF name (`blk.3.attn_q.weight`).
pub trait TensorSource {
    /// The file reported in errors.
    fn path(&self) -> &Path;
    /// The tensor, `None` when absent; 1-D tensors come as a one-row matrix.
    fn matrix(&mut self, name: &str) -> Result<Option<RawMatrix>, LoadError>;

    /// A required matrix of this shape.
    fn require(&mut self, name: &str, rows: usize, columns: usize) -> Result<RawMatrix, LoadError> {
        let matrix = self.matrix(name)?.ok_or_else(|| LoadError::invalid(self.path(), format!("no tensor {name}")))?;
        if matrix.rows() != rows || matrix.columns() != columns {
            return Err(LoadError::invalid(
                self.path(),
                format!("tensor {name} is {}×{}, expected {rows}×{columns}", matrix.rows(), matrix.columns()),
            ));
        }
        Ok(matrix)
    }

    /// A required vector of this length, in `f32`.
    fn vector(&mut self, name: &str, length: usize) -> Result<Vec<f32>, LoadError> {
        Ok(self.require(name, 1, length)?.into_dense())
    }

    /// An optional vector (a bias) of this length.
    fn optional_vector(&mut self, name: &str, length: usize) -> Result<Option<Vec<f32>>, LoadError> {
        if self.matrix(name)?.is_none() {
            return Ok(None);
        }
        self.vector(name, length).map(Some)
    }
}

/// Tensors of a GGUF file, read one at a time.
pub struct GgufTensors<'a> {
    path: PathBuf,
    file: File,
    content: &'a gguf_file::Content,
}

impl<'a> GgufTensors<'a> {
    /// Reads from `file`, whose header is `content`.
    pub fn new(path: &Path, file: File, content: &'a gguf_file::Content) -> Self {
        Self { path: path.to_path_buf(), file, content }
    }
}

impl TensorSource for GgufTensors<'_> {
    fn path(&self) -> &Path {
        &self.path
    }

    fn matrix(&mut self, name: &str) -> Result<Option<RawMatrix>, LoadError> {
        let Some(info) = self.content.tensor_infos.get(name) else { return Ok(None) };
        let dims = info.shape.dims();
        let (rows, columns) = match *dims {
            [columns] => (1, columns),
            [rows, columns] => (rows, columns),
            _ => return Err(LoadError::invalid(&self.path, format!("tensor {name} has shape {dims:?}"))),
        };
        let io = |source| LoadError::Io { path: self.path.clone(), source };
        let format = match info.ggml_dtype {
            GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
            GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
            _ => None,
        };
        if let Some(format) = format {
            let size = rows * columns / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
            let mut bytes = vec![0u8; size];
            self.file.seek(SeekFrom::Start(self.content.tensor_data_offset + info.offset)).map_err(io)?;
            self.file.read_exact(&mut bytes).map_err(io)?;
            let blocks = BlockMatrix::new(format, rows, columns, bytes)
                .ok_or_else(|| LoadError::invalid(&self.path, format!("tensor {name}: bad block layout")))?;
            return Ok(Some(RawMatrix::Blocks(blocks)));
        }
        // Any other format (f32, f16, k-quants): dequantized to f32 by candle.
        let candle = |err: candle_core::Error| LoadError::invalid(&self.path, format!("tensor {name}: {err}"));
        let tensor = self.content.tensor(&mut self.file, name, &Device::Cpu).map_err(candle)?;
        let values =
            tensor.dequantize(&Device::Cpu).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).map_err(candle)?;
        Ok(Some(RawMatrix::Dense { rows, columns, values }))
    }
}

/// Tensors of a Hugging Face safetensors checkpoint (one file or shards), in `f32`.
pub struct SafetensorsTensors {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl SafetensorsTensors {
    /// Loads every file of the checkpoint.
    pub fn load(path: &Path, files: &[PathBuf]) -> Result<Self, LoadError> {
        let mut tensors = HashMap::new();
        for file in files {
            let loaded = candle_core::safetensors::load(file, &Device::Cpu)
                .map_err(|err| LoadError::invalid(file, err.to_string()))?;
            tensors.extend(loaded);
        }
        Ok(Self { path: path.to_path_buf(), tensors })
    }

    /// A tensor by its GGUF name (`blk.3.attn_q.weight`), as stored (any dtype, on the CPU).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(&Self::hf_name(name))
    }

    /// The Hugging Face name of a GGUF-named tensor.
    fn hf_name(name: &str) -> String {
        let Some(rest) = name.strip_prefix("blk.") else {
            return match name {
                "token_embd.weight" => "model.embed_tokens.weight".into(),
                "output_norm.weight" => "model.norm.weight".into(),
                "output.weight" => "lm_head.weight".into(),
                other => other.into(),
            };
        };
        let (layer, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let tail = [
            ("attn_norm.", "input_layernorm."),
            ("attn_q.", "self_attn.q_proj."),
            ("attn_k.", "self_attn.k_proj."),
            ("attn_v.", "self_attn.v_proj."),
            ("attn_output.", "self_attn.o_proj."),
            ("ffn_norm.", "post_attention_layernorm."),
            ("ffn_gate.", "mlp.gate_proj."),
            ("ffn_up.", "mlp.up_proj."),
            ("ffn_down.", "mlp.down_proj."),
        ]
        .iter()
        .find_map(|(gguf, hf)| tail.strip_prefix(gguf).map(|suffix| format!("{hf}{suffix}")))
        .unwrap_or_else(|| tail.to_string());
        format!("model.layers.{layer}.{tail}")
    }
}

impl TensorSource for SafetensorsTensors {
    fn path(&self) -> &Path {
        &self.path
    }

    fn matrix(&mut self, name: &str) -> Result<Option<RawMatrix>, LoadError> {
        let hf = Self::hf_name(name);
        let Some(tensor) = self.tensors.get(&hf) else { return Ok(None) };
        let (rows, columns) = match *tensor.dims() {
            [columns] => (1, columns),
            [rows, columns] => (rows, columns),
            ref dims => return Err(LoadError::invalid(&self.path, format!("tensor {hf} has shape {dims:?}"))),
        };
        let values = tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(|err| LoadError::invalid(&self.path, format!("tensor {hf}: {err}")))?;
        Ok(Some(RawMatrix::Dense { rows, columns, values }))
    }
}

/// One decoder layer.
pub struct Layer {
    /// RMS norm before attention.
    pub attention_norm: Vec<f32>,
    /// Query, key and value projections stacked: `[(heads + 2·kv_heads)·head_dim × hidden]`.
    pub qkv: Linear,
    /// Their biases stacked (Qwen2).
    pub qkv_bias: Option<Vec<f32>>,
    /// Attention output projection.
    pub output: Linear,
    /// RMS norm before the feed-forward layer.
    pub ffn_norm: Vec<f32>,
    /// Gate and up projections stacked: `[2·intermediate × hidden]`.
    pub gate_up: Linear,
    /// Down projection.
    pub down: Linear,
}

/// Every weight of a llama-family decoder.
pub struct LlamaWeights {
    /// Token embeddings `[vocab × hidden]`, looked up row by row.
    pub embeddings: RawMatrix,
    /// The decoder layers.
    pub layers: Vec<Layer>,
    /// Final RMS norm.
    pub norm: Vec<f32>,
    /// Output head `[vocab × hidden]` (the embeddings when tied).
    pub head: Linear,
}

impl LlamaWeights {
    /// Reads every weight, checking shapes against `config`. Without an `output.weight`, the
    /// head is the embeddings when `tied` allows it (GGUF files leave it out when tied).
    pub fn load(source: &mut dyn TensorSource, config: &LlamaConfig, tied: bool) -> Result<Self, LoadError> {
        let (h, kv, q) = (config.hidden_size, config.kv_size(), config.heads * config.head_dim);
        let inter = config.intermediate_size;
        let embeddings = source.require("token_embd.weight", config.vocab_size, h)?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let name = |part: &str| format!("blk.{i}.{part}");
            let qkv = RawMatrix::stack(vec![
                source.require(&name("attn_q.weight"), q, h)?,
                source.require(&name("attn_k.weight"), kv, h)?,
                source.require(&name("attn_v.weight"), kv, h)?,
            ]);
            let biases = [
                source.optional_vector(&name("attn_q.bias"), q)?,
                source.optional_vector(&name("attn_k.bias"), kv)?,
                source.optional_vector(&name("attn_v.bias"), kv)?,
            ];
            let qkv_bias = if biases.iter().all(Option::is_none) {
                None
            } else {
                let [bq, bk, bv] = biases;
                let mut stacked = bq.unwrap_or_else(|| vec![0.0; q]);
                stacked.extend(bk.unwrap_or_else(|| vec![0.0; kv]));
                stacked.extend(bv.unwrap_or_else(|| vec![0.0; kv]));
                Some(stacked)
            };
            let gate_up = RawMatrix::stack(vec![
                source.require(&name("ffn_gate.weight"), inter, h)?,
                source.require(&name("ffn_up.weight"), inter, h)?,
            ]);
            layers.push(Layer {
                attention_norm: source.vector(&name("attn_norm.weight"), h)?,
                qkv: Linear::new(qkv),
                qkv_bias,
                output: Linear::new(source.require(&name("attn_output.weight"), h, q)?),
                ffn_norm: source.vector(&name("ffn_norm.weight"), h)?,
                gate_up: Linear::new(gate_up),
                down: Linear::new(source.require(&name("ffn_down.weight"), h, inter)?),
            });
        }
        let head = match source.matrix("output.weight")? {
            Some(head) if head.rows() == config.vocab_size && head.columns() == h => head,
            Some(head) => {
                let reason = format!(
                    "tensor output.weight is {}×{}, expected {}×{h}",
                    head.rows(),
                    head.columns(),
                    config.vocab_size
                );
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
        Ok(Self { embeddings, layers, norm: source.vector("output_norm.weight", h)?, head: Linear::new(head) })
    }
}
