//! Linear and logistic regression.
//!
//! # File format
//!
//! A model is one JSON document (scikit-learn models are exported by
//! `models/reference/make_linear.py`):
//!
//! ```json
//! {
//!   "format": "inferd.linear",
//!   "version": 1,
//!   "task": "classification",
//!   "link": "softmax",
//!   "n_features": 4,
//!   "feature_names": ["sepal length (cm)", "..."],
//!   "coefficients": [[0.1, 0.2, 0.3, 0.4], [..], [..]],
//!   "intercepts": [0.5, 0.1, -0.6],
//!   "classes": [0, 1, 2],
//!   "source": {"library": "scikit-learn", "version": "1.9.1"}
//! }
//! ```
//!
//! - `task` is `regression` or `classification`; `link` is `identity` (regression), `logistic`
//!   (binary classification: one coefficient row, p(`classes[1]`) = sigmoid(margin)) or
//!   `softmax` (multinomial: one row per class).
//! - `coefficients` has K rows of `n_features`; `intercepts` has K values. K is 1 for
//!   `logistic`, the number of classes for `softmax`, and the number of targets for `identity`.
//! - `classes` (classification only) are integers or strings: 2 for `logistic`, K for
//!   `softmax`. `feature_names` and `source` are optional and informational.
//!
//! `margin[n][k] = intercepts[k] + Σ_f coefficients[k][f] · x[n][f]`.
//!
//! # Outputs
//!
//! Regression: `predictions`, shape `[N]` (or `[N, K]` with several targets).
//! Classification: `probabilities` `[N, C]` and `label` `[N]` (returned by default), and
//! `margin` (`[N]` for logistic, `[N, K]` for softmax), which is scikit-learn's
//! `decision_function`. A logistic label is `classes[1]` when the margin is above 0, as in
//! scikit-learn; a softmax label is the class of the first largest probability.

mod native;
mod tensor;

use std::path::Path;

use inferd_core::{
    Device, InferError, OutputSpec, Rows, TabularModel, TabularOutput, TabularSchema, ValueKind, Values,
};
use serde::Deserialize;

use crate::engine::{Engine, EngineOptions};
use crate::error::LoadError;
use tensor::TensorLinear;

/// The platform name linear models report in metadata.
pub const PLATFORM: &str = "inferd_linear";

/// How margins become outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// Regression: the margin is the prediction.
    Identity,
    /// Binary classification through the logistic function.
    Logistic,
    /// Multinomial classification through softmax.
    Softmax,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Task {
    Regression,
    Classification,
}

/// Class labels, as the training library knew them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Classes {
    /// Integer labels.
    Int(Vec<i64>),
    /// Text labels.
    Text(Vec<String>),
}

impl Classes {
    fn len(&self) -> usize {
        match self {
            Self::Int(v) => v.len(),
            Self::Text(v) => v.len(),
        }
    }

    fn pick(&self, indices: &[usize]) -> Values {
        match self {
            Self::Int(v) => Values::Int(indices.iter().map(|&i| v[i]).collect()),
            Self::Text(v) => Values::Text(indices.iter().map(|&i| v[i].clone()).collect()),
        }
    }

    fn kind(&self) -> ValueKind {
        match self {
            Self::Int(_) => ValueKind::Int,
            Self::Text(_) => ValueKind::Text,
        }
    }
}

/// The JSON document, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinearFile {
    format: String,
    version: u32,
    task: Task,
    link: Link,
    n_features: usize,
    #[serde(default)]
    feature_names: Option<Vec<String>>,
    coefficients: Vec<Vec<f64>>,
    intercepts: Vec<f64>,
    #[serde(default)]
    classes: Option<Classes>,
    #[serde(default)]
    #[allow(dead_code)] // informational only
    source: Option<serde_json::Value>,
}

/// A validated linear model.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModel {
    link: Link,
    n_features: usize,
    /// K rows of `n_features`, row-major.
    coefficients: Vec<f64>,
    intercepts: Vec<f64>,
    classes: Option<Classes>,
    feature_names: Option<Vec<String>>,
}

impl LinearModel {
    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|err| LoadError::new(path, err.to_string()))?;
        Self::from_json(&bytes).map_err(|reason| LoadError::new(path, reason))
    }

    /// Parses and validates a model document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let file: LinearFile = serde_json::from_slice(bytes).map_err(|err| format!("invalid model JSON: {err}"))?;
        if file.format != "inferd.linear" {
            return Err(format!("format is '{}', expected 'inferd.linear'", file.format));
        }
        if file.version != 1 {
            return Err(format!("format version {} is not supported (this build reads version 1)", file.version));
        }
        let k = file.intercepts.len();
        if file.n_features == 0 {
            return Err("n_features must be at least 1".into());
        }
        if k == 0 || file.coefficients.len() != k {
            return Err(format!(
                "coefficients has {} rows and intercepts {} values; both must be K ≥ 1",
                file.coefficients.len(),
                k
            ));
        }
        if let Some(row) = file.coefficients.iter().position(|row| row.len() != file.n_features) {
            return Err(format!(
                "coefficients row {row} has {} values, expected n_features = {}",
                file.coefficients[row].len(),
                file.n_features
            ));
        }
        if file.coefficients.iter().flatten().chain(&file.intercepts).any(|v| !v.is_finite()) {
            return Err("coefficients and intercepts must be finite numbers".into());
        }
        if let Some(names) = &file.feature_names
            && names.len() != file.n_features
        {
            return Err(format!("feature_names has {} names, expected {}", names.len(), file.n_features));
        }
        match (file.task, file.link, &file.classes) {
            (Task::Regression, Link::Identity, None) => {}
            (Task::Regression, _, _) => return Err("a regression model has link 'identity' and no classes".into()),
            (Task::Classification, Link::Identity, _) => {
                return Err("a classification model has link 'logistic' or 'softmax'".into());
            }
            (Task::Classification, _, None) => return Err("a classification model needs 'classes'".into()),
            (Task::Classification, Link::Logistic, Some(classes)) => {
                if k != 1 || classes.len() != 2 {
                    return Err(format!(
                        "a logistic model has 1 coefficient row and 2 classes, not {k} and {}",
                        classes.len()
                    ));
                }
            }
            (Task::Classification, Link::Softmax, Some(classes)) => {
                if k < 2 || classes.len() != k {
                    return Err(format!(
                        "a softmax model has one coefficient row per class (at least 2), not {k} rows for {} classes",
                        classes.len()
                    ));
                }
            }
        }
        Ok(Self {
            link: file.link,
            n_features: file.n_features,
            coefficients: file.coefficients.concat(),
            intercepts: file.intercepts,
            classes: file.classes,
            feature_names: file.feature_names,
        })
    }

    /// Number of margins per row (K).
    fn n_margins(&self) -> usize {
        self.intercepts.len()
    }

    /// Number of probabilities per row (C): 2 for logistic, K for softmax.
    fn n_classes(&self) -> usize {
        match self.link {
            Link::Identity => 0,
            Link::Logistic => 2,
            Link::Softmax => self.n_margins(),
        }
    }

    /// What the model accepts and produces.
    pub fn schema(&self) -> TabularSchema {
        let float = |name: &str, row_shape: Vec<usize>, default: bool| OutputSpec {
            name: name.into(),
            kind: ValueKind::Float,
            row_shape,
            default,
        };
        let per_margin = if self.n_margins() == 1 { vec![] } else { vec![self.n_margins()] };
        let outputs = match &self.classes {
            None => vec![float("predictions", per_margin, true)],
            Some(classes) => vec![
                float("probabilities", vec![self.n_classes()], true),
                OutputSpec { name: "label".into(), kind: classes.kind(), row_shape: vec![], default: true },
                float("margin", per_margin, false),
            ],
        };
        TabularSchema {
            platform: PLATFORM.into(),
            n_features: self.n_features,
            feature_names: self.feature_names.clone(),
            outputs,
            accepts_non_finite: false,
        }
    }

    /// Turns margins (and probabilities, for classifiers) into the schema's outputs.
    fn outputs(&self, n_rows: usize, margins: Vec<f64>, probabilities: Vec<f64>) -> Vec<TabularOutput> {
        let k = self.n_margins();
        let margin_shape = if k == 1 { vec![n_rows] } else { vec![n_rows, k] };
        let Some(classes) = &self.classes else {
            return vec![TabularOutput {
                name: "predictions".into(),
                shape: margin_shape,
                values: Values::Float(margins),
            }];
        };
        let labels: Vec<usize> = match self.link {
            Link::Logistic => margins.iter().map(|&m| usize::from(m > 0.0)).collect(),
            _ => probabilities.chunks(self.n_classes()).map(first_argmax).collect(),
        };
        vec![
            TabularOutput {
                name: "probabilities".into(),
                shape: vec![n_rows, self.n_classes()],
                values: Values::Float(probabilities),
            },
            TabularOutput { name: "label".into(), shape: vec![n_rows], values: classes.pick(&labels) },
            TabularOutput { name: "margin".into(), shape: margin_shape, values: Values::Float(margins) },
        ]
    }
}

fn first_argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// A linear model bound to an engine and a device: what the batcher runs.
pub struct LinearPredictor {
    model: LinearModel,
    tensor: Option<TensorLinear>,
}

impl LinearPredictor {
    /// Binds `model` to `device` with the configured engine options. The native engine runs on
    /// the CPU only.
    pub fn new(model: LinearModel, device: &Device, options: EngineOptions) -> Result<Self, String> {
        let (engine, precision) = options.resolve(device)?;
        let tensor = match engine {
            Engine::Native if !device.is_cpu() => {
                return Err("the native engine runs on the CPU only; use engine = \"tensor\" on a GPU".into());
            }
            Engine::Native => None,
            Engine::Tensor => Some(TensorLinear::new(&model, device, precision).map_err(|err| err.to_string())?),
        };
        Ok(Self { model, tensor })
    }

    /// The engine in use.
    pub fn engine(&self) -> Engine {
        if self.tensor.is_some() { Engine::Tensor } else { Engine::Native }
    }
}

impl TabularModel for LinearPredictor {
    fn schema(&self) -> TabularSchema {
        self.model.schema()
    }

    fn predict(&mut self, rows: &Rows) -> Result<Vec<TabularOutput>, InferError> {
        let (margins, probabilities) = match &self.tensor {
            None => native::evaluate(&self.model, rows),
            Some(tensor) => tensor.evaluate(rows).map_err(|err| InferError::Internal(err.to_string()))?,
        };
        Ok(self.model.outputs(rows.n_rows(), margins, probabilities))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IRIS_LIKE: &str = r#"{
        "format": "inferd.linear", "version": 1, "task": "classification", "link": "softmax",
        "n_features": 2, "coefficients": [[1, 0], [0, 1], [-1, -1]], "intercepts": [0, 0, 0],
        "classes": ["a", "b", "c"]
    }"#;

    #[test]
    fn loads_a_valid_document() {
        let model = LinearModel::from_json(IRIS_LIKE.as_bytes()).unwrap();
        let schema = model.schema();
        assert_eq!(schema.n_features, 2);
        let names: Vec<&str> = schema.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["probabilities", "label", "margin"]);
        assert_eq!(schema.outputs[1].kind, ValueKind::Text);
    }

    #[test]
    fn refuses_inconsistent_documents_with_a_reason() {
        let cases = [
            (IRIS_LIKE.replace("inferd.linear", "xgboost"), "expected 'inferd.linear'"),
            (IRIS_LIKE.replace("[0, 1],", "[0],"), "row 1 has 1 values"),
            (IRIS_LIKE.replace(r#""c"]"#, r#""c", "d"]"#), "3 rows for 4 classes"),
            (IRIS_LIKE.replace("softmax", "identity"), "'logistic' or 'softmax'"),
            (IRIS_LIKE.replace(r#""version": 1"#, r#""version": 7"#), "version 7"),
            (IRIS_LIKE[..40].to_string(), "invalid model JSON"),
        ];
        for (document, expected) in cases {
            let err = LinearModel::from_json(document.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }

    #[test]
    fn native_and_tensor_engines_agree() {
        let model = LinearModel::from_json(IRIS_LIKE.as_bytes()).unwrap();
        let rows = Rows::new(3, 2, vec![1.0, 2.0, -3.0, 0.5, 0.0, 0.0]).unwrap();
        let mut native = LinearPredictor::new(model.clone(), &Device::Cpu, EngineOptions::default()).unwrap();
        let options = EngineOptions { engine: Some(Engine::Tensor), precision: None, threads: None };
        let mut tensor = LinearPredictor::new(model, &Device::Cpu, options).unwrap();
        assert_eq!(native.engine(), Engine::Native);
        assert_eq!(tensor.engine(), Engine::Tensor);
        let a = native.predict(&rows).unwrap();
        let b = tensor.predict(&rows).unwrap();
        assert_eq!(a[1].values, Values::Text(vec!["b".into(), "c".into(), "a".into()]));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.shape, y.shape);
            match (&x.values, &y.values) {
                (Values::Float(x), Values::Float(y)) => {
                    assert!(x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-12), "{x:?} vs {y:?}");
                }
                (x, y) => assert_eq!(x, y),
            }
        }
    }
}
