//! Sentence embedding throughput and latency, per engine and device: time per batch (and
//! sentences per second) at batch sizes 1, 8, 32 and 128, for short (~12 tokens) and medium
//! (~128 tokens) texts, tokenization included, with all-MiniLM-L6-v2.
//!
//! `cargo bench --bench embeddings` (add `--features cuda` on a GPU machine to include CUDA;
//! run `models/fetch-models.sh` first). `benches/embeddings_vs_sentence_transformers.py` runs
//! sentence-transformers beside inferd on the same texts.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use inferd::core::{Device, DeviceSpec, Engine, Precision, TextEncoder, device_name};
use inferd::transformers::{EmbeddingOptions, LoadedEmbedding, ModelSource, load_embedding};

const BATCH_SIZES: [usize; 4] = [1, 8, 32, 128];

/// Words to build texts from; any English works, the token counts are what matter.
const WORDS: &[&str] = &[
    "the", "server", "answers", "requests", "from", "many", "clients", "while", "its", "queue", "stays", "short",
    "and", "each", "batch", "runs", "on", "two", "cores", "with", "little", "waste", "between", "texts", "of",
    "similar", "length", "so", "delay", "remains", "low", "under", "load", "during", "busy", "hours",
];

/// `count` texts of `words` words each; every word is one token, so with [CLS] and [SEP] a text
/// is `words + 2` tokens.
fn texts(count: usize, words: usize) -> Vec<String> {
    (0..count)
        .map(|i| (0..words).map(|w| WORDS[(i * 7 + w * 13 + w * w) % WORDS.len()]).collect::<Vec<_>>().join(" "))
        .collect()
}

fn engines() -> Vec<(String, Device, EmbeddingOptions)> {
    let options =
        |engine, precision| EmbeddingOptions { engine: Some(engine), precision: Some(precision), threads: None };
    let mut engines = vec![
        ("native-f32-cpu".to_string(), Device::Cpu, options(Engine::Native, Precision::F32)),
        ("tensor-f32-cpu".to_string(), Device::Cpu, options(Engine::Tensor, Precision::F32)),
    ];
    if let Ok(gpu) = DeviceSpec::Cuda(0).resolve() {
        let name = device_name(&gpu);
        engines.push((format!("tensor-f16-{name}"), gpu.clone(), options(Engine::Tensor, Precision::F16)));
        engines.push((format!("tensor-f32-{name}"), gpu, options(Engine::Tensor, Precision::F32)));
    }
    engines
}

fn embed(loaded: &mut LoadedEmbedding, texts: &[String]) -> usize {
    let mut ids: Vec<Vec<u32>> = texts.iter().map(|text| loaded.encoder.encode_text(text, true).unwrap()).collect();
    ids.sort_by_key(Vec::len);
    let sequences: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    loaded.model.embed(&sequences).unwrap().len()
}

fn embeddings(c: &mut Criterion) {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-minilm-l6-v2");
    assert!(folder.join("model.safetensors").is_file(), "{} is missing: run models/fetch-models.sh", folder.display());
    for (label, device, options) in engines() {
        let mut loaded = load_embedding(&ModelSource::Folder(folder.clone()), &device, options).unwrap();
        for (length, words) in [("short", 10), ("medium", 126)] {
            let mut group = c.benchmark_group(format!("all-minilm-l6-v2/{length}/{label}"));
            group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
            for batch in BATCH_SIZES {
                let texts = texts(batch, words);
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_with_input(BenchmarkId::from_parameter(batch), &texts, |b, texts| {
                    b.iter(|| embed(&mut loaded, texts));
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, embeddings);
criterion_main!(benches);
