//! Classical model throughput and latency, per engine and device: time per batch (and rows per
//! second) at batch sizes 1, 64, 1024 and 65,536 for the bundled linear, XGBoost and LightGBM
//! models, and the cost of the batcher's round trip.
//!
//! `cargo bench --bench classical` (add `--features cuda` on a GPU machine to include CUDA).
//! `benches/trees_vs_libraries.py` compares the tree engine with XGBoost and LightGBM.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use inferd::classical::{Engine, EngineOptions, Forest, ForestPredictor, LinearModel, LinearPredictor, Precision};
use inferd::core::{BatchPolicy, Device, DeviceSpec, Metrics, Rows, TabularModel, TabularService, device_name};
use serde_json::Value;

const BATCH_SIZES: [usize; 4] = [1, 64, 1024, 65_536];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

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

/// Every (label, device, options) this build and machine can run.
fn engines() -> Vec<(String, Device, EngineOptions)> {
    let native = EngineOptions { engine: Some(Engine::Native), precision: None, threads: None };
    let tensor = |precision| EngineOptions { engine: Some(Engine::Tensor), precision: Some(precision), threads: None };
    let mut engines = vec![
        ("native-cpu".to_string(), Device::Cpu, native),
        ("tensor-f64-cpu".to_string(), Device::Cpu, tensor(Precision::F64)),
        ("tensor-f32-cpu".to_string(), Device::Cpu, tensor(Precision::F32)),
    ];
    if let Ok(gpu) = DeviceSpec::Cuda(0).resolve() {
        let name = device_name(&gpu);
        engines.push((format!("tensor-f32-{name}"), gpu.clone(), tensor(Precision::F32)));
        engines.push((format!("tensor-f64-{name}"), gpu, tensor(Precision::F64)));
    }
    engines
}

/// Benchmarks `model` on every engine; `trees` skips the tensor engine's 65,536-row case on the
/// CPU (minutes of GEMM that only parity checks need).
fn bench_model(
    c: &mut Criterion,
    model: &str,
    trees: bool,
    build: impl Fn(&Device, EngineOptions) -> Box<dyn TabularModel>,
) {
    let mut group = c.benchmark_group(model);
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(10);
    for (label, device, options) in engines() {
        let mut predictor = build(&device, options);
        for batch in BATCH_SIZES {
            if trees && batch == 65_536 && label.starts_with("tensor") && device.is_cpu() {
                continue;
            }
            let input = rows(model, batch);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(&label, batch), &input, |b, input| {
                b.iter(|| predictor.predict(input).unwrap())
            });
        }
    }
    group.finish();
}

fn linear(c: &mut Criterion) {
    let model = LinearModel::load(&root().join("models/breast-cancer-logistic/model.json")).unwrap();
    bench_model(c, "breast-cancer-logistic", false, |device, options| {
        Box::new(LinearPredictor::new(model.clone(), device, options).unwrap())
    });
}

fn trees(c: &mut Criterion) {
    let xgboost = Forest::load_xgboost(&root().join("models/breast-cancer-xgboost/model.json")).unwrap();
    bench_model(c, "breast-cancer-xgboost", true, |device, options| {
        Box::new(ForestPredictor::new(xgboost.clone(), device, options).unwrap())
    });
    let lightgbm = Forest::load_lightgbm(&root().join("models/breast-cancer-lightgbm/model.txt")).unwrap();
    bench_model(c, "breast-cancer-lightgbm", true, |device, options| {
        Box::new(ForestPredictor::new(lightgbm.clone(), device, options).unwrap())
    });
}

/// One row through the whole in-process path: validation, queue, worker thread, answer.
fn batcher_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let model = LinearModel::load(&root().join("models/breast-cancer-logistic/model.json")).unwrap();
    let predictor = LinearPredictor::new(model, &Device::Cpu, EngineOptions::default()).unwrap();
    let metrics = Metrics::new();
    let service =
        TabularService::start("round-trip", Box::new(predictor), BatchPolicy::default(), metrics.batcher("round-trip"))
            .unwrap();
    let input = rows("breast-cancer-logistic", 1);
    let mut group = c.benchmark_group("batcher");
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("round-trip-1-row", |b| {
        b.iter(|| runtime.block_on(service.predict(input.clone(), None)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, linear, trees, batcher_round_trip);
criterion_main!(benches);
