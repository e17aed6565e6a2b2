//! Golden tests: every bundled linear model reproduces scikit-learn's own outputs for its
//! held-out rows (`tests/golden/*.json`, written by `models/reference/make_linear.py`), on every
//! engine and precision.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use inferd_classical::{Engine, EngineOptions, LinearModel, LinearPredictor, Precision};
use inferd_core::{Device, Rows, TabularModel, Values};
use serde_json::Value;

const MODELS: [&str; 3] = ["diabetes-linear", "breast-cancer-logistic", "iris-logistic"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn flat(value: &Value) -> Vec<f64> {
    match value {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not a number: {other}"),
    }
}

/// Within `tolerance`, absolutely or relative to the reference.
fn close(ours: f64, reference: f64, tolerance: f64) -> bool {
    let diff = (ours - reference).abs();
    diff <= tolerance || diff <= tolerance * reference.abs()
}

/// Checks one model on one engine; returns the largest absolute difference seen.
fn check(name: &str, options: EngineOptions, tolerance: f64) -> f64 {
    let model = LinearModel::load(&repo().join("models").join(name).join("model.json")).unwrap();
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/golden").join(format!("{name}.json"))).unwrap(),
    )
    .unwrap();
    let inputs = golden["inputs"].as_array().unwrap();
    let n_features = inputs[0].as_array().unwrap().len();
    let rows = Rows::new(inputs.len(), n_features, flat(&golden["inputs"])).unwrap();
    let mut predictor = LinearPredictor::new(model, &Device::Cpu, options).unwrap();
    let outputs = predictor.predict(&rows).unwrap();

    let expected = golden["outputs"].as_object().unwrap();
    assert_eq!(outputs.len(), expected.len(), "{name}: every reference output is produced");
    let mut worst: f64 = 0.0;
    for output in &outputs {
        let reference = &expected[&output.name];
        match &output.values {
            Values::Float(ours) => {
                let reference = flat(reference);
                assert_eq!(ours.len(), reference.len(), "{name}.{}", output.name);
                for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                    assert!(close(*a, *b, tolerance), "{name}.{}[{i}]: ours {a}, scikit-learn {b}", output.name);
                    worst = worst.max((a - b).abs());
                }
            }
            Values::Int(ours) => {
                let reference: Vec<i64> = reference.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                assert_eq!(ours, &reference, "{name}.{}", output.name);
            }
            Values::Text(_) => panic!("the bundled models have integer classes"),
        }
    }
    worst
}

#[test]
fn native_engine_matches_scikit_learn() {
    for name in MODELS {
        let worst = check(name, EngineOptions { engine: Some(Engine::Native), precision: None, threads: None }, 1e-5);
        assert!(worst < 1e-9, "{name}: f64 arithmetic should agree far inside the tolerance ({worst:e})");
    }
}

#[test]
fn tensor_engine_in_f64_matches_scikit_learn() {
    for name in MODELS {
        check(
            name,
            EngineOptions { engine: Some(Engine::Tensor), precision: Some(Precision::F64), threads: None },
            1e-5,
        );
    }
}

#[test]
fn tensor_engine_in_f32_matches_scikit_learn() {
    // f32 as used on GPUs: inputs and weights are rounded to 24-bit mantissas, yet the bundled
    // models still agree to 1e-5 (absolute or relative).
    for name in MODELS {
        check(
            name,
            EngineOptions { engine: Some(Engine::Tensor), precision: Some(Precision::F32), threads: None },
            1e-5,
        );
    }
}
