//! Which evaluator runs a classical model, and in what precision.

use inferd_core::Device;
use serde::Deserialize;

/// The evaluator that computes a classical model's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Plain Rust on the CPU, in the reference library's own arithmetic (`f64` for linear models
    /// and LightGBM, `f32` for XGBoost): lowest latency, and the library's answers to the last
    /// bit. The default on the CPU.
    Native,
    /// candle tensors on the model's device (CPU or CUDA). The default on CUDA.
    Tensor,
}

/// Floating-point precision of the tensor engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit: fast on every GPU. The default on CUDA.
    F32,
    /// 64-bit: matches reference libraries most closely. The default on the CPU.
    F64,
}

/// A model's engine settings as configured; unset fields take the device's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineOptions {
    /// The evaluator; see [`Engine`].
    pub engine: Option<Engine>,
    /// The tensor engine's precision; see [`Precision`].
    pub precision: Option<Precision>,
    /// Most threads the native tree engine uses for one large batch (default: every core).
    pub threads: Option<usize>,
}

impl EngineOptions {
    /// The engine and precision to use on `device`.
    pub fn resolve(&self, device: &Device) -> (Engine, Precision) {
        let on_gpu = !device.is_cpu();
        let engine = self.engine.unwrap_or(if on_gpu { Engine::Tensor } else { Engine::Native });
        let precision = self.precision.unwrap_or(if on_gpu { Precision::F32 } else { Precision::F64 });
        (engine, precision)
    }
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
