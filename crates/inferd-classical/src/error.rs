//! Errors raised while loading a model file.

use std::path::PathBuf;

/// Why a model could not be loaded; always names the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot load model {}: {reason}", path.display())]
pub struct LoadError {
    /// The model file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl LoadError {
    /// An error about `path`.
    pub fn new(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self { path: path.into(), reason: reason.into() }
    }
}
