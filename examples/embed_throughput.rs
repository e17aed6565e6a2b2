//! Times inferd's embedding engines on texts from a JSON file (an array of strings): tokenizing
//! and embedding `batch` texts at a time, as `SentenceTransformer.encode` does, and prints one
//! JSON line per batch size. `benches/embeddings_vs_sentence_transformers.py` runs it beside
//! sentence-transformers; `cargo bench -- embeddings` is the criterion suite.
//!
//! ```sh
//! cargo run --release --example embed_throughput -- models/all-minilm-l6-v2 texts.json 1,8,32,128 native 2 [bf16]
//! ```
//!
//! The optional last argument is the precision (`f32`, the default on the CPU, or `bf16`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use inferd::core::{Device, Engine, Precision, TextEncoder};
use inferd::transformers::{EmbeddingOptions, ModelSource, load_embedding};

/// Measures for at least this long per batch size, after one warm-up batch.
const MEASURE: Duration = Duration::from_secs(3);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, texts, batches, engine, threads, precision @ ..] = args.as_slice() else {
        bail!(
            "usage: embed_throughput MODEL_FOLDER TEXTS.json BATCHES(comma-separated) native|tensor THREADS [f32|bf16]"
        );
    };
    let precision = match precision {
        [] => None,
        [name] if name == "f32" => Some(Precision::F32),
        [name] if name == "bf16" => Some(Precision::Bf16),
        other => bail!("unknown precision {other:?}: f32 or bf16"),
    };
    let texts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(texts).context("texts file")?)?;
    let engine = match engine.as_str() {
        "native" => Engine::Native,
        "tensor" => Engine::Tensor,
        other => bail!("unknown engine {other}"),
    };
    let threads: usize = threads.parse()?;
    let options = EmbeddingOptions { engine: Some(engine), precision, threads: Some(threads) };
    let mut loaded = load_embedding(&ModelSource::Folder(model.into()), &Device::Cpu, options)?;
    for batch in batches.split(',') {
        let batch: usize = batch.parse()?;
        let mut next = 0;
        let mut run = || -> anyhow::Result<usize> {
            let chunk: Vec<&String> = texts.iter().cycle().skip(next).take(batch).collect();
            next = (next + batch) % texts.len().max(1);
            let mut ids: Vec<Vec<u32>> =
                chunk.iter().map(|text| loaded.encoder.encode_text(text, true)).collect::<Result<_, _>>()?;
            ids.sort_by_key(Vec::len);
            let tokens = ids.iter().map(Vec::len).sum();
            let sequences: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
            std::hint::black_box(loaded.model.embed(&sequences)?);
            Ok(tokens)
        };
        run()?;
        let started = Instant::now();
        let (mut calls, mut tokens) = (0u64, 0usize);
        while started.elapsed() < MEASURE {
            tokens += run()?;
            calls += 1;
        }
        let seconds = started.elapsed().as_secs_f64() / calls as f64;
        println!(
            "{{\"engine\": \"inferd-{}\", \"batch\": {batch}, \"threads\": {threads}, \"cpu_kernels\": \"{}\", \"precision\": \"{}\", \"seconds_per_batch\": {seconds:e}, \"sentences_per_second\": {:.1}, \"tokens_per_sentence\": {:.1}}}",
            engine.name(),
            inferd::core::cpu_level(),
            loaded.precision.name(),
            batch as f64 / seconds,
            tokens as f64 / (calls as f64 * batch as f64)
        );
    }
    Ok(())
}
