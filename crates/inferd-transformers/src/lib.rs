//! inferd's transformer models.
//!
//! - [`source`]: where a model's files are, a local folder or a Hugging Face hub repository
//!   (`hf:org/name[@revision]`), fetched through `hf-hub` with its cache and offline mode;
//! - [`tokenizer`]: Hugging Face tokenizers, bounded by the model's sequence length;
//! - [`bert`]: BERT encoders with a native CPU engine and a candle tensor engine;
//! - [`embedding`]: sentence-transformers pipelines (pooling, normalisation) loaded into what
//!   inferd-core's `EmbeddingService` serves;
//! - [`generation`]: llama-family text generation (GGUF and safetensors) for inferd-core's
//!   `GenerationService`;
//! - [`quant`]: the quantized matrix products of the native generation engine (public for
//!   benchmarks and for embedding them elsewhere).

pub mod bert;
pub mod embedding;
pub mod error;
pub mod generation;
mod kernels;
pub mod quant;
pub mod source;
pub mod tokenizer;

pub use embedding::{EmbeddingOptions, LoadedEmbedding, Pooling, load_embedding};
pub use error::LoadError;
pub use generation::{GenerationOptions, LoadedGeneration, load_generation};
pub use kernels::bf16_available;
pub use source::{ModelFiles, ModelSource};
pub use tokenizer::TextTokenizer;
