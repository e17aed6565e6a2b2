//! Models named on the command line (`inferd serve --model ...`, or `INFERD_MODELS`), for a
//! first run and for platforms that hand the server a model directory (KServe's `/mnt/models`,
//! Azure ML's `AZUREML_MODEL_DIR`) rather than a configuration file.
//!
//! A spec is `[KIND=]PATH[,name=NAME][,device=DEVICE][,engine=ENGINE][,precision=PRECISION]`:
//!
//! - `KIND` is `linear`, `xgboost`, `lightgbm`, `embedding` or `llm`; without it the kind is
//!   read from the files (a `.gguf` file, a sentence-transformers folder, an XGBoost JSON
//!   model, a LightGBM text model, inferd's linear JSON);
//! - `PATH` is a file, a directory or `hf:org/name[@revision]`; `${VAR}` in it is replaced by
//!   the environment variable `VAR`. In a directory, the one model file of its kind is used
//!   (`model.json` first, for trees and linear models), after descending through directories
//!   that hold nothing but one directory (Azure ML nests the registered folder that way);
//! - `name` defaults to the directory's name, or the file's stem (its directory's name for a
//!   file called `model.*`).

use std::path::{Path, PathBuf};

use inferd_core::{DeviceSpec, Engine, Precision};

use crate::config::{ModelConfig, ModelKind};

/// Why a `--model` spec cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--model '{spec}': {message}")]
pub struct ModelSpecError {
    spec: String,
    message: String,
}

/// How deep nested single directories are followed.
const MAX_NESTING: usize = 8;

/// How much of a JSON file is read to tell an XGBoost model from a linear one.
const SNIFF_BYTES: usize = 4096;

/// Parses one spec into a model configuration, resolving its path and kind.
pub fn parse_model_spec(spec: &str) -> Result<ModelConfig, ModelSpecError> {
    let fail = |message: String| ModelSpecError { spec: spec.to_string(), message };
    let mut parts = spec.split(',');
    let first = parts.next().unwrap_or("").trim();
    let (mut kind, path) = match first.split_once('=') {
        Some((kind, path)) => match parse_kind(kind) {
            Some(kind) => (Some(kind), path),
            None if kind == "path" => (None, path),
            None => {
                return Err(fail(format!("unknown model kind '{kind}' (linear, xgboost, lightgbm, embedding, llm)")));
            }
        },
        None => (None, first),
    };
    if path.is_empty() {
        return Err(fail("no path: give KIND=PATH or PATH".into()));
    }
    let path = expand_env(path).map_err(fail)?;
    let mut name = None;
    let mut device = DeviceSpec::Auto;
    let mut engine = None;
    let mut precision = None;
    for part in parts {
        let (key, value) = part.split_once('=').ok_or_else(|| fail(format!("'{part}' is not key=value")))?;
        let value = value.trim();
        match key.trim() {
            "name" => name = Some(value.to_string()),
            "kind" => {
                kind = Some(parse_kind(value).ok_or_else(|| fail(format!("unknown model kind '{value}'")))?);
            }
            "device" => device = value.parse().map_err(|err: inferd_core::DeviceError| fail(err.to_string()))?,
            "engine" => engine = Some(from_name::<Engine>(value).map_err(fail)?),
            "precision" => precision = Some(from_name::<Precision>(value).map_err(fail)?),
            other => {
                return Err(fail(format!("unknown key '{other}' (name, kind, device, engine, precision)")));
            }
        }
    }

    let hub = inferd_transformers::ModelSource::is_hub(&path);
    let (kind, given, path) = if hub {
        let kind = kind.ok_or_else(|| fail("a hub model needs its kind: embedding=hf:... or llm=hf:...".into()))?;
        (kind, PathBuf::from(&path), PathBuf::from(&path))
    } else {
        let path = PathBuf::from(&path);
        if !path.exists() {
            return Err(fail(format!("{} does not exist", path.display())));
        }
        let given = unwrap_single_directories(&path);
        let kind = match kind {
            Some(kind) => kind,
            None => detect_kind(&given).map_err(fail)?,
        };
        let file = model_file(kind, &given).map_err(fail)?;
        (kind, given, file)
    };
    let name = match name {
        Some(name) => name,
        None => default_name(&given, hub).ok_or_else(|| fail("cannot name the model: add name=NAME".into()))?,
    };
    let mut model = ModelConfig::new(name, kind, path);
    model.device = device;
    model.engine = engine;
    model.precision = precision;
    Ok(model)
}

/// A value of one of the configuration file's enums, by the name the file uses.
fn from_name<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, String> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(value))
        .map_err(|err| err.to_string())
}

fn parse_kind(text: &str) -> Option<ModelKind> {
    Some(match text.trim() {
        "linear" => ModelKind::Linear,
        "xgboost" => ModelKind::Xgboost,
        "lightgbm" => ModelKind::Lightgbm,
        "embedding" => ModelKind::Embedding,
        "llm" => ModelKind::Llm,
        _ => return None,
    })
}

/// Replaces each `${VAR}` with the environment variable's value.
fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed ${{ in '{text}'"))?;
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| format!("the environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The entries of a directory that are not hidden (Kubernetes volumes hold `..data` links).
fn visible_entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| entry.path())
        .collect();
    paths.sort();
    paths
}

fn unwrap_single_directories(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    for _ in 0..MAX_NESTING {
        if !path.is_dir() {
            break;
        }
        match visible_entries(&path).as_slice() {
            [only] if only.is_dir() => path = only.clone(),
            _ => break,
        }
    }
    path
}

fn has_extension(path: &Path, extension: &str) -> bool {
    path.extension().is_some_and(|found| found.eq_ignore_ascii_case(extension))
}

/// What a file or directory holds, from its names and first bytes.
fn detect_kind(path: &Path) -> Result<ModelKind, String> {
    if path.is_dir() {
        if path.join("modules.json").is_file() || path.join("sentence_bert_config.json").is_file() {
            return Ok(ModelKind::Embedding);
        }
        let entries = visible_entries(path);
        if entries.iter().any(|entry| has_extension(entry, "gguf")) {
            return Ok(ModelKind::Llm);
        }
        if let Ok(config) = std::fs::read_to_string(path.join("config.json")) {
            return Ok(if config.contains("ForCausalLM") { ModelKind::Llm } else { ModelKind::Embedding });
        }
        let files: Vec<&PathBuf> = entries
            .iter()
            .filter(|entry| entry.is_file() && (has_extension(entry, "json") || has_extension(entry, "txt")))
            .collect();
        let kinds: Vec<ModelKind> = files.iter().filter_map(|file| detect_file_kind(file)).collect();
        return match kinds.as_slice() {
            [kind] => Ok(*kind),
            [] => Err(format!(
                "cannot tell what kind of model {} holds; name it, e.g. --model xgboost={}",
                path.display(),
                path.display()
            )),
            _ => Err(format!("{} holds several models; name the file", path.display())),
        };
    }
    detect_file_kind(path).ok_or_else(|| {
        format!(
            "cannot tell what kind of model {} is; name it, e.g. --model xgboost={}",
            path.display(),
            path.display()
        )
    })
}

fn detect_file_kind(path: &Path) -> Option<ModelKind> {
    if has_extension(path, "gguf") {
        return Some(ModelKind::Llm);
    }
    let mut head = vec![0; SNIFF_BYTES];
    let read = std::io::Read::read(&mut std::fs::File::open(path).ok()?, &mut head).ok()?;
    let head = String::from_utf8_lossy(&head[..read]);
    if has_extension(path, "txt") {
        return (head.lines().next().map(str::trim) == Some("tree")).then_some(ModelKind::Lightgbm);
    }
    let compact: String = head.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.starts_with("{\"learner\":") {
        Some(ModelKind::Xgboost)
    } else if compact.contains("\"format\":\"inferd.linear\"") {
        Some(ModelKind::Linear)
    } else {
        None
    }
}

/// The file to load for `kind` at `path`: the path itself, or the one model file in it.
fn model_file(kind: ModelKind, path: &Path) -> Result<PathBuf, String> {
    let extension = match kind {
        // Folders: the loaders read them whole.
        ModelKind::Embedding | ModelKind::Llm => return Ok(path.to_path_buf()),
        ModelKind::Linear | ModelKind::Xgboost => "json",
        ModelKind::Lightgbm => "txt",
    };
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let preferred = path.join(format!("model.{extension}"));
    if preferred.is_file() {
        return Ok(preferred);
    }
    let candidates: Vec<PathBuf> =
        visible_entries(path).into_iter().filter(|entry| entry.is_file() && has_extension(entry, extension)).collect();
    match candidates.as_slice() {
        [only] => Ok(only.clone()),
        [] => {
            let hint = if kind == ModelKind::Xgboost
                && visible_entries(path).iter().any(|entry| has_extension(entry, "bst") || has_extension(entry, "ubj"))
            {
                " (inferd reads XGBoost's JSON format: save with booster.save_model(\"model.json\"))"
            } else {
                ""
            };
            Err(format!("no .{extension} model file in {}{hint}", path.display()))
        }
        several => Err(format!(
            "{} holds several .{extension} files ({}); name the file or call one model.{extension}",
            path.display(),
            several
                .iter()
                .filter_map(|file| file.file_name())
                .map(|name| name.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn default_name(path: &Path, hub: bool) -> Option<String> {
    if hub {
        // hf:org/name[@revision] -> name
        let text = path.to_string_lossy();
        let repo = text.trim_start_matches("hf:").split('@').next()?;
        return repo.rsplit('/').next().filter(|name| !name.is_empty()).map(str::to_string);
    }
    let name = if path.is_dir() { path.file_name()? } else { path.file_stem()? };
    // `model.json` says nothing: its directory's name does.
    if name == "model" && !path.is_dir() {
        return path.parent()?.file_name().map(|name| name.to_string_lossy().into_owned());
    }
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(path: &str) -> String {
        format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn kinds_are_read_from_the_files() {
        for (path, kind, name) in [
            ("models/iris-xgboost/model.json", ModelKind::Xgboost, "iris-xgboost"),
            ("models/iris-xgboost", ModelKind::Xgboost, "iris-xgboost"),
            ("models/iris-lightgbm", ModelKind::Lightgbm, "iris-lightgbm"),
            ("models/iris-logistic", ModelKind::Linear, "iris-logistic"),
        ] {
            let model = parse_model_spec(&repo(path)).unwrap();
            assert_eq!((model.kind, model.name.as_str()), (kind, name), "{path}");
            assert!(model.path.is_file(), "{}", model.path.display());
        }
    }

    #[test]
    fn options_and_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        // Azure ML's layout: <model dir>/<registered folder>/model.json, with a hidden entry.
        let nested = dir.path().join("credit/1/model");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::copy(repo("models/iris-xgboost/model.json"), nested.join("booster.json")).unwrap();
        std::fs::write(dir.path().join("credit/1/.amlignore"), "").unwrap();
        let spec = format!("{}/credit,name=credit,device=cpu,engine=tensor,precision=f32", dir.path().display());
        let model = parse_model_spec(&spec).unwrap();
        assert_eq!(model.name, "credit");
        assert_eq!(model.kind, ModelKind::Xgboost);
        assert_eq!(model.path, nested.join("booster.json"));
        assert_eq!(model.device, DeviceSpec::Cpu);
        assert_eq!(model.engine, Some(Engine::Tensor));
        assert_eq!(model.precision, Some(Precision::F32));
        // An explicit kind skips detection; a wrong one fails in the loader, not here.
        let model = parse_model_spec(&format!("lightgbm={}", repo("models/iris-lightgbm/model.txt"))).unwrap();
        assert_eq!(model.kind, ModelKind::Lightgbm);
    }

    #[test]
    fn environment_variables_in_paths() {
        // A variable every test process has, so that no test sets the environment.
        let home = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        assert_eq!(expand_env("${CARGO_MANIFEST_DIR}/models").unwrap(), format!("{home}/models"));
        assert!(expand_env("${INFERD_SURELY_UNSET_VARIABLE}/m").unwrap_err().contains("is not set"));
        assert!(expand_env("${OPEN").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |spec: &str| parse_model_spec(spec).unwrap_err().to_string();
        assert!(err("onnx=/x").contains("unknown model kind 'onnx'"));
        assert!(err("/no/such/model.json").contains("does not exist"));
        assert!(err(&format!("{},size=3", repo("models/iris-xgboost"))).contains("unknown key 'size'"));
        assert!(err(&format!("{},device=tpu", repo("models/iris-xgboost"))).contains("tpu"));
        assert!(err("hf:org/model").contains("needs its kind"));
        assert!(err(&repo("models")).contains("cannot tell"), "{}", err(&repo("models")));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.bst"), "binary").unwrap();
        assert!(err(&format!("xgboost={}", dir.path().display())).contains("save_model(\"model.json\")"));
        let hub = parse_model_spec("embedding=hf:sentence-transformers/all-MiniLM-L6-v2@main").unwrap();
        assert_eq!(hub.name, "all-MiniLM-L6-v2");
    }
}
