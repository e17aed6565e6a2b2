//! The engine a loaded generative model computes with: the native CPU engine or the tensor
//! engine, behind one [`CausalLm`].

use inferd_core::{CausalLm, InferError, SequenceStep};

use super::kv_cache::LlamaCache;
use super::llama::NativeLlama;
use super::tensor_llama::{TensorCache, TensorLlama};

/// A llama-family decoder on either engine.
pub enum LlamaEngine {
    /// The native CPU engine.
    Native(NativeLlama),
    /// candle tensors on the model's device (CUDA, or the CPU).
    Tensor(TensorLlama),
}

/// A sequence's cache for the engine that made it.
#[derive(Debug, Clone)]
pub enum LlamaEngineCache {
    /// The native engine's.
    Native(LlamaCache),
    /// The tensor engine's.
    Tensor(TensorCache),
}

impl LlamaEngineCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        match self {
            Self::Native(cache) => cache.len(),
            Self::Tensor(cache) => cache.len(),
        }
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn foreign_cache() -> InferError {
    InferError::Internal("a sequence's cache comes from another engine".into())
}

impl CausalLm for LlamaEngine {
    type Cache = LlamaEngineCache;

    fn new_cache(&self) -> LlamaEngineCache {
        match self {
            Self::Native(model) => LlamaEngineCache::Native(model.new_cache()),
            Self::Tensor(model) => LlamaEngineCache::Tensor(model.new_cache()),
        }
    }

    fn forward(&mut self, batch: &mut [SequenceStep<'_, LlamaEngineCache>]) -> Result<Vec<Vec<f32>>, InferError> {
        match self {
            Self::Native(model) => {
                let mut steps = batch
                    .iter_mut()
                    .map(|step| match &mut *step.cache {
                        LlamaEngineCache::Native(cache) => Ok(SequenceStep { cache, tokens: step.tokens }),
                        LlamaEngineCache::Tensor(_) => Err(foreign_cache()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                model.forward(&mut steps)
            }
            Self::Tensor(model) => {
                let mut steps = batch
                    .iter_mut()
                    .map(|step| match &mut *step.cache {
                        LlamaEngineCache::Tensor(cache) => Ok(SequenceStep { cache, tokens: step.tokens }),
                        LlamaEngineCache::Native(_) => Err(foreign_cache()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                model.forward(&mut steps)
            }
        }
    }
}
