//! Golden tests: every XGBoost and LightGBM model (bundled in `models/`, or a fixture in
//! `tests/fixtures/trees/`) reproduces its library's own predictions for the golden rows
//! (`tests/golden/*.json`, written by `models/reference/make_trees.py`, missing values
//! included), on the native engine and on the tensor engine.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use inferd_classical::{Engine, EngineOptions, Forest, ForestPredictor, Precision};
use inferd_core::{Device, Rows, TabularModel, Values};
use serde_json::Value;

const TOLERANCE: f64 = 1e-5;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A golden file and its model.
struct Case {
    name: String,
    golden: Value,
    model: PathBuf,
    library: String,
}

/// Every tree golden file, with the model file it belongs to (`model_file`, relative to the
/// repository).
fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(repo().join("tests/golden")).unwrap() {
        let path = entry.unwrap().path();
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // Other golden files (linear models, embeddings) belong to other tests.
        let library = golden["reference"]["library"].as_str().unwrap_or_default().to_string();
        if library != "xgboost" && library != "lightgbm" {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let model = repo().join(golden["model_file"].as_str().unwrap());
        cases.push(Case { name, golden, model, library });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(cases.len() >= 20, "the tree goldens are present");
    cases
}

/// Models with categorical splits, which are refused (see `categorical_splits_are_refused`).
fn is_categorical(case: &Case) -> bool {
    case.name.contains("categorical")
}

fn cases() -> Vec<Case> {
    all_cases().into_iter().filter(|case| !is_categorical(case)).collect()
}

fn load(case: &Case) -> Forest {
    match case.library.as_str() {
        "xgboost" => Forest::load_xgboost(&case.model),
        _ => Forest::load_lightgbm(&case.model),
    }
    .unwrap_or_else(|err| panic!("{err}"))
}

/// Numbers, with JSON `null` as NaN (a missing value).
fn flat(value: &Value) -> Vec<f64> {
    match value {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        Value::Null => vec![f64::NAN],
        other => panic!("not a number: {other}"),
    }
}

fn rows(golden: &Value) -> Rows {
    let inputs = golden["inputs"].as_array().unwrap();
    let width = inputs[0].as_array().unwrap().len();
    Rows::new(inputs.len(), width, flat(&golden["inputs"])).unwrap()
}

/// Compares every golden output; returns the largest absolute difference. With
/// `exact_margins`, the margins must also equal the library's bit for bit.
fn check(case: &Case, options: EngineOptions, tolerance: f64, exact_margins: bool) -> f64 {
    let mut predictor = ForestPredictor::new(load(case), &Device::Cpu, options).unwrap();
    let outputs = predictor.predict(&rows(&case.golden)).unwrap();
    let expected = case.golden["outputs"].as_object().unwrap();
    let mut worst: f64 = 0.0;
    for (name, reference) in expected {
        let output = outputs
            .iter()
            .find(|output| &output.name == name)
            .unwrap_or_else(|| panic!("{}: no output '{name}'", case.name));
        match &output.values {
            Values::Float(ours) => {
                let reference = flat(reference);
                assert_eq!(ours.len(), reference.len(), "{}.{name}", case.name);
                if exact_margins && name == "margin" {
                    let differing = ours.iter().zip(&reference).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                    assert_eq!(differing, 0, "{}: margins differ from {}'s in the last bit", case.name, case.library);
                }
                for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                    let diff = (a - b).abs();
                    assert!(
                        diff <= tolerance || diff <= tolerance * b.abs(),
                        "{} ({options:?}) {name}[{i}]: ours {a}, {} {b}",
                        case.name,
                        case.library
                    );
                    worst = worst.max(diff);
                }
            }
            Values::Int(ours) => {
                let reference: Vec<i64> = reference.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                assert_eq!(ours, &reference, "{} ({options:?}) {name}", case.name);
            }
            Values::Text(_) => panic!("tree models have integer labels"),
        }
    }
    worst
}

fn options(engine: Engine, precision: Option<Precision>) -> EngineOptions {
    EngineOptions { engine: Some(engine), precision, threads: None }
}

#[test]
fn native_engine_matches_the_libraries() {
    let mut report = Vec::new();
    for case in cases() {
        let worst = check(&case, options(Engine::Native, None), TOLERANCE, true);
        report.push(format!("{}: {worst:e}", case.name));
    }
    println!("largest absolute differences (native): {}", report.join(", "));
}

#[test]
fn native_engine_is_the_same_on_one_thread_and_many() {
    for case in cases() {
        let forest = load(&case);
        let many = ForestPredictor::new(forest.clone(), &Device::Cpu, options(Engine::Native, None)).unwrap();
        let one = ForestPredictor::new(
            forest,
            &Device::Cpu,
            EngineOptions { threads: Some(1), ..options(Engine::Native, None) },
        )
        .unwrap();
        // Enough rows to cross the threshold for threads.
        let base = rows(&case.golden);
        let repeat = 200_000 / base.n_rows() + 1;
        let values: Vec<f64> = (0..repeat).flat_map(|_| base.values().iter().copied()).collect();
        let big = Rows::new(base.n_rows() * repeat, base.n_features(), values).unwrap();
        let (a, b) = (many.margins(&big).unwrap(), one.margins(&big).unwrap());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{}", case.name);
    }
}

#[test]
fn tensor_engine_matches_the_libraries() {
    for case in cases() {
        check(&case, options(Engine::Tensor, Some(Precision::F64)), TOLERANCE, false);
        if case.library == "xgboost" {
            // XGBoost's features and thresholds are f32: f32 tensors decide exactly the same.
            check(&case, options(Engine::Tensor, Some(Precision::F32)), TOLERANCE, false);
        }
    }
}

#[test]
fn categorical_splits_are_refused_naming_the_feature() {
    let categorical: Vec<Case> = all_cases().into_iter().filter(is_categorical).collect();
    assert_eq!(categorical.len(), 2);
    for case in categorical {
        let err = match case.library.as_str() {
            "xgboost" => Forest::load_xgboost(&case.model),
            _ => Forest::load_lightgbm(&case.model),
        }
        .unwrap_err()
        .to_string();
        assert!(err.contains("categorical splits are not supported") && err.contains("feature"), "{err}");
        assert!(err.contains(case.model.file_name().unwrap().to_str().unwrap()), "names the file: {err}");
    }
}
