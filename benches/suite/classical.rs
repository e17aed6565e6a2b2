//! Linear and tree models: time per batch (rows per second) for the bundled breast-cancer
//! models at batch sizes 1 to 65,536 rows, on every device, with each device's default engine and,
//! outside quick mode, the other engines too; and one row through the batcher in process.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use inferd::classical::{Engine, EngineOptions, Forest, ForestPredictor, LinearModel, LinearPredictor, Precision};
use inferd::core::{BatchPolicy, Device, Metrics, Rows, TabularModel, TabularService};
use serde_json::Value;

use crate::common::{Suite, root};

const BATCHES: [usize; 5] = [1, 8, 64, 1024, 65_536];
const QUICK_BATCHES: [usize; 3] = [1, 64, 1024];

/// `n` rows cycled from a model's golden inputs (real feature distributions, missing values
/// included).
fn rows(model: &str, n: usize) -> Rows {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(format!("tests/golden/{model}.json"))).unwrap())
            .unwrap();
    let inputs = golden["inputs"].as_array().unwrap();
    let width = inputs[0].as_array().unwrap().len();
    let values = inputs
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap_or(f64::NAN)))
        .collect::<Vec<f64>>()
        .into_iter()
        .cycle()
        .take(n * width)
        .collect();
    Rows::new(n, width, values).unwrap()
}

/// The engines to time on a device: its default (labelled by the device alone) and, outside
/// quick mode, the others, labelled `device+engine`.
fn engines(suite: &Suite, name: &str, device: &Device) -> Vec<(String, EngineOptions)> {
    let tensor = |precision| EngineOptions { engine: Some(Engine::Tensor), precision: Some(precision), threads: None };
    let mut engines = vec![(name.to_string(), EngineOptions::default())];
    if !suite.quick {
        if device.is_cpu() {
            engines.push((format!("{name}+tensor-f32"), tensor(Precision::F32)));
            engines.push((format!("{name}+tensor-f64"), tensor(Precision::F64)));
        } else {
            engines.push((format!("{name}+f64"), tensor(Precision::F64)));
        }
    }
    engines
}

/// Benchmarks `model` of `family` on every device and engine. The tensor engine's 65,536-row
/// case on the CPU is skipped (minutes of GEMM over padded trees that only parity checks need).
fn bench_model(
    c: &mut Criterion,
    suite: &mut Suite,
    family: &str,
    model: &str,
    build: impl Fn(&Device, EngineOptions) -> Box<dyn TabularModel>,
) {
    let batches: &[usize] = if suite.quick { &QUICK_BATCHES } else { &BATCHES };
    for index in 0..suite.devices.len() {
        let (name, device) = (suite.devices[index].name.clone(), suite.devices[index].device.clone());
        for (label, options) in engines(suite, &name, &device) {
            let slow = options.engine == Some(Engine::Tensor) && device.is_cpu();
            let mut predictor = build(&device, options);
            for &batch in batches {
                if slow && batch == 65_536 {
                    continue;
                }
                let (group_id, function) = suite.id(family, model, &label, batch);
                let mut group = c.benchmark_group(group_id);
                suite.configure(&mut group, Duration::ZERO);
                let input = rows(model, batch);
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_with_input(BenchmarkId::new(function, batch), &input, |b, input| {
                    b.iter(|| predictor.predict(input).unwrap())
                });
                group.finish();
            }
        }
    }
}

pub fn bench(c: &mut Criterion, suite: &mut Suite) {
    let linear = LinearModel::load(&root().join("models/breast-cancer-logistic/model.json")).unwrap();
    bench_model(c, suite, "linear", "breast-cancer-logistic", |device, options| {
        Box::new(LinearPredictor::new(linear.clone(), device, options).unwrap())
    });
    let xgboost = Forest::load_xgboost(&root().join("models/breast-cancer-xgboost/model.json")).unwrap();
    bench_model(c, suite, "trees", "breast-cancer-xgboost", |device, options| {
        Box::new(ForestPredictor::new(xgboost.clone(), device, options).unwrap())
    });
    let lightgbm = Forest::load_lightgbm(&root().join("models/breast-cancer-lightgbm/model.txt")).unwrap();
    bench_model(c, suite, "trees", "breast-cancer-lightgbm", |device, options| {
        Box::new(ForestPredictor::new(lightgbm.clone(), device, options).unwrap())
    });
    batcher_round_trip(c, suite);
}

/// One row through the whole in-process path: validation, queue, worker thread, answer.
fn batcher_round_trip(c: &mut Criterion, suite: &mut Suite) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let model = LinearModel::load(&root().join("models/breast-cancer-logistic/model.json")).unwrap();
    let predictor = LinearPredictor::new(model, &Device::Cpu, EngineOptions::default()).unwrap();
    let metrics = Metrics::new();
    let service =
        TabularService::start("round-trip", Box::new(predictor), BatchPolicy::default(), metrics.batcher("round-trip"))
            .unwrap();
    let input = rows("breast-cancer-logistic", 1);
    let (group_id, function) = suite.id("batcher", "breast-cancer-logistic", "cpu", 1);
    let mut group = c.benchmark_group(group_id);
    suite.configure(&mut group, Duration::ZERO);
    group.throughput(Throughput::Elements(1));
    group.bench_with_input(BenchmarkId::new(function, 1), &input, |b, input| {
        b.iter(|| runtime.block_on(service.predict(input.clone(), None)).unwrap())
    });
    group.finish();
}
