//! Where a model's files come from: a local folder, or a Hugging Face hub repository.
//!
//! `hf:org/name` or `hf:org/name@revision` names a hub repository; anything else is a folder.
//! Hub files are fetched with `hf-hub` into its cache (`HF_HOME`, by default
//! `~/.cache/huggingface`) from `HF_ENDPOINT` (by default the public hub), with the token of
//! `HF_TOKEN`, else the cache's token file. With `HF_HUB_OFFLINE=1` nothing is fetched: files come
//! from the cache alone, as the Python `huggingface_hub` does.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::LoadError;

/// The prefix that marks a hub repository.
const HUB_PREFIX: &str = "hf:";

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local folder.
    Folder(PathBuf),
    /// A Hugging Face hub model repository at a revision (branch, tag or commit).
    Hub {
        /// `org/name`.
        repo: String,
        /// The revision; `main` unless given.
        revision: String,
    },
}

impl ModelSource {
    /// Reads `hf:org/name[@revision]` as a hub repository, anything else as a folder path.
    pub fn parse(text: &str) -> Result<Self, LoadError> {
        let Some(spec) = text.strip_prefix(HUB_PREFIX) else {
            return Ok(Self::Folder(PathBuf::from(text)));
        };
        let invalid = |reason: &str| LoadError::Source { source_text: text.to_string(), reason: reason.to_string() };
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, revision)) => (repo, revision),
            None => (spec, "main"),
        };
        let mut parts = repo.split('/');
        let well_formed = matches!((parts.next(), parts.next(), parts.next()), (Some(org), Some(name), None)
            if !org.is_empty() && !name.is_empty());
        if !well_formed {
            return Err(invalid("a hub repository is written hf:org/name or hf:org/name@revision"));
        }
        if revision.is_empty() {
            return Err(invalid("the revision after '@' is empty"));
        }
        Ok(Self::Hub { repo: repo.to_string(), revision: revision.to_string() })
    }

    /// Whether the source string names a hub repository (and so is not a path).
    pub fn is_hub(text: &str) -> bool {
        text.starts_with(HUB_PREFIX)
    }

    /// Opens the source for reading files; for the hub, lists the repository's files (unless
    /// offline).
    pub fn open(&self) -> Result<ModelFiles, LoadError> {
        match self {
            Self::Folder(root) => {
                if !root.is_dir() {
                    return Err(LoadError::Io {
                        path: root.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
                    });
                }
                Ok(ModelFiles { name: self.to_string(), access: Access::Folder(root.clone()) })
            }
            Self::Hub { repo, revision } => {
                let hub_repo = Repo::with_revision(repo.clone(), RepoType::Model, revision.clone());
                let access = if offline() {
                    Access::HubCache(Cache::from_env().repo(hub_repo))
                } else {
                    let fail = |reason: String| LoadError::Hub {
                        repo: format!("{repo}@{revision}"),
                        file: "the file list".into(),
                        reason,
                    };
                    let mut builder = ApiBuilder::from_env().with_progress(false);
                    // hf-hub reads the cache's token file; the environment variable wins.
                    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|token| !token.trim().is_empty()) {
                        builder = builder.with_token(Some(token.trim().to_string()));
                    }
                    let api = builder.build().map_err(|err| fail(err.to_string()))?;
                    let api_repo = api.repo(hub_repo);
                    let info = api_repo.info().map_err(|err| fail(err.to_string()))?;
                    let files = info.siblings.into_iter().map(|sibling| sibling.rfilename).collect();
                    Access::Hub { repo: api_repo, files }
                };
                Ok(ModelFiles { name: self.to_string(), access })
            }
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Folder(root) => write!(f, "{}", root.display()),
            Self::Hub { repo, revision } => write!(f, "{HUB_PREFIX}{repo}@{revision}"),
        }
    }
}

/// Whether `HF_HUB_OFFLINE` asks for the cache alone.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|value| matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

enum Access {
    Folder(PathBuf),
    Hub { repo: ApiRepo, files: BTreeSet<String> },
    HubCache(hf_hub::CacheRepo),
}

/// An opened source: files by their path relative to the model's root, as local paths.
pub struct ModelFiles {
    name: String,
    access: Access,
}

impl ModelFiles {
    /// The source, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local path of `file`, fetching it first from the hub; `None` when the source has no
    /// such file.
    pub fn get(&self, file: &str) -> Result<Option<PathBuf>, LoadError> {
        match &self.access {
            Access::Folder(root) => {
                let path = root.join(file);
                Ok(path.is_file().then_some(path))
            }
            Access::Hub { repo, files } => {
                if !files.contains(file) {
                    return Ok(None);
                }
                let path = repo.get(file).map_err(|err| LoadError::Hub {
                    repo: self.name.clone(),
                    file: file.to_string(),
                    reason: err.to_string(),
                })?;
                Ok(Some(path))
            }
            Access::HubCache(cache) => Ok(cache.get(file)),
        }
    }

    /// The local path of `file`, which the model cannot do without.
    pub fn require(&self, file: &str) -> Result<PathBuf, LoadError> {
        self.get(file)?.ok_or_else(|| LoadError::MissingFile { source_name: self.name.clone(), file: file.to_string() })
    }
}

/// Reads a whole file as text.
pub(crate) fn read_text(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })
}

/// Reads a JSON file into `T`.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    serde_json::from_str(&read_text(path)?).map_err(|err| LoadError::invalid(path, err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(ModelSource::parse("models/minilm").unwrap(), ModelSource::Folder("models/minilm".into()));
        assert_eq!(
            ModelSource::parse("hf:sentence-transformers/all-MiniLM-L6-v2").unwrap(),
            ModelSource::Hub { repo: "sentence-transformers/all-MiniLM-L6-v2".into(), revision: "main".into() }
        );
        let pinned = ModelSource::parse("hf:org/name@v1.0").unwrap();
        assert_eq!(pinned.to_string(), "hf:org/name@v1.0");
        for bad in ["hf:", "hf:name", "hf:a/b/c", "hf:/b", "hf:a/b@"] {
            assert!(ModelSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn folders_give_their_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let files = ModelSource::Folder(dir.path().to_path_buf()).open().unwrap();
        assert!(files.get("config.json").unwrap().is_some());
        assert!(files.get("absent.json").unwrap().is_none());
        assert!(files.require("absent.json").unwrap_err().to_string().contains("has no absent.json"));
        assert!(ModelSource::Folder(dir.path().join("nowhere")).open().is_err());
    }
}
