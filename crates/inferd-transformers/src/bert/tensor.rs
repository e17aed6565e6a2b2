//! The tensor engine: candle-transformers' BERT encoder on the model's device (CPU or CUDA), in
//! `f32` or `f16`, with the embeddings, pooling and normalisation as tensor operations.
//!
//! Sequences of a sub-batch are padded to the longest; the attention mask keeps padding out of
//! attention and pooling. The mask is built here, not by candle's `BertModel`, whose mask value
//! (`f32::MIN`) becomes −∞ in `f16` and turns every score into NaN (0 × −∞); ours is −65504, the
//! most negative finite `f16`, which still rounds every masked weight to zero.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_nn::{Embedding, LayerNorm, Module};
use candle_transformers::models::bert::BertEncoder;
use inferd_core::{EmbeddingModel, InferError};

use super::config::BertConfig;
use super::weights::Weights;
use crate::embedding::Pooling;
use crate::error::LoadError;

/// A BERT encoder with its pooling, as candle tensors.
pub struct TensorBert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    encoder: BertEncoder,
    device: Device,
    dtype: DType,
    pooling: Pooling,
    normalize: bool,
}

impl TensorBert {
    /// Builds the encoder from `weights` (read from `path`) on `device` in `dtype`.
    pub fn new(
        path: &Path,
        weights: &Weights,
        config: &BertConfig,
        device: &Device,
        dtype: DType,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Self, LoadError> {
        let vb = VarBuilder::from_tensors(weights.tensors().clone(), dtype, device);
        let vb = match weights.prefix().strip_suffix('.') {
            Some(prefix) => vb.pp(prefix),
            None => vb,
        };
        let invalid = |err: candle_core::Error| LoadError::invalid(path, err.to_string());
        let h = config.hidden_size;
        let embeddings = vb.pp("embeddings");
        let word = candle_nn::embedding(config.vocab_size, h, embeddings.pp("word_embeddings")).map_err(invalid)?;
        let position = candle_nn::embedding(config.max_position_embeddings, h, embeddings.pp("position_embeddings"))
            .map_err(invalid)?;
        let token_type =
            candle_nn::embedding(config.type_vocab_size, h, embeddings.pp("token_type_embeddings")).map_err(invalid)?;
        let norm = candle_nn::layer_norm(h, config.layer_norm_eps, embeddings.pp("LayerNorm")).map_err(invalid)?;
        let encoder = BertEncoder::load(vb.pp("encoder"), &config.to_candle()).map_err(invalid)?;
        Ok(Self { word, position, token_type, norm, encoder, device: device.clone(), dtype, pooling, normalize })
    }

    fn forward(&self, sequences: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let longest = sequences.iter().map(|ids| ids.len()).max().unwrap_or(0);
        let batch = sequences.len();
        let mut ids = vec![0u32; batch * longest];
        let mut mask = vec![0u32; batch * longest];
        for (row, sequence) in sequences.iter().enumerate() {
            ids[row * longest..row * longest + sequence.len()].copy_from_slice(sequence);
            mask[row * longest..row * longest + sequence.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (batch, longest), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch, longest), &self.device)?;
        let positions = Tensor::arange(0u32, longest as u32, &self.device)?.unsqueeze(0)?;
        let types = ids.zeros_like()?;
        let embedded = self
            .word
            .forward(&ids)?
            .broadcast_add(&self.position.forward(&positions)?)?
            .broadcast_add(&self.token_type.forward(&types)?)?;
        let embedded = self.norm.forward(&embedded)?;
        // Additive mask [batch, 1, 1, longest]: 0 for tokens, −65504 for padding.
        let additive = ((mask.to_dtype(self.dtype)? - 1.0)? * 65504.0)?.unsqueeze(1)?.unsqueeze(1)?;
        let states = self.encoder.forward(&embedded, &additive)?;
        // Pool in f32 whatever the model's precision.
        let states = states.to_dtype(DType::F32)?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let pooled = match self.pooling {
            Pooling::Cls => states.i((.., 0))?,
            Pooling::Mean => {
                let sums = states.broadcast_mul(&mask)?.sum(1)?;
                sums.broadcast_div(&mask.sum(1)?)?
            }
            Pooling::Max => {
                // Padding must never win: push it far below any real state.
                let shift = ((mask - 1.0)? * 1e30)?;
                states.broadcast_add(&shift)?.max(1)?
            }
        };
        let pooled = if self.normalize {
            let norms = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
            pooled.broadcast_div(&norms)?
        } else {
            pooled
        };
        pooled.to_device(&Device::Cpu)?.to_vec2::<f32>()
    }

    /// The precision the encoder runs in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

impl EmbeddingModel for TensorBert {
    fn embed(&mut self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferError> {
        self.forward(sequences).map_err(|err| InferError::Internal(format!("BERT forward pass failed: {err}")))
    }
}
