//! Which evaluator runs a classical model, and in what precision.
//!
//! [`Engine::Native`] runs in the reference library's own arithmetic (`f64` for linear models and
//! LightGBM, `f32` for XGBoost): the library's answers to the last bit. [`Engine::Tensor`] runs
//! on candle, on the CPU or CUDA.

use inferd_core::Device;
use inferd_core::PrecisionFamily;
pub use inferd_core::{Engine, Precision};
use serde::Deserialize;

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
    /// The engine and precision to use on `device`. Classical models compute in `f32` (the
    /// default on CUDA) or `f64` (the default on the CPU); `f16` and `bf16` are refused.
    pub fn resolve(&self, device: &Device) -> Result<(Engine, Precision), String> {
        let engine = Engine::or_default(self.engine, device);
        let precision = Precision::or_default(self.precision, PrecisionFamily::Classical, device);
        if matches!(precision, Precision::F16 | Precision::Bf16) {
            return Err(format!("classical models compute in f32 or f64, not {}", precision.name()));
        }
        Ok((engine, precision))
    }
}
