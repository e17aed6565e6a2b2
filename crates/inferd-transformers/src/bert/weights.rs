//! A checkpoint's tensors, read once from `model.safetensors` into memory on the CPU, and shared
//! by whichever engine is built from them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::LoadError;

/// Named tensors of a checkpoint, on the CPU.
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// The prefix before `embeddings.` and `encoder.` (`""`, `"bert."`).
    prefix: String,
}

impl Weights {
    /// Reads a safetensors file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|err| LoadError::invalid(path, format!("not a readable safetensors file: {err}")))?;
        let prefix = ["", "bert.", "model."]
            .into_iter()
            .find(|prefix| tensors.contains_key(&format!("{prefix}embeddings.word_embeddings.weight")))
            .ok_or_else(|| LoadError::invalid(path, "no BERT embeddings (embeddings.word_embeddings.weight) in it"))?
            .to_string();
        Ok(Self { path: path.to_path_buf(), tensors, prefix })
    }

    /// The prefix of every BERT tensor's name in this checkpoint (`""`, `"bert."`, `"model."`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every tensor by name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// The tensor `name` (without the checkpoint's prefix) as `f32` values, checked to have
    /// `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let full = format!("{}{name}", self.prefix);
        let tensor =
            self.tensors.get(&full).ok_or_else(|| LoadError::invalid(&self.path, format!("no tensor {full}")))?;
        if tensor.dims() != shape {
            return Err(LoadError::invalid(
                &self.path,
                format!("tensor {full} has shape {:?}, expected {shape:?}", tensor.dims()),
            ));
        }
        tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|err| LoadError::invalid(&self.path, format!("tensor {full}: {err}")))
    }
}
