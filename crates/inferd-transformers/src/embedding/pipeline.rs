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

/// The Pooling module's `config.json`: sentence-transformers 6 writes one `pooling_mode` (a
/// name, or a list of names for concatenated poolings); earlier versions a boolean per mode.
#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode: Option<PoolingModes>,
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
#[serde(untagged)]
enum PoolingModes {
    One(String),
    Several(Vec<String>),
}

impl PoolingConfig {
    /// The modes switched on, by sentence-transformers' names (`mean`, `cls`, `max`,
    /// `mean_sqrt_len_tokens`, `weightedmean`, `lasttoken`).
    fn modes(&self) -> Vec<String> {
        match &self.pooling_mode {
            Some(PoolingModes::One(mode)) => vec![mode.clone()],
            Some(PoolingModes::Several(modes)) => modes.clone(),
            None => [
                (self.pooling_mode_mean_tokens, "mean"),
                (self.pooling_mode_cls_token, "cls"),
                (self.pooling_mode_max_tokens, "max"),
                (self.pooling_mode_mean_sqrt_len_tokens, "mean_sqrt_len_tokens"),
                (self.pooling_mode_weightedmean_tokens, "weightedmean"),
                (self.pooling_mode_lasttoken, "lasttoken"),
            ]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name.to_string())
            .collect(),
        }
    }
}

/// `tokenizer_config.json`, for the sequence length sentence-transformers 6 keeps there.
#[derive(Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

/// The modules inferd runs, known by their class whatever module path sentence-transformers
/// recorded for it in `type`: `sentence_transformers.models.Transformer` (2.x to 5.x),
/// `sentence_transformers.models.transformer.Transformer`, or 6.x's
/// `sentence_transformers.base.modules.transformer.Transformer` and
/// `sentence_transformers.sentence_transformer.modules.pooling.Pooling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModuleClass {
    Transformer,
    Pooling,
    Normalize,
}

impl ModuleClass {
    /// The class of a `modules.json` `type`; `None` for any other class, or one defined outside
    /// sentence-transformers (a user's own module, which inferd cannot know).
    fn of(type_name: &str) -> Option<Self> {
        let path = type_name.strip_prefix("sentence_transformers.")?;
        match path.rsplit('.').next()? {
            "Transformer" => Some(Self::Transformer),
            "Pooling" => Some(Self::Pooling),
            "Normalize" => Some(Self::Normalize),
            _ => None,
        }
    }
}

impl Pipeline {
    /// Reads the pipeline of a sentence-transformers model: a `Transformer` at the root, then a
    /// `Pooling`, then optionally `Normalize`; any other module is refused by name.
    pub fn load(files: &ModelFiles) -> Result<Self, LoadError> {
        let modules_path = files.require("modules.json")?;
        let modules: Vec<Module> = read_json(&modules_path)?;
        let kinds: Vec<&str> = modules.iter().map(|module| module.kind.as_str()).collect();
        let classes: Vec<Option<ModuleClass>> = kinds.iter().map(|kind| ModuleClass::of(kind)).collect();
        use ModuleClass::{Normalize, Pooling as Pool, Transformer};
        let expected = matches!(
            classes.as_slice(),
            [Some(Transformer), Some(Pool)] | [Some(Transformer), Some(Pool), Some(Normalize)]
        );
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
        let modes = raw.modes();
        let pooling = match modes.as_slice() {
            [mode] => match mode.as_str() {
                "mean" => Pooling::Mean,
                "cls" => Pooling::Cls,
                "max" => Pooling::Max,
                other => {
                    return Err(LoadError::unsupported(
                        &pooling_path,
                        format!("pooling '{other}' is not supported; supported: mean, cls, max"),
                    ));
                }
            },
            [] => return Err(LoadError::invalid(&pooling_path, "no pooling mode is switched on")),
            _ => {
                return Err(LoadError::unsupported(
                    &pooling_path,
                    format!("several pooling modes at once ({}) are not supported", modes.join(", ")),
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
        // Without a length of its own (sentence-transformers 6 writes none), the model reads
        // the tokenizer's; transformers writes about 1e30 there for "no limit".
        let max_seq_length = match max_seq_length {
            Some(length) => Some(length),
            None => match files.get("tokenizer_config.json")? {
                Some(path) => read_json::<TokenizerConfig>(&path)?
                    .model_max_length
                    .filter(|length| *length >= 1.0 && *length < 1e9)
                    .map(|length| length as usize),
                None => None,
            },
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
        let own = THREE.replace("sentence_transformers.models.Normalize", "my_project.modules.Normalize");
        let err = pipeline(&own, r#"{"pooling_mode_mean_tokens": true}"#, None).unwrap_err().to_string();
        assert!(err.contains("my_project.modules.Normalize"), "{err}");
    }

    #[test]
    fn reads_sentence_transformers_6_pooling_and_length() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.json"), THREE).unwrap();
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        let open = || Pipeline::load(&ModelSource::Folder(dir.path().to_path_buf()).open().unwrap());
        let pooling = |config: &str| std::fs::write(dir.path().join("1_Pooling/config.json"), config).unwrap();
        pooling(r#"{"embedding_dimension": 32, "pooling_mode": "cls", "include_prompt": true}"#);
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"model_max_length": 64}"#).unwrap();
        assert_eq!(
            open().unwrap(),
            Pipeline { pooling: Pooling::Cls, normalize: true, max_seq_length: Some(64), lowercase: false }
        );
        pooling(r#"{"pooling_mode": ["max"]}"#);
        assert_eq!(open().unwrap().pooling, Pooling::Max);
        pooling(r#"{"pooling_mode": ["mean", "max"]}"#);
        assert!(open().unwrap_err().to_string().contains("several pooling modes at once (mean, max)"));
        pooling(r#"{"pooling_mode": "weightedmean"}"#);
        assert!(open().unwrap_err().to_string().contains("'weightedmean' is not supported"));
        // transformers' "no limit", and sentence_bert_config.json's own length first.
        pooling(r#"{"pooling_mode": "mean"}"#);
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"model_max_length": 1000000000000000019884624838656}"#,
        )
        .unwrap();
        assert_eq!(open().unwrap().max_seq_length, None);
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"model_max_length": 64}"#).unwrap();
        std::fs::write(dir.path().join("sentence_bert_config.json"), r#"{"max_seq_length": 128}"#).unwrap();
        assert_eq!(open().unwrap().max_seq_length, Some(128));
    }

    #[test]
    fn knows_modules_by_class_whichever_version_wrote_them() {
        let mean = r#"{"pooling_mode_mean_tokens": true}"#;
        for (transformer, pooling, normalize) in [
            (
                "sentence_transformers.models.transformer.Transformer",
                "sentence_transformers.models.pooling.Pooling",
                "sentence_transformers.models.normalize.Normalize",
            ),
            (
                "sentence_transformers.base.modules.transformer.Transformer",
                "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
                "sentence_transformers.base.modules.normalize.Normalize",
            ),
        ] {
            let modules = THREE
                .replace("sentence_transformers.models.Transformer", transformer)
                .replace("sentence_transformers.models.Pooling", pooling)
                .replace("sentence_transformers.models.Normalize", normalize);
            let found = pipeline(&modules, mean, None).unwrap();
            assert_eq!(found.pooling, Pooling::Mean);
            assert!(found.normalize, "{modules}");
        }
    }
}
