//! Embedding inferd in another Rust service: load a bundled model and predict in-process, through
//! the same dynamic batcher the server uses, with no HTTP in between.
//!
//! Run from the repository root: `cargo run --release --example embedded`

use std::sync::Arc;

use anyhow::Context;
use inferd::config::{ModelConfig, ModelKind};
use inferd::core::{Metrics, Rows, Values};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The same settings a `[[models]]` entry of the configuration file holds.
    let mut config = ModelConfig::new("iris", ModelKind::Linear, "models/iris-logistic/model.json");
    config.batching.max_batch_size = 32;
    config.batching.max_queue_delay = std::time::Duration::from_millis(1);

    let device = config.device.resolve()?;
    let metrics = Metrics::new();
    let model = Arc::new(inferd::load::load_model(&config, &device, &metrics).map_err(anyhow::Error::msg)?);
    println!("loaded '{}' on {} ({} engine)", model.name, model.device, model.engine);

    // Many callers at once, as request handlers would be: their rows share batches.
    let flowers = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.9, 3.1, 5.4, 2.1]];
    let callers: Vec<_> = (0..12)
        .map(|i| {
            let model = Arc::clone(&model);
            let flower = flowers[i % flowers.len()];
            tokio::spawn(async move {
                let service = model.tabular().context("iris is a tabular model")?;
                let rows = Rows::new(1, 4, flower.to_vec())?;
                let done = service.predict(rows, None).await?;
                anyhow::Ok((flower, done))
            })
        })
        .collect();

    for caller in callers {
        let (flower, done) = caller.await??;
        let label = done.output.iter().find(|output| output.name == "label").context("label output")?;
        let Values::Int(classes) = &label.values else { anyhow::bail!("iris labels are integers") };
        println!(
            "{flower:?} -> class {} (batch of {}, queued {:?}, computed in {:?})",
            classes[0], done.stats.batch_size, done.stats.queue_time, done.stats.compute_time
        );
    }
    Ok(())
}
