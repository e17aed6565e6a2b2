//! Text generation speed per device: prefill of a 256-token prompt, and one decode step for 1,
//! 4, 8 and 16 sequences in the batch (tokens per second = sequences / step time), with
//! SmolLM2-135M-Instruct (GGUF, Q4_1).
//!
//! `cargo bench --bench generation` (run `models/fetch-models.sh` first). Generation runs on
//! the CPU in this version; `benches/chat_vs_llama_cpp.py` runs llama.cpp beside the server on
//! the same model and prints the ratios.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use inferd::core::{CausalLm, Device, SequenceStep, TextCodec};
use inferd::transformers::generation::LlamaEngineCache;
use inferd::transformers::{GenerationOptions, LoadedGeneration, ModelSource, load_generation};

const STREAMS: [usize; 4] = [1, 4, 8, 16];
/// Tokens already in each sequence's cache when a decode step is timed. Not a power of two: a
/// cache grows by doubling its room when full, and at 64 every timed step (on a clone of a
/// cache holding exactly 64 tokens) would also time moving the whole cache to a bigger one.
const CONTEXT: usize = 60;

fn load() -> LoadedGeneration {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(file.is_file(), "{} is missing: run models/fetch-models.sh", file.display());
    load_generation(&ModelSource::Folder(file), &Device::Cpu, &GenerationOptions::default()).unwrap()
}

fn generation(c: &mut Criterion) {
    let mut loaded = load();
    let text = "The quick brown fox jumps over the lazy dog while the farmer counts his sheep. ".repeat(16);
    let mut prompt = loaded.codec.encode(&text, true).unwrap();
    prompt.truncate(256);

    let mut group = c.benchmark_group("smollm2-135m-q4_1/prefill-256/cpu");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(prompt.len() as u64));
    group.bench_function("prompt", |b| {
        b.iter(|| {
            let mut cache = loaded.model.new_cache();
            loaded.model.forward(&mut [SequenceStep { cache: &mut cache, tokens: &prompt }]).unwrap()
        });
    });
    group.finish();

    let mut group = c.benchmark_group("smollm2-135m-q4_1/decode-step/cpu");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for streams in STREAMS {
        // Every sequence holds CONTEXT tokens; each timed step adds one token to a clone.
        let mut caches: Vec<LlamaEngineCache> = (0..streams).map(|_| loaded.model.new_cache()).collect();
        let prompts: Vec<&[u32]> = (0..streams).map(|i| &prompt[i..i + CONTEXT]).collect();
        let mut batch: Vec<SequenceStep<'_, LlamaEngineCache>> =
            caches.iter_mut().zip(&prompts).map(|(cache, tokens)| SequenceStep { cache, tokens }).collect();
        loaded.model.forward(&mut batch).unwrap();
        group.throughput(Throughput::Elements(streams as u64));
        group.bench_with_input(BenchmarkId::from_parameter(streams), &streams, |b, _| {
            b.iter_batched(
                || caches.clone(),
                |mut caches| {
                    let next = [7u32];
                    let mut batch: Vec<SequenceStep<'_, LlamaEngineCache>> =
                        caches.iter_mut().map(|cache| SequenceStep { cache, tokens: &next }).collect();
                    loaded.model.forward(&mut batch).unwrap()
                },
                criterion::BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, generation);
criterion_main!(benches);
