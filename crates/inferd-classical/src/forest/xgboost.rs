//! XGBoost's JSON model format (`booster.save_model("model.json")`, XGBoost 1.0 to 3.x).
//!
//! Supported: the `gbtree` and `dart` boosters; objectives `reg:squarederror`,
//! `reg:squaredlogerror`, `reg:pseudohubererror`, `reg:absoluteerror`, `reg:logistic`,
//! `binary:logistic`, `binary:logitraw`, `multi:softprob`, `multi:softmax`, `count:poisson`,
//! `reg:tweedie`, `reg:gamma`; `base_score` as a scalar or (XGBoost 2+) one value per output.
//! Categorical splits and vector-leaf (multi-output) trees are refused with a clear error.

use serde::Deserialize;

use super::{Arithmetic, Forest, Node, Objective, Transform, Tree};

#[derive(Deserialize)]
struct Document {
    learner: Learner,
}

#[derive(Deserialize)]
struct Learner {
    #[serde(default)]
    feature_names: Vec<String>,
    #[serde(default)]
    feature_types: Vec<String>,
    gradient_booster: Booster,
    learner_model_param: ModelParam,
    objective: ObjectiveJson,
}

#[derive(Deserialize)]
struct ModelParam {
    base_score: String,
    #[serde(default)]
    num_class: Option<String>,
    num_feature: String,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct ObjectiveJson {
    name: String,
}

#[derive(Deserialize)]
struct Booster {
    name: String,
    #[serde(default)]
    model: Option<GbtreeModel>,
    /// DART wraps a gbtree.
    #[serde(default)]
    gbtree: Option<Box<Booster>>,
    #[serde(default)]
    weight_drop: Option<Vec<f64>>,
}

#[derive(Deserialize)]
struct GbtreeModel {
    trees: Vec<TreeJson>,
    tree_info: Vec<usize>,
}

#[derive(Deserialize)]
struct TreeJson {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    split_conditions: Vec<f64>,
    default_left: Vec<Flag>,
    #[serde(default)]
    split_type: Vec<i64>,
    tree_param: TreeParam,
}

#[derive(Deserialize)]
struct TreeParam {
    #[serde(default)]
    size_leaf_vector: Option<String>,
}

/// XGBoost wrote `default_left` as booleans in some versions and 0/1 in others.
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Int(i64),
}

impl Flag {
    fn is_set(self) -> bool {
        match self {
            Self::Bool(flag) => flag,
            Self::Int(flag) => flag != 0,
        }
    }
}

fn parse_count(text: &str, what: &str) -> Result<usize, String> {
    text.trim().parse::<usize>().map_err(|_| format!("{what} is '{text}', not a count"))
}

/// `base_score` is a number in a string ("5E-1"), or from XGBoost 2 a list ("[5E-1,2E-1]").
fn parse_base_score(text: &str) -> Result<Vec<f64>, String> {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(|part| part.trim().parse::<f64>().map_err(|_| format!("base_score '{text}' is not a number or list")))
        .collect()
}

pub(super) fn parse(bytes: &[u8]) -> Result<Forest, String> {
    let document: Document =
        serde_json::from_slice(bytes).map_err(|err| format!("not an XGBoost JSON model: {err}"))?;
    let learner = document.learner;
    let n_features = parse_count(&learner.learner_model_param.num_feature, "num_feature")?;
    let num_class = match &learner.learner_model_param.num_class {
        Some(text) => parse_count(text, "num_class")?,
        None => 0,
    };
    let num_target = match &learner.learner_model_param.num_target {
        Some(text) => parse_count(text, "num_target")?.max(1),
        None => 1,
    };
    let objective_name = learner.objective.name.as_str();
    let (objective, n_groups) = match objective_name {
        "reg:squarederror" | "reg:squaredlogerror" | "reg:pseudohubererror" | "reg:absoluteerror" | "reg:linear" => {
            (Objective::Regression(Transform::Identity), num_target)
        }
        "reg:logistic" => (Objective::Regression(Transform::Sigmoid), num_target),
        "count:poisson" | "reg:tweedie" | "reg:gamma" => (Objective::Regression(Transform::Exp), num_target),
        "binary:logistic" => (Objective::Binary { scale: 1.0, label_from_margin: false }, 1),
        "binary:logitraw" => (Objective::Binary { scale: 1.0, label_from_margin: true }, 1),
        "multi:softprob" if num_class >= 2 => (Objective::Multiclass { label_from_margin: false }, num_class),
        "multi:softmax" if num_class >= 2 => (Objective::Multiclass { label_from_margin: true }, num_class),
        other => return Err(format!("objective '{other}' is not supported")),
    };
    let base_score = parse_base_score(&learner.learner_model_param.base_score)?;
    let base_score: Vec<f64> = match base_score.as_slice() {
        [single] => vec![*single; n_groups],
        several if several.len() == n_groups => several.to_vec(),
        several => return Err(format!("base_score has {} values for {n_groups} outputs", several.len())),
    };
    // base_score is given in prediction space; the margin starts from its inverse link,
    // computed in f32 as XGBoost does.
    let base_margin = base_score
        .iter()
        .map(|&score| {
            let score = score as f32;
            let margin = match objective {
                Objective::Regression(Transform::Sigmoid) | Objective::Binary { label_from_margin: false, .. } => {
                    if score.is_nan() || !(0.0..=1.0).contains(&score) {
                        return Err(format!("base_score {score} is not a probability"));
                    }
                    // XGBoost 3.1+ accepts 0 and 1, held just inside (0, 1).
                    let score = score.clamp(1e-6, 1.0 - 1e-6);
                    -(1.0f32 / score - 1.0f32).ln()
                }
                Objective::Regression(Transform::Exp) => {
                    if score.is_nan() || score <= 0.0 {
                        return Err(format!("base_score {score} must be positive"));
                    }
                    score.ln()
                }
                _ => score,
            };
            Ok(f64::from(margin))
        })
        .collect::<Result<Vec<f64>, String>>()?;

    let (model, weights) = match learner.gradient_booster.name.as_str() {
        "gbtree" => (learner.gradient_booster.model, None),
        "dart" => {
            let inner = learner.gradient_booster.gbtree.ok_or("a dart model without its gbtree")?;
            (inner.model, learner.gradient_booster.weight_drop)
        }
        "gblinear" => return Err("the gblinear booster is not supported (export it as a linear model)".into()),
        other => return Err(format!("booster '{other}' is not supported")),
    };
    let model = model.ok_or("the booster has no trees")?;
    if model.tree_info.len() != model.trees.len() {
        return Err(format!("tree_info has {} entries for {} trees", model.tree_info.len(), model.trees.len()));
    }
    if let Some(weights) = &weights
        && weights.len() != model.trees.len()
    {
        return Err(format!("weight_drop has {} weights for {} trees", weights.len(), model.trees.len()));
    }
    let categorical_features: Vec<usize> =
        learner.feature_types.iter().enumerate().filter(|(_, kind)| kind.as_str() == "c").map(|(i, _)| i).collect();

    let mut trees = Vec::with_capacity(model.trees.len());
    for (index, (tree, &group)) in model.trees.iter().zip(&model.tree_info).enumerate() {
        let mut nodes = convert_tree(tree, &learner.feature_names, &categorical_features)
            .map_err(|reason| format!("tree {index}: {reason}"))?;
        if let Some(weights) = &weights {
            apply_dart_weight(&mut nodes, weights[index], base_margin[0])
                .map_err(|reason| format!("tree {index}: {reason}"))?;
        }
        trees.push(Tree { nodes, group });
    }
    let feature_names = (learner.feature_names.len() == n_features).then_some(learner.feature_names);
    Ok(Forest {
        n_features,
        n_groups,
        trees,
        base_margin,
        divisor: 1.0,
        arithmetic: Arithmetic::F32,
        objective,
        feature_names,
        platform: "inferd_xgboost",
    })
}

/// Folds a DART tree weight into the leaves, rounding as XGBoost's DART prediction does: each
/// tree is predicted on top of the first output's base margin, the base taken away again, and
/// the difference scaled by the weight, all in `f32`.
fn apply_dart_weight(nodes: &mut [Node], weight: f64, base: f64) -> Result<(), String> {
    if !weight.is_finite() {
        return Err(format!("DART weight {weight} is not a finite number"));
    }
    let (weight, base) = (weight as f32, base as f32);
    for node in nodes {
        if let Node::Leaf(value) = node {
            *value = f64::from((base + *value as f32 - base) * weight);
        }
    }
    Ok(())
}

fn convert_tree(tree: &TreeJson, feature_names: &[String], categorical: &[usize]) -> Result<Vec<Node>, String> {
    if let Some(size) = &tree.tree_param.size_leaf_vector
        && parse_count(size, "size_leaf_vector")? > 1
    {
        return Err("vector-leaf (multi_output_tree) trees are not supported".into());
    }
    let n = tree.left_children.len();
    let lengths =
        [tree.right_children.len(), tree.split_indices.len(), tree.split_conditions.len(), tree.default_left.len()];
    if lengths.iter().any(|&len| len != n) || (!tree.split_type.is_empty() && tree.split_type.len() != n) {
        return Err("node arrays have different lengths".into());
    }
    let index = |child: i64| u32::try_from(child).ok().filter(|&c| (c as usize) < n);
    (0..n)
        .map(|i| {
            if tree.left_children[i] == -1 {
                // Leaf values are f32 in XGBoost, like thresholds.
                return Ok(Node::Leaf(f64::from(tree.split_conditions[i] as f32)));
            }
            let feature =
                usize::try_from(tree.split_indices[i]).map_err(|_| format!("node {i} has a negative feature"))?;
            if tree.split_type.get(i).is_some_and(|&kind| kind != 0) || categorical.contains(&feature) {
                let name = feature_names.get(feature).map_or_else(|| format!("#{feature}"), |name| format!("'{name}'"));
                return Err(format!(
                    "node {i} is a categorical split on feature {name}; categorical splits are not supported"
                ));
            }
            let (Some(left), Some(right)) = (index(tree.left_children[i]), index(tree.right_children[i])) else {
                return Err(format!("node {i} has a child out of range"));
            };
            let feature = u32::try_from(feature).map_err(|_| format!("node {i} splits on feature {feature}"))?;
            Ok(Node::Split {
                feature,
                // Thresholds are f32 in XGBoost; the file holds their decimal form.
                threshold: f64::from(tree.split_conditions[i] as f32),
                default_left: tree.default_left[i].is_set(),
                zero_is_missing: false,
                left,
                right,
            })
        })
        .collect()
}
