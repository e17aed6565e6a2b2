//! The engine a loaded generative model computes with: the native CPU engine or the candle
//! engine, behind one [`CausalLm`].

use inferd_core::{CausalLm, InferError, SequenceStep};

use super::candle_llama::{CandleCache, CandleLlama};
use super::kv_cache::LlamaCache;
use super::llama::NativeLlama;

/// A llama-family decoder on either engine.
pub enum LlamaEngine {
    /// The native CPU engine.
    Native(NativeLlama),
    /// candle tensors on the model's device (CUDA, or the CPU).
    Candle(CandleLlama),
}

/// A sequence's cache for the engine that made it.
#[derive(Debug, Clone)]
pub enum LlamaEngineCache {
    /// The native engine's.
    Native(LlamaCache),
    /// The candle engine's.
    Candle(CandleCache),
}

impl LlamaEngineCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        match self {
            Self::Native(cache) => cache.len(),
            Self::Candle(cache) => cache.len(),
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
            Self::Candle(model) => LlamaEngineCache::Candle(model.new_cache()),
        }
    }

    fn forward(&mut self, batch: &mut [SequenceStep<'_, LlamaEngineCache>]) -> Result<Vec<Vec<f32>>, InferError> {
        match self {
            Self::Native(model) => {
                let mut steps = batch
                    .iter_mut()
                    .map(|step| match &mut *step.cache {
                        LlamaEngineCache::Native(cache) => Ok(SequenceStep { cache, tokens: step.tokens }),
                        LlamaEngineCache::Candle(_) => Err(foreign_cache()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                model.forward(&mut steps)
            }
            Self::Candle(model) => {
                let mut steps = batch
                    .iter_mut()
                    .map(|step| match &mut *step.cache {
                        LlamaEngineCache::Candle(cache) => Ok(SequenceStep { cache, tokens: step.tokens }),
                        LlamaEngineCache::Native(_) => Err(foreign_cache()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                model.forward(&mut steps)
            }
        }
    }
}
