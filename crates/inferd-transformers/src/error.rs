//! Why a transformer model could not be loaded.

use std::path::PathBuf;

/// Why a model could not be loaded. Every variant names the file or source at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A model source string is not a folder path or `hf:org/name[@revision]`.
    #[error("invalid model source '{source_text}': {reason}")]
    Source {
        /// The source as configured.
        source_text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file the model needs is absent.
    #[error("{source_name} has no {file}")]
    MissingFile {
        /// The folder or hub repository.
        source_name: String,
        /// The file, relative to the model's root.
        file: String,
    },
    /// The hub could not deliver a file.
    #[error("cannot fetch {file} from the Hugging Face hub repository {repo}: {reason}")]
    Hub {
        /// The repository (with revision).
        repo: String,
        /// The file.
        file: String,
        /// Why not.
        reason: String,
    },
    /// A file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is read but its content is not valid for the model.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The model is valid but of a kind inferd does not run.
    #[error("{}: {reason}", path.display())]
    Unsupported {
        /// The file that says so (usually `config.json` or `modules.json`).
        path: PathBuf,
        /// What is unsupported, and what is.
        reason: String,
    },
    /// The model could not be placed on its device or failed its start-up check there.
    #[error("{0}")]
    Device(String),
}

impl LoadError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Invalid { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Unsupported { path: path.into(), reason: reason.into() }
    }
}
