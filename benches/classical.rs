//! Classical model throughput and latency, per engine and device: rows per second and per-batch
//! latency at batch sizes 1, 64, 1024 and 65,536, and the cost of the batcher's round trip.
//!
//! `cargo bench --bench classical` (add `--features cuda` on a GPU machine to include CUDA).

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use inferd::classical::{Engine, EngineOptions, LinearModel, LinearPredictor, Precision};
use inferd::core::{BatchPolicy, Device, DeviceSpec, Metrics, Rows, TabularModel, TabularService, device_name};
use serde_json::Value;

const BATCH_SIZES: [usize; 4] = [1, 64, 1024, 65_536];
const MODEL: &str = "breast-cancer-logistic";

/// `n` rows cycled from the model's golden inputs (real feature distributions).
fn rows(n: usize) -> Rows {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(format!("tests/golden/{MODEL}.json"))).unwrap())
            .unwrap();
    let inputs: Vec<Vec<f64>> = golden["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    let width = inputs[0].len();
    let values = inputs.iter().cycle().take(n).flatten().copied().collect();
    Rows::new(n, width, values).unwrap()
}

fn model() -> LinearModel {
    LinearModel::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{MODEL}/model.json"))).unwrap()
}

/// Every (label, device, options) this build and machine can run.
fn engines() -> Vec<(String, Device, EngineOptions)> {
    let native = EngineOptions { engine: Some(Engine::Native), precision: None };
    let tensor = |precision| EngineOptions { engine: Some(Engine::Tensor), precision: Some(precision) };
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

fn linear_engines(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("linear/{MODEL}"));
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
    for (label, device, options) in engines() {
        let mut predictor = LinearPredictor::new(model(), &device, options).unwrap();
        for batch in BATCH_SIZES {
            let input = rows(batch);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(&label, batch), &input, |b, input| {
                b.iter(|| predictor.predict(input).unwrap())
            });
        }
    }
    group.finish();
}

/// One row through the whole in-process path: validation, queue, worker thread, answer.
fn batcher_round_trip(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let predictor = LinearPredictor::new(model(), &Device::Cpu, EngineOptions::default()).unwrap();
    let metrics = Metrics::new();
    let service =
        TabularService::start(MODEL, Box::new(predictor), BatchPolicy::default(), metrics.batcher(MODEL)).unwrap();
    let input = rows(1);
    let mut group = c.benchmark_group("batcher");
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("round-trip-1-row", |b| {
        b.iter(|| runtime.block_on(service.predict(input.clone(), None)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, linear_engines, batcher_round_trip);
criterion_main!(benches);
