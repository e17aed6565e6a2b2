//! Times inferd's tree engines on a model's golden rows, tiled to each batch size, and prints one
//! JSON line per measurement. `benches/trees_vs_libraries.py` runs it beside XGBoost's and
//! LightGBM's own predictors; `cargo bench -- trees/` is the criterion suite.
//!
//! ```sh
//! cargo run --release --example forest_throughput -- xgboost models/breast-cancer-xgboost/model.json \
//!     tests/golden/breast-cancer-xgboost.json 1,64,1024,65536 1,2
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use inferd::classical::{Engine, EngineOptions, Forest, ForestPredictor};
use inferd::core::{Device, Rows};

/// Measures for at least this long per case, after one warm-up call.
const MEASURE: Duration = Duration::from_millis(1500);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, model, golden, batches, threads] = args.as_slice() else {
        bail!("usage: forest_throughput xgboost|lightgbm MODEL GOLDEN.json BATCHES THREADS (comma-separated lists)");
    };
    let forest = match kind.as_str() {
        "xgboost" => Forest::load_xgboost(model.as_ref())?,
        "lightgbm" => Forest::load_lightgbm(model.as_ref())?,
        other => bail!("unknown kind {other}"),
    };
    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(golden)?)?;
    let inputs = golden["inputs"].as_array().context("golden inputs")?;
    let width = forest.n_features;
    let base: Vec<f64> = inputs
        .iter()
        .flat_map(|row| row.as_array().into_iter().flatten().map(|v| v.as_f64().unwrap_or(f64::NAN)))
        .collect();
    for batch in batches.split(',') {
        let batch: usize = batch.parse()?;
        let values: Vec<f64> = base.iter().copied().cycle().take(batch * width).collect();
        let rows = Rows::new(batch, width, values)?;
        for threads in threads.split(',') {
            let threads: usize = threads.parse()?;
            let options = EngineOptions { engine: Some(Engine::Native), precision: None, threads: Some(threads) };
            let predictor = ForestPredictor::new(forest.clone(), &Device::Cpu, options).map_err(anyhow::Error::msg)?;
            predictor.margins(&rows)?;
            let started = Instant::now();
            let mut calls = 0u64;
            while started.elapsed() < MEASURE {
                std::hint::black_box(predictor.margins(&rows)?);
                calls += 1;
            }
            let seconds = started.elapsed().as_secs_f64() / calls as f64;
            println!(
                "{{\"engine\": \"inferd-native\", \"batch\": {batch}, \"threads\": {threads}, \"seconds_per_batch\": {seconds:e}, \"rows_per_second\": {:.1}}}",
                batch as f64 / seconds
            );
        }
    }
    Ok(())
}
