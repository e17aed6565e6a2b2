//! The tensor engine: the same model as candle tensors on the model's device (CPU or CUDA).
//!
//! Weights live on the device as `[F × K]`; one batch is one matrix product plus the link
//! function, computed on the device; only the results come back to the host.

use candle_core::{DType, Device, Result, Tensor};
use inferd_core::Rows;

use super::{LinearModel, Link};
use crate::engine::Precision;

pub(super) struct TensorLinear {
    device: Device,
    dtype: DType,
    link: Link,
    /// `[F × K]`.
    weights: Tensor,
    /// `[K]`.
    intercepts: Tensor,
}

impl TensorLinear {
    pub(super) fn new(model: &LinearModel, device: &Device, precision: Precision) -> Result<Self> {
        let dtype = match precision {
            // `EngineOptions::resolve` refuses it first.
            Precision::F16 | Precision::Bf16 => {
                candle_core::bail!("classical models compute in f32 or f64, not {}", precision.name())
            }
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        };
        let k = model.n_margins();
        let weights = Tensor::from_slice(&model.coefficients, (k, model.n_features), &Device::Cpu)?
            .t()?
            .contiguous()?
            .to_dtype(dtype)?
            .to_device(device)?;
        let intercepts = Tensor::from_slice(&model.intercepts, k, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
        Ok(Self { device: device.clone(), dtype, link: model.link, weights, intercepts })
    }

    /// Margins `[N × K]` and probabilities `[N × C]` (empty for regression), row-major, in f64.
    pub(super) fn evaluate(&self, rows: &Rows) -> Result<(Vec<f64>, Vec<f64>)> {
        let shape = (rows.n_rows(), rows.n_features());
        // Convert on the host so that f32 models never move f64 data to the device.
        let input = match self.dtype {
            DType::F32 => {
                let values: Vec<f32> = rows.values().iter().map(|&v| v as f32).collect();
                Tensor::from_vec(values, shape, &self.device)?
            }
            _ => Tensor::from_slice(rows.values(), shape, &self.device)?,
        };
        let margins = input.matmul(&self.weights)?.broadcast_add(&self.intercepts)?;
        let probabilities = match self.link {
            Link::Identity => None,
            Link::Logistic => {
                let p = margins.neg()?.exp()?.affine(1.0, 1.0)?.recip()?;
                Some(Tensor::cat(&[&p.affine(-1.0, 1.0)?, &p], 1)?)
            }
            Link::Softmax => {
                let shifted = margins.broadcast_sub(&margins.max_keepdim(1)?)?;
                let exps = shifted.exp()?;
                Some(exps.broadcast_div(&exps.sum_keepdim(1)?)?)
            }
        };
        let to_host = |t: &Tensor| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
        let probabilities = probabilities.as_ref().map(to_host).transpose()?.unwrap_or_default();
        Ok((to_host(&margins)?, probabilities))
    }
}
