//! A sentence-transformers folder's pipeline: `modules.json`, the pooling module's
//! `config.json`, an optional `Normalize` module, and `sentence_bert_config.json`.

use serde::Deserialize;

use crate::error::LoadError;
use crate::source::{ModelFiles, read_json};

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the sequence's token states.
    Mean,
    /// The first token's state (`[CLS]`).
    Cls,
    /// The element-wise maximum over the sequence's token states.
    Max,
}

impl Pooling {
    /// The name sentence-transformers gives it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Cls => "cls",
            Self::Max => "max",
        }
    }
}

/// What the pipeline does around the transformer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    /// The pooling.
    pub pooling: Pooling,
    /// Whether a `Normalize` module scales each embedding to unit length.
    pub normalize: bool,
    /// `sentence_bert_config.json`'s `max_seq_length`, when given.
    pub max_seq_length: Option<usize>,
    /// `sentence_bert_config.json`'s `do_lower_case`: texts are lowercased before the
    /// tokenizer sees them.
    pub lowercase: bool,
}

#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

const TRANSFORMER: &str = "sentence_transformers.models.Transformer";
const POOLING: &str = "sentence_transformers.models.Pooling";
const NORMALIZE: &str = "sentence_transformers.models.Normalize";

impl Pipeline {
    /// Reads the pipeline of a sentence-transformers model: a `Transformer` at the root, then a
    /// `Pooling`, then optionally `Normalize`; any other module is refused by name.
    pub fn load(files: &ModelFiles) -> Result<Self, LoadError> {
        let modules_path = files.require("modules.json")?;
        let modules: Vec<Module> = read_json(&modules_path)?;
        let kinds: Vec<&str> = modules.iter().map(|module| module.kind.as_str()).collect();
        let expected = matches!(kinds.as_slice(), [TRANSFORMER, POOLING] | [TRANSFORMER, POOLING, NORMALIZE]);
        if !expected {
            return Err(LoadError::unsupported(
                &modules_path,
                format!(
                    "the modules [{}] are not supported; supported: Transformer, Pooling, then optionally Normalize",
                    kinds.join(", ")
                ),
            ));
        }
        if !modules[0].path.is_empty() {
            return Err(LoadError::unsupported(&modules_path, "the Transformer module must be at the model's root"));
        }
        let pooling_file = format!("{}/config.json", modules[1].path.trim_end_matches('/'));
        let pooling_path = files.require(&pooling_file)?;
        let raw: PoolingConfig = read_json(&pooling_path)?;
        let modes = [
            (raw.pooling_mode_mean_tokens, Some(Pooling::Mean), "mean"),
            (raw.pooling_mode_cls_token, Some(Pooling::Cls), "cls"),
            (raw.pooling_mode_max_tokens, Some(Pooling::Max), "max"),
            (raw.pooling_mode_mean_sqrt_len_tokens, None, "mean_sqrt_len"),
            (raw.pooling_mode_weightedmean_tokens, None, "weightedmean"),
            (raw.pooling_mode_lasttoken, None, "lasttoken"),
        ];
        let chosen: Vec<_> = modes.iter().filter(|(on, _, _)| *on).collect();
        let pooling = match chosen.as_slice() {
            [(_, Some(pooling), _)] => *pooling,
            [(_, None, name)] => {
                return Err(LoadError::unsupported(
                    &pooling_path,
                    format!("pooling '{name}' is not supported; supported: mean, cls, max"),
                ));
            }
            [] => return Err(LoadError::invalid(&pooling_path, "no pooling mode is switched on")),
            _ => {
                let names: Vec<&str> = chosen.iter().map(|(_, _, name)| *name).collect();
                return Err(LoadError::unsupported(
                    &pooling_path,
                    format!("several pooling modes at once ({}) are not supported", names.join(", ")),
                ));
            }
        };
        let (max_seq_length, lowercase) = match files.get("sentence_bert_config.json")? {
            Some(path) => {
                let config: SentenceBertConfig = read_json(&path)?;
                (config.max_seq_length, config.do_lower_case)
            }
            None => (None, false),
        };
        Ok(Self { pooling, normalize: modules.len() == 3, max_seq_length, lowercase })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ModelSource;

    fn pipeline(modules: &str, pooling: &str, sbert: Option<&str>) -> Result<Pipeline, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.json"), modules).unwrap();
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(dir.path().join("1_Pooling/config.json"), pooling).unwrap();
        if let Some(sbert) = sbert {
            std::fs::write(dir.path().join("sentence_bert_config.json"), sbert).unwrap();
        }
        Pipeline::load(&ModelSource::Folder(dir.path().to_path_buf()).open().unwrap())
    }

    const THREE: &str = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn reads_the_minilm_layout() {
        let mean = r#"{"word_embedding_dimension": 384, "pooling_mode_mean_tokens": true}"#;
        let found = pipeline(THREE, mean, Some(r#"{"max_seq_length": 256, "do_lower_case": false}"#)).unwrap();
        assert_eq!(
            found,
            Pipeline { pooling: Pooling::Mean, normalize: true, max_seq_length: Some(256), lowercase: false }
        );
        let cls = r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#;
        let two = THREE.rsplit_once(",\n").unwrap().0.to_string() + "]";
        let found = pipeline(&two, cls, Some(r#"{"do_lower_case": true}"#)).unwrap();
        assert_eq!(found, Pipeline { pooling: Pooling::Cls, normalize: false, max_seq_length: None, lowercase: true });
    }

    #[test]
    fn refuses_other_pipelines_by_name() {
        let both = r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#;
        assert!(pipeline(THREE, both, None).unwrap_err().to_string().contains("several pooling modes"));
        let last = r#"{"pooling_mode_lasttoken": true}"#;
        assert!(pipeline(THREE, last, None).unwrap_err().to_string().contains("'lasttoken' is not supported"));
        let dense = THREE.replace("models.Normalize", "models.Dense");
        let err = pipeline(&dense, r#"{"pooling_mode_mean_tokens": true}"#, None).unwrap_err().to_string();
        assert!(err.contains("sentence_transformers.models.Dense"), "{err}");
    }
}
