//! Which engine computes a model, and in what floating-point precision: settings every model
//! family shares, each family documenting which values it supports. The defaults for each device
//! live here, and only here.

use serde::Deserialize;

use crate::device::Device;

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
    /// `requested`, or the default on `device`: the native engine on the CPU, the tensor engine
    /// on a GPU.
    pub fn or_default(requested: Option<Engine>, device: &Device) -> Engine {
        requested.unwrap_or(if device.is_cpu() { Self::Native } else { Self::Tensor })
    }

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
    /// 16-bit brain floating point (8 exponent bits, as `f32`): sentence encoders' dense layers
    /// on CPUs with AVX-512 BF16, products summed in `f32`.
    Bf16,
    /// 32-bit.
    F32,
    /// 64-bit: for classical models whose libraries compute in `f64`.
    F64,
}

/// The model families whose tensor engines take a precision, each with its own defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionFamily {
    /// Linear models and trees: `f64` on the CPU (their libraries' arithmetic), `f32` on a GPU.
    Classical,
    /// Sentence encoders: `f32` on the CPU, `f16` on a GPU.
    Embedding,
}

impl Precision {
    /// `requested`, or `family`'s default on `device`.
    pub fn or_default(requested: Option<Precision>, family: PrecisionFamily, device: &Device) -> Precision {
        requested.unwrap_or(match (family, device.is_cpu()) {
            (PrecisionFamily::Classical, true) => Self::F64,
            (PrecisionFamily::Classical, false) => Self::F32,
            (PrecisionFamily::Embedding, true) => Self::F32,
            (PrecisionFamily::Embedding, false) => Self::F16,
        })
    }

    /// The name used in configuration and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::F32 => "f32",
            Self::F64 => "f64",
        }
    }
}
