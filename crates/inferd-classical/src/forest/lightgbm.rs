//! LightGBM's text model format (`booster.save_model("model.txt")`).
//!
//! Supported: objectives `regression` (l2), `regression_l1`, `huber`, `fair`, `quantile`,
//! `mape` (identity), `poisson`, `gamma`, `tweedie` (exp), `cross_entropy` (sigmoid),
//! `binary` (with its `sigmoid` scale), `multiclass` (softmax); `average_output` (random-forest
//! mode); every missing-value type of `decision_type`. Categorical splits, linear trees and
//! ranking or one-vs-all objectives are refused with a clear error.
//!
//! A split `x <= threshold` becomes `x < next_up(threshold)`, which is the same test for every
//! number, and LightGBM's missing-value rules become a default direction:
//! - type `None`: NaN is read as 0, so it goes where 0 goes;
//! - type `Zero`: NaN and values within 1e-35 of zero take the default direction;
//! - type `NaN`: NaN takes the default direction.

use std::collections::HashMap;

use super::{Arithmetic, Forest, Node, Objective, Transform, Tree};

const CATEGORICAL: u8 = 1;
const DEFAULT_LEFT: u8 = 2;
const MISSING_NONE: u8 = 0;
const MISSING_ZERO: u8 = 1;
const MISSING_NAN: u8 = 2;

/// `key=value` lines of one section; a line without `=` is a flag with an empty value. A key
/// given twice is an error: taking either value could silently load the wrong model.
fn fields(lines: &[&str]) -> Result<HashMap<String, String>, String> {
    let mut fields = HashMap::new();
    for line in lines.iter().map(|line| line.trim()).filter(|line| !line.is_empty()) {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        if fields.insert(key.trim().to_string(), value.trim().to_string()).is_some() {
            return Err(format!("'{}' appears twice in one section", key.trim()));
        }
    }
    Ok(fields)
}

fn field<'a>(fields: &'a HashMap<String, String>, key: &str) -> Result<&'a str, String> {
    fields.get(key).map(String::as_str).ok_or_else(|| format!("missing '{key}'"))
}

fn numbers<T: std::str::FromStr>(fields: &HashMap<String, String>, key: &str, count: usize) -> Result<Vec<T>, String> {
    let text = field(fields, key)?;
    let values: Vec<T> = text
        .split_whitespace()
        .map(|part| part.parse::<T>().map_err(|_| format!("'{key}' holds '{part}', not a number")))
        .collect::<Result<_, _>>()?;
    if values.len() != count {
        return Err(format!("'{key}' has {} values, expected {count}", values.len()));
    }
    Ok(values)
}

fn count(fields: &HashMap<String, String>, key: &str) -> Result<usize, String> {
    let text = field(fields, key)?;
    text.parse().map_err(|_| format!("'{key}' is '{text}', not a count"))
}

pub(super) fn parse(text: &str) -> Result<Forest, String> {
    let lines: Vec<&str> = text.lines().collect();
    if lines.first().map(|line| line.trim()) != Some("tree") {
        return Err("not a LightGBM text model (it does not start with 'tree')".into());
    }
    let tree_starts: Vec<usize> =
        lines.iter().enumerate().filter(|(_, line)| line.trim_start().starts_with("Tree=")).map(|(i, _)| i).collect();
    let end = lines
        .iter()
        .position(|line| line.trim() == "end of trees")
        .ok_or("the model is truncated: no 'end of trees'")?;
    if tree_starts.last().is_some_and(|&start| start > end) {
        return Err("a tree follows 'end of trees'".into());
    }
    let header = fields(&lines[..tree_starts.first().copied().unwrap_or(end)])?;

    let n_features = count(&header, "max_feature_idx")?.checked_add(1).ok_or("max_feature_idx is too large")?;
    let per_iteration = count(&header, "num_tree_per_iteration")?;
    let num_class = count(&header, "num_class")?;
    let objective_line = header.get("objective").map(String::as_str).unwrap_or("regression");
    let objective = parse_objective(objective_line, num_class)?;
    let n_groups = match objective {
        Objective::Multiclass { .. } => num_class,
        _ => 1,
    };
    if per_iteration != n_groups {
        return Err(format!("num_tree_per_iteration is {per_iteration} for {n_groups} outputs"));
    }
    let feature_names: Option<Vec<String>> = header
        .get("feature_names")
        .map(|names| names.split_whitespace().map(str::to_string).collect())
        .filter(|names: &Vec<String>| names.len() == n_features);

    let mut trees = Vec::with_capacity(tree_starts.len());
    for (index, &start) in tree_starts.iter().enumerate() {
        let stop = tree_starts.get(index + 1).copied().unwrap_or(end).min(end);
        let block =
            fields(&lines[start + 1..stop.max(start + 1)]).map_err(|reason| format!("tree {index}: {reason}"))?;
        let nodes =
            convert_tree(&block, feature_names.as_deref()).map_err(|reason| format!("tree {index}: {reason}"))?;
        trees.push(Tree { nodes, group: index % per_iteration });
    }
    if trees.len() % per_iteration != 0 {
        return Err(format!("{} trees is not a whole number of iterations of {per_iteration}", trees.len()));
    }
    let divisor = if header.contains_key("average_output") { (trees.len() / per_iteration) as f64 } else { 1.0 };
    Ok(Forest {
        n_features,
        n_groups,
        trees,
        base_margin: vec![0.0; n_groups],
        divisor,
        arithmetic: Arithmetic::F64,
        objective,
        feature_names,
        platform: "inferd_lightgbm",
    })
}

fn parse_objective(line: &str, num_class: usize) -> Result<Objective, String> {
    let mut parts = line.split_whitespace();
    let name = parts.next().unwrap_or("regression");
    let options: HashMap<&str, &str> = parts.filter_map(|part| part.split_once(':')).collect();
    if line.split_whitespace().any(|part| part == "sqrt") {
        return Err("the 'sqrt' regression option is not supported".into());
    }
    match name {
        "regression"
        | "regression_l2"
        | "l2"
        | "mean_squared_error"
        | "mse"
        | "regression_l1"
        | "l1"
        | "mean_absolute_error"
        | "mae"
        | "huber"
        | "fair"
        | "quantile"
        | "mape" => Ok(Objective::Regression(Transform::Identity)),
        "poisson" | "gamma" | "tweedie" => Ok(Objective::Regression(Transform::Exp)),
        "cross_entropy" | "xentropy" => Ok(Objective::Regression(Transform::Sigmoid)),
        "binary" => {
            let scale = match options.get("sigmoid") {
                Some(text) => text.parse::<f64>().map_err(|_| format!("sigmoid '{text}' is not a number"))?,
                None => 1.0,
            };
            Ok(Objective::Binary { scale, label_from_margin: false })
        }
        "multiclass" | "softmax" if num_class >= 2 => Ok(Objective::Multiclass { label_from_margin: false }),
        other => Err(format!("objective '{other}' is not supported")),
    }
}

fn convert_tree(block: &HashMap<String, String>, feature_names: Option<&[String]>) -> Result<Vec<Node>, String> {
    if block.get("is_linear").is_some_and(|flag| flag != "0") {
        return Err("linear trees are not supported".into());
    }
    let leaves = count(block, "num_leaves")?;
    let leaf_values: Vec<f64> = numbers(block, "leaf_value", leaves)?;
    if leaves == 0 {
        return Err("num_leaves is 0".into());
    }
    if leaves == 1 {
        return Ok(vec![Node::Leaf(leaf_values[0])]);
    }
    let splits = leaves - 1;
    let features: Vec<u32> = numbers(block, "split_feature", splits)?;
    let thresholds: Vec<f64> = numbers(block, "threshold", splits)?;
    let decision_types: Vec<u8> = numbers(block, "decision_type", splits)?;
    let left: Vec<i64> = numbers(block, "left_child", splits)?;
    let right: Vec<i64> = numbers(block, "right_child", splits)?;
    // Splits keep their indices; leaf j (written as -(j + 1)) becomes node splits + j.
    let child = |value: i64| -> Result<u32, String> {
        let node = match value {
            0.. => usize::try_from(value).ok().filter(|&split| split < splits),
            _ => usize::try_from(-(value + 1)).ok().filter(|&leaf| leaf < leaves).map(|leaf| splits + leaf),
        };
        node.and_then(|node| u32::try_from(node).ok()).ok_or_else(|| format!("child {value} is out of range"))
    };
    let mut nodes = Vec::with_capacity(splits + leaves);
    for i in 0..splits {
        let decision = decision_types[i];
        if decision & CATEGORICAL != 0 {
            let feature = features[i] as usize;
            let name = feature_names
                .and_then(|names| names.get(feature))
                .map_or_else(|| format!("#{feature}"), |n| format!("'{n}'"));
            return Err(format!("split {i} is categorical on feature {name}; categorical splits are not supported"));
        }
        let threshold = thresholds[i];
        let (default_left, zero_is_missing) = match (decision >> 2) & 3 {
            MISSING_NONE => (0.0 <= threshold, false), // NaN is read as 0 and compared like it
            MISSING_ZERO => (decision & DEFAULT_LEFT != 0, true),
            MISSING_NAN => (decision & DEFAULT_LEFT != 0, false),
            other => return Err(format!("split {i} has unknown missing type {other}")),
        };
        nodes.push(Node::Split {
            feature: features[i],
            threshold: threshold.next_up(),
            default_left,
            zero_is_missing,
            left: child(left[i])?,
            right: child(right[i])?,
        });
    }
    nodes.extend(leaf_values.into_iter().map(Node::Leaf));
    Ok(nodes)
}
