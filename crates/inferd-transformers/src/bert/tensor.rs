//! The tensor engine: candle-transformers' `BertModel` on the model's device (CPU or CUDA), in
//! `f32` or `f16`, with pooling and normalisation as tensor operations.
//!
//! Sequences of a sub-batch are padded to the longest; the attention mask keeps padding out of
//! attention and pooling.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::BertModel;
use inferd_core::{EmbeddingModel, InferError};

use super::config::BertConfig;
use super::weights::Weights;
use crate::embedding::Pooling;
use crate::error::LoadError;

/// A BERT encoder with its pooling, as candle tensors.
pub struct TensorBert {
    model: BertModel,
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
        let model =
            BertModel::load(vb, &config.to_candle()).map_err(|err| LoadError::invalid(path, err.to_string()))?;
        Ok(Self { model, device: device.clone(), dtype, pooling, normalize })
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
        let types = ids.zeros_like()?;
        let states = self.model.forward(&ids, &types, Some(&mask))?;
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
