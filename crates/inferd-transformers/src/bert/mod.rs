//! BERT encoders: the configuration, the checkpoint's weights, and two engines that compute
//! the same embeddings: [`NativeBert`] (CPU, no padding, fused kernels) and [`TensorBert`]
//! (candle-transformers on CPU or CUDA).

mod config;
mod native;
mod tensor;
mod weights;

pub use config::{Activation, BertConfig};
pub use native::NativeBert;
pub use tensor::TensorBert;
pub use weights::Weights;
