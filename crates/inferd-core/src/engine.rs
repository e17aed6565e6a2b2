//! Which engine computes a model, and in what floating-point precision: settings every model
//! family shares, each family documenting which values it supports.

use serde::Deserialize;

/// The engine that computes a model's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Plain Rust kernels written for the CPU: the lowest latency there. The default on the CPU.
    Native,
    /// candle tensors on the model's device (CPU or CUDA). The default on CUDA.
    Tensor,
}

impl Engine {
    /// The name used in configuration and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Tensor => "tensor",
        }
    }
}

/// Floating-point precision of a tensor engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 16-bit IEEE half precision: for transformer models on GPUs.
    F16,
    /// 32-bit.
    F32,
    /// 64-bit: for classical models whose libraries compute in `f64`.
    F64,
}

impl Precision {
    /// The name used in configuration and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
            Self::F64 => "f64",
        }
    }
}
