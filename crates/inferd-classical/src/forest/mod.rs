//! Gradient-boosted tree ensembles: XGBoost JSON and LightGBM text models in one form.
//!
//! Both loaders translate their library's trees into one [`Forest`] whose splits all read the
//! same way: a row goes left when its feature value `x < threshold`, and a missing value goes
//! the split's default way. Each loader chooses the thresholds, the missing-value rules and the
//! arithmetic ([`Arithmetic`]) so that this reading reproduces its library exactly:
//!
//! - XGBoost compares `f32(x) < split_condition` and sums leaves in `f32`; NaN is missing.
//! - LightGBM compares `x <= threshold` in `f64` (stored here as `x < next_up(threshold)`),
//!   sums in `f64`, and maps NaN and zeros per split by its missing type.
//!
//! # Outputs
//!
//! Regressors: `predictions` (the library's `predict`) and `margin` (raw score). Classifiers:
//! `probabilities` `[N, C]` and `label` (returned by default) and `margin` (`[N]` for binary,
//! `[N, C]` for multiclass). Class labels are `0..C`.

mod lightgbm;
mod native;
mod tensor;
mod xgboost;

use std::path::Path;

use inferd_core::{
    Device, InferError, OutputSpec, Rows, TabularModel, TabularOutput, TabularSchema, ValueKind, Values,
};

use crate::engine::{Engine, EngineOptions, Precision};
use crate::error::LoadError;
use native::NativeForest;
use tensor::TensorForest;

/// Deepest tree accepted. Leaf-wise growth (LightGBM, XGBoost's `lossguide`) legitimately makes
/// deep trees; thousands of levels can only be a malformed file.
const MAX_DEPTH: usize = 4096;

/// The arithmetic a forest's library predicts with, which ours reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arithmetic {
    /// Features rounded to `f32`, thresholds and sums in `f32` (XGBoost).
    F32,
    /// Everything in `f64` (LightGBM).
    F64,
}

/// How margins become the library's predictions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// Regression: `predictions = transform(margin)`, one or more targets.
    Regression(Transform),
    /// Binary classification: `p = sigmoid(scale · margin)`.
    Binary {
        /// LightGBM's `sigmoid` parameter; 1 for XGBoost.
        scale: f64,
        /// The label is `margin > 0` (XGBoost's `binary:logitraw`) instead of `p > 0.5`.
        label_from_margin: bool,
    },
    /// Multiclass classification through softmax over one margin per class.
    Multiclass {
        /// The label is the largest margin (XGBoost's `multi:softmax`) instead of the largest
        /// probability (as scikit-learn's wrappers predict).
        label_from_margin: bool,
    },
}

/// The link from margin to prediction for regressors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// The margin is the prediction.
    Identity,
    /// `exp(margin)` (Poisson, Tweedie, gamma).
    Exp,
    /// `1 / (1 + exp(-margin))` (XGBoost's `reg:logistic`, LightGBM's `cross_entropy`).
    Sigmoid,
}

/// A split or a leaf.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Node {
    /// Go to `left` when the feature value is below `threshold`, else to `right`.
    Split {
        /// Feature index.
        feature: u32,
        /// The value compared against (in the forest's arithmetic).
        threshold: f64,
        /// Where missing values go.
        default_left: bool,
        /// Whether values within 1e-35 of zero also count as missing (LightGBM's `Zero`
        /// missing type).
        zero_is_missing: bool,
        /// Node index of the left child.
        left: u32,
        /// Node index of the right child.
        right: u32,
    },
    /// A leaf's value.
    Leaf(f64),
}

/// One tree; node 0 is the root.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The margin (output group) the tree adds to.
    pub group: usize,
}

/// A tree ensemble in the form both engines evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    /// Features per row.
    pub n_features: usize,
    /// Margins per row: 1, or one per class or target.
    pub n_groups: usize,
    /// The trees, in the order the library sums them.
    pub trees: Vec<Tree>,
    /// The margin every row starts from, per group.
    pub base_margin: Vec<f64>,
    /// Predictions use the sum divided by this (LightGBM's `average_output`); 1 otherwise. The
    /// `margin` output is the undivided sum, as LightGBM's `raw_score` is.
    pub divisor: f64,
    /// The library's arithmetic.
    pub arithmetic: Arithmetic,
    /// How margins become predictions.
    pub objective: Objective,
    /// Feature names, when the file has them.
    pub feature_names: Option<Vec<String>>,
    /// `inferd_xgboost` or `inferd_lightgbm`.
    pub platform: &'static str,
}

impl Forest {
    /// Reads an XGBoost JSON model (`booster.save_model("model.json")`).
    pub fn load_xgboost(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|err| LoadError::new(path, err.to_string()))?;
        xgboost::parse(&bytes).and_then(Forest::validated).map_err(|reason| LoadError::new(path, reason))
    }

    /// Reads a LightGBM text model (`booster.save_model("model.txt")`).
    pub fn load_lightgbm(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|err| LoadError::new(path, err.to_string()))?;
        lightgbm::parse(&text).and_then(Forest::validated).map_err(|reason| LoadError::new(path, reason))
    }

    /// Checks the structure both engines rely on: children and features in range, every node
    /// reachable from the root reached exactly once (no cycles, no sharing), bounded depth,
    /// finite values. Unreachable nodes (XGBoost keeps pruned ones in its files) are ignored.
    pub fn validated(self) -> Result<Self, String> {
        if self.trees.is_empty() {
            return Err("the model has no trees".into());
        }
        if self.n_features == 0 || self.n_groups == 0 || self.base_margin.len() != self.n_groups {
            return Err("the model declares no features or outputs".into());
        }
        if self.n_features >= 1 << 30 {
            return Err(format!("the model declares {} features, more than this build handles", self.n_features));
        }
        if !self.divisor.is_finite() || self.divisor <= 0.0 || self.base_margin.iter().any(|v| !v.is_finite()) {
            return Err("the model's base score or averaging is not a finite number".into());
        }
        for (index, tree) in self.trees.iter().enumerate() {
            tree_depth(tree, self.n_features).map_err(|reason| format!("tree {index}: {reason}"))?;
            if tree.group >= self.n_groups {
                return Err(format!("tree {index} adds to output {} of {}", tree.group, self.n_groups));
            }
        }
        Ok(self)
    }

    /// What the model accepts and produces.
    pub fn schema(&self) -> TabularSchema {
        let float = |name: &str, row_shape: Vec<usize>, default: bool| OutputSpec {
            name: name.into(),
            kind: ValueKind::Float,
            row_shape,
            default,
        };
        let per_group = if self.n_groups == 1 { vec![] } else { vec![self.n_groups] };
        let outputs = match self.objective {
            Objective::Regression(_) => {
                vec![float("predictions", per_group.clone(), true), float("margin", per_group, false)]
            }
            Objective::Binary { .. } | Objective::Multiclass { .. } => vec![
                float("probabilities", vec![self.n_classes()], true),
                OutputSpec { name: "label".into(), kind: ValueKind::Int, row_shape: vec![], default: true },
                float("margin", per_group, false),
            ],
        };
        TabularSchema {
            platform: self.platform.into(),
            n_features: self.n_features,
            feature_names: self.feature_names.clone(),
            outputs,
            accepts_non_finite: true,
        }
    }

    fn n_classes(&self) -> usize {
        match self.objective {
            Objective::Binary { .. } => 2,
            _ => self.n_groups,
        }
    }

    /// Turns margins `[N × groups]` into the schema's outputs, in the forest's arithmetic.
    fn outputs(&self, n_rows: usize, margins: Vec<f64>) -> Vec<TabularOutput> {
        let k = self.n_groups;
        let group_shape = if k == 1 { vec![n_rows] } else { vec![n_rows, k] };
        let round = |v: f64| match self.arithmetic {
            Arithmetic::F32 => f64::from(v as f32),
            Arithmetic::F64 => v,
        };
        // What the transforms read: the sum, averaged in random-forest mode.
        let averaged: Vec<f64> = if self.divisor == 1.0 {
            margins.clone()
        } else {
            margins.iter().map(|&m| round(m / self.divisor)).collect()
        };
        let sigmoid = |m: f64| match self.arithmetic {
            // XGBoost caps the exponent at 88.7, so tiny probabilities stay above zero.
            Arithmetic::F32 => f64::from(1.0f32 / (1.0f32 + (-(m as f32)).min(88.7).exp())),
            Arithmetic::F64 => 1.0 / (1.0 + (-m).exp()),
        };
        let float = |name: &str, shape: Vec<usize>, values: Vec<f64>| TabularOutput {
            name: name.into(),
            shape,
            values: Values::Float(values),
        };
        match self.objective {
            Objective::Regression(transform) => {
                let predictions = averaged
                    .iter()
                    .map(|&m| match transform {
                        Transform::Identity => m,
                        Transform::Exp => match self.arithmetic {
                            Arithmetic::F32 => f64::from((m as f32).exp()),
                            Arithmetic::F64 => m.exp(),
                        },
                        Transform::Sigmoid => sigmoid(m),
                    })
                    .collect();
                vec![float("predictions", group_shape.clone(), predictions), float("margin", group_shape, margins)]
            }
            Objective::Binary { scale, label_from_margin } => {
                let mut probabilities = Vec::with_capacity(2 * n_rows);
                let mut labels = Vec::with_capacity(n_rows);
                for &m in &averaged {
                    let p = sigmoid(round(scale * m));
                    probabilities.extend([round(1.0 - p), p]);
                    labels.push(i64::from(if label_from_margin { m > 0.0 } else { p > 0.5 }));
                }
                vec![
                    float("probabilities", vec![n_rows, 2], probabilities),
                    TabularOutput { name: "label".into(), shape: vec![n_rows], values: Values::Int(labels) },
                    float("margin", group_shape, margins),
                ]
            }
            Objective::Multiclass { label_from_margin } => {
                let mut probabilities = Vec::with_capacity(margins.len());
                let mut labels = Vec::with_capacity(n_rows);
                for row in averaged.chunks_exact(k) {
                    let start = probabilities.len();
                    match self.arithmetic {
                        Arithmetic::F32 => softmax_f32(row, &mut probabilities),
                        Arithmetic::F64 => softmax_f64(row, &mut probabilities),
                    }
                    let decided_by = if label_from_margin { row } else { &probabilities[start..] };
                    labels.push(first_argmax(decided_by) as i64);
                }
                vec![
                    float("probabilities", vec![n_rows, k], probabilities),
                    TabularOutput { name: "label".into(), shape: vec![n_rows], values: Values::Int(labels) },
                    float("margin", group_shape, margins),
                ]
            }
        }
    }
}

/// Softmax as XGBoost computes it: `f32` exponentials shifted by the maximum, summed in `f64`,
/// divided in `f32`.
fn softmax_f32(row: &[f64], out: &mut Vec<f64>) {
    let row: Vec<f32> = row.iter().map(|&m| m as f32).collect();
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&m| (m - max).exp()).collect();
    let total = exps.iter().map(|&e| f64::from(e)).sum::<f64>() as f32;
    out.extend(exps.iter().map(|&e| f64::from(e / total)));
}

/// Softmax as LightGBM computes it: in `f64`, shifted by the maximum.
fn softmax_f64(row: &[f64], out: &mut Vec<f64>) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = row.iter().map(|&m| (m - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    out.extend(exps.iter().map(|&e| e / total));
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

/// The number of splits on the tree's longest path, after checking its structure.
fn tree_depth(tree: &Tree, n_features: usize) -> Result<usize, String> {
    let nodes = &tree.nodes;
    if nodes.is_empty() {
        return Err("no nodes".into());
    }
    let mut seen = vec![false; nodes.len()];
    let mut deepest = 0;
    let mut stack = vec![(0usize, 0usize)];
    while let Some((index, depth)) = stack.pop() {
        let node = nodes.get(index).ok_or_else(|| format!("child {index} is out of range"))?;
        if std::mem::replace(&mut seen[index], true) {
            return Err(format!("node {index} is reached twice"));
        }
        match *node {
            Node::Leaf(value) if !value.is_finite() => return Err(format!("leaf {index} is not a finite number")),
            Node::Leaf(_) => deepest = deepest.max(depth),
            Node::Split { feature, threshold, left, right, .. } => {
                if feature as usize >= n_features {
                    return Err(format!("node {index} splits on feature {feature}, but the model has {n_features}"));
                }
                if threshold.is_nan() {
                    return Err(format!("node {index} has a NaN threshold"));
                }
                if depth >= MAX_DEPTH {
                    return Err(format!("deeper than {MAX_DEPTH} levels"));
                }
                stack.push((left as usize, depth + 1));
                stack.push((right as usize, depth + 1));
            }
        }
    }
    Ok(deepest)
}

/// A forest bound to an engine and a device: what the batcher runs.
pub struct ForestPredictor {
    forest: Forest,
    engine: ForestEngine,
}

enum ForestEngine {
    Native(NativeForest),
    Tensor(TensorForest),
}

impl ForestPredictor {
    /// Binds `forest` to `device` with the configured engine options. The native engine runs
    /// on the CPU only.
    /// LightGBM forests default to `f64` tensors even on a GPU: their thresholds are `f64`, and
    /// `f32` could send a row the other way at a split.
    pub fn new(forest: Forest, device: &Device, options: EngineOptions) -> Result<Self, String> {
        // A Forest is plain data: whoever built it, check it before the engines rely on it.
        let forest = forest.validated()?;
        let (engine, mut precision) = options.resolve(device)?;
        if options.precision.is_none() && forest.arithmetic == Arithmetic::F64 {
            precision = Precision::F64;
        }
        let engine = match engine {
            Engine::Native if !device.is_cpu() => {
                return Err("the native engine runs on the CPU only; use engine = \"tensor\" on a GPU".into());
            }
            Engine::Native => ForestEngine::Native(NativeForest::new(&forest, options.threads)?),
            Engine::Tensor => ForestEngine::Tensor(TensorForest::new(&forest, device, precision)?),
        };
        Ok(Self { forest, engine })
    }

    /// The engine in use.
    pub fn engine(&self) -> Engine {
        match self.engine {
            ForestEngine::Native(_) => Engine::Native,
            ForestEngine::Tensor(_) => Engine::Tensor,
        }
    }

    /// The forest.
    pub fn forest(&self) -> &Forest {
        &self.forest
    }

    /// Margins `[N × groups]` for `rows`, without the objective's transform.
    pub fn margins(&self, rows: &Rows) -> Result<Vec<f64>, InferError> {
        match &self.engine {
            ForestEngine::Native(native) => Ok(native.margins(rows)),
            ForestEngine::Tensor(tensor) => tensor.margins(rows).map_err(|err| InferError::Internal(err.to_string())),
        }
    }
}

impl TabularModel for ForestPredictor {
    fn schema(&self) -> TabularSchema {
        self.forest.schema()
    }

    fn predict(&mut self, rows: &Rows) -> Result<Vec<TabularOutput>, InferError> {
        let margins = self.margins(rows)?;
        Ok(self.forest.outputs(rows.n_rows(), margins))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An XGBoost stump on feature 1: `x < 0.5` → -1, else +1; missing goes right.
    const XGB_STUMP: &str = r#"{"learner": {
        "feature_names": [], "feature_types": [],
        "gradient_booster": {"name": "gbtree", "model": {
            "tree_info": [0],
            "trees": [{"left_children": [1, -1, -1], "right_children": [2, -1, -1],
                       "split_indices": [1, 0, 0], "split_conditions": [0.5, -1.0, 1.0],
                       "default_left": [0, 0, 0], "split_type": [0, 0, 0],
                       "tree_param": {"num_nodes": "3", "size_leaf_vector": "1"}}]}},
        "learner_model_param": {"base_score": "5E-1", "num_class": "0", "num_feature": "2", "num_target": "1"},
        "objective": {"name": "binary:logistic"}}, "version": [3, 0, 0]}"#;

    /// A LightGBM stump on feature 0: `x <= 2` → 10, else 20; missing type and default from
    /// `decision_type`.
    fn lgb_stump(decision_type: u8) -> String {
        format!(
            "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\n\
             objective=regression\nfeature_names=a b\n\nTree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature=0\n\
             threshold=2\ndecision_type={decision_type}\nleft_child=-1\nright_child=-2\nleaf_value=10 20\n\
             is_linear=0\nshrinkage=1\n\n\nend of trees\n"
        )
    }

    fn margins(forest: &Forest, values: &[f64]) -> Vec<Vec<f64>> {
        let rows = Rows::new(values.len(), 2, values.iter().flat_map(|&v| [v, v]).collect()).unwrap();
        let engines = [
            EngineOptions { engine: Some(Engine::Native), precision: None, threads: None },
            EngineOptions { engine: Some(Engine::Tensor), precision: Some(Precision::F64), threads: None },
        ];
        engines
            .into_iter()
            .map(|options| ForestPredictor::new(forest.clone(), &Device::Cpu, options).unwrap().margins(&rows).unwrap())
            .collect()
    }

    #[test]
    fn xgboost_splits_strictly_below_and_sends_missing_by_default() {
        let forest = xgboost::parse(XGB_STUMP.as_bytes()).and_then(Forest::validated).unwrap();
        assert_eq!(forest.base_margin, vec![0.0], "base_score 0.5 is margin 0");
        for margins in margins(&forest, &[0.25, 0.5, 0.75, f64::NAN, -0.0]) {
            assert_eq!(margins, vec![-1.0, 1.0, 1.0, 1.0, -1.0]);
        }
    }

    #[test]
    fn xgboost_inputs_beyond_f32_pass_every_threshold_like_infinity() {
        // Missing values go left here, so a value read as missing would show as -1.
        let document = XGB_STUMP.replace(r#""default_left": [0, 0, 0]"#, r#""default_left": [1, 0, 0]"#);
        let forest = xgboost::parse(document.as_bytes()).and_then(Forest::validated).unwrap();
        for margins in margins(&forest, &[1e300, -1e300, f64::MAX, f64::NAN]) {
            assert_eq!(margins, vec![1.0, -1.0, 1.0, -1.0]);
        }
    }

    #[test]
    fn lightgbm_reads_every_missing_type() {
        // The threshold itself goes left (`<=`), as in LightGBM.
        let cases: [(u8, [f64; 4]); 4] = [
            (2 | 8, [10.0, 10.0, 20.0, 10.0]), // NaN type, default left: NaN left, 0 compared
            (8, [10.0, 10.0, 20.0, 20.0]),     // NaN type, default right
            (4, [10.0, 20.0, 20.0, 20.0]),     // Zero type, default right: 0 and NaN go right
            (0, [10.0, 10.0, 20.0, 10.0]),     // None: NaN is read as 0, which goes left
        ];
        for (decision_type, expected) in cases {
            let forest = lightgbm::parse(&lgb_stump(decision_type)).and_then(Forest::validated).unwrap();
            for margins in margins(&forest, &[2.0, 0.0, 2.0000000000000004, f64::NAN]) {
                assert_eq!(margins, expected, "decision_type {decision_type}");
            }
        }
    }

    #[test]
    fn lightgbm_reads_values_within_its_zero_threshold_as_zero() {
        // `x <= 0` goes left; 1e-36 and kZeroThreshold (1e-35 as an f32) itself are zero to
        // LightGBM, 2e-35 is not.
        let stump = lgb_stump(8).replace("threshold=2", "threshold=0");
        let forest = lightgbm::parse(&stump).and_then(Forest::validated).unwrap();
        for margins in margins(&forest, &[1e-36, -1e-36, 1e-35f32 as f64, 2e-35]) {
            assert_eq!(margins, vec![10.0, 10.0, 10.0, 20.0]);
        }
    }

    #[test]
    fn unreachable_nodes_are_ignored_as_xgboost_ignores_pruned_ones() {
        let pruned = XGB_STUMP
            .replace("[1, -1, -1]", "[1, -1, -1, -1]")
            .replace("[2, -1, -1]", "[2, -1, -1, -1]")
            .replace("[1, 0, 0]", "[1, 0, 0, 0]")
            .replace("[0.5, -1.0, 1.0]", "[0.5, -1.0, 1.0, 99.0]")
            .replace("[0, 0, 0], \"split_type\": [0, 0, 0]", "[0, 0, 0, 0], \"split_type\": [0, 0, 0, 0]");
        let forest = xgboost::parse(pruned.as_bytes()).and_then(Forest::validated).unwrap();
        for margins in margins(&forest, &[0.25, 0.75]) {
            assert_eq!(margins, vec![-1.0, 1.0]);
        }
    }

    #[test]
    fn a_hand_built_forest_is_checked_before_it_is_served() {
        let mut forest = xgboost::parse(XGB_STUMP.as_bytes()).unwrap();
        forest.trees[0].nodes[0] =
            Node::Split { feature: 7, threshold: 0.5, default_left: true, zero_is_missing: false, left: 1, right: 2 };
        let err = ForestPredictor::new(forest, &Device::Cpu, EngineOptions::default()).err().unwrap();
        assert!(err.contains("feature 7"), "{err}");
    }

    #[test]
    fn malformed_models_are_refused_with_a_reason() {
        let xgb_cases = [
            (XGB_STUMP[..200].to_string(), "not an XGBoost JSON model"),
            (XGB_STUMP.replace("binary:logistic", "rank:pairwise"), "objective 'rank:pairwise' is not supported"),
            (XGB_STUMP.replace("\"split_type\": [0, 0, 0]", "\"split_type\": [1, 0, 0]"), "categorical"),
            (XGB_STUMP.replace("[2, -1, -1]", "[7, -1, -1]"), "out of range"),
            (XGB_STUMP.replace("\"split_indices\": [1, 0, 0]", "\"split_indices\": [5, 0, 0]"), "feature 5"),
            (XGB_STUMP.replace("[1, -1, -1]", "[0, -1, -1]"), "reached twice"),
        ];
        for (document, expected) in xgb_cases {
            let err = xgboost::parse(document.as_bytes()).and_then(Forest::validated).unwrap_err();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
        let stump = lgb_stump(8);
        let lgb_cases = [
            (stump.replace("end of trees\n", ""), "truncated"),
            (stump.replace("decision_type=8", "decision_type=9"), "categorical on feature 'a'"),
            (stump.replace("objective=regression", "objective=lambdarank"), "'lambdarank' is not supported"),
            (stump.replace("leaf_value=10 20", "leaf_value=10"), "'leaf_value' has 1 values"),
            (stump.replace("is_linear=0", "is_linear=1"), "linear trees"),
            ("hello".to_string(), "not a LightGBM text model"),
            (stump.replace("shrinkage=1", "shrinkage=1\nnum_leaves=3"), "'num_leaves' appears twice"),
            (stump.replace("decision_type=8", "decision_type=12"), "unknown missing type 3"),
            (stump.replace("left_child=-1", "left_child=-3"), "child -3 is out of range"),
            (stump.replace("left_child=-1", "left_child=1"), "child 1 is out of range"),
        ];
        for (text, expected) in lgb_cases {
            let err = lightgbm::parse(&text).and_then(Forest::validated).unwrap_err();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }
}
