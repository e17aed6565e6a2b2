//! Text generation speed per device: prefill of a 256-token prompt, and one decode step for 1,
//! 4, 8 and 16 sequences in the batch (tokens per second = sequences / step time), with
//! SmolLM2-135M-Instruct (GGUF, Q4_1).
//!
//! A third group times the model's main matrix product alone: one pass of the Q4_1 product over
//! 48 matrices of the feed-forward's shape (3,072 × 576, 53 MB in all, more than the CPU's last
//! cache, as the model's 85 MB are), for 1 and for 8 activation rows. Its two throughputs
//! bound how much 8 decoding streams can gain over one on this machine: with one row the pass
//! waits on memory, with eight on the integer arithmetic, and the rest of a step (attention
//! above all) costs per sequence.
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
use inferd::transformers::quant::{BlockFormat, BlockMatrix, Interleaved, Q4_1_BYTES, QuantizedRows};
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

/// Q4_1 matrices of the feed-forward's shape with random values, scales like a trained model's
/// (`d` ≈ 0.01, `m` ≈ −0.08).
fn random_q4_1(count: usize, rows: usize, columns: usize) -> Vec<Interleaved> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let mut bytes = vec![0u8; rows * columns / 32 * Q4_1_BYTES];
            for block in bytes.chunks_exact_mut(Q4_1_BYTES) {
                let d = half::f16::from_f32(0.005 + (next() % 1000) as f32 * 1e-5);
                let m = half::f16::from_f32(-0.04 - (next() % 1000) as f32 * 8e-5);
                block[0..2].copy_from_slice(&d.to_le_bytes());
                block[2..4].copy_from_slice(&m.to_le_bytes());
                block[4..].iter_mut().for_each(|b| *b = next() as u8);
            }
            Interleaved::new(&BlockMatrix::new(BlockFormat::Q4_1, rows, columns, bytes).unwrap())
        })
        .collect()
}

fn products(c: &mut Criterion) {
    const MATRICES: usize = 48;
    let (rows, columns) = (3072, 576);
    let matrices = random_q4_1(MATRICES, rows, columns);
    let mut group = c.benchmark_group("q4_1-product-3072x576x48/cpu");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for activation_rows in [1usize, 8] {
        let x: Vec<f32> = (0..activation_rows * columns).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut quantized = QuantizedRows::default();
        quantized.quantize(&x, activation_rows, columns);
        let mut out = vec![0f32; activation_rows * rows];
        // Elements: multiply-adds.
        group.throughput(Throughput::Elements((activation_rows * MATRICES * rows * columns) as u64));
        group.bench_with_input(BenchmarkId::new("rows", activation_rows), &activation_rows, |b, _| {
            b.iter(|| {
                for matrix in &matrices {
                    matrix.matmul(&quantized, &mut out);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, generation, products);
criterion_main!(benches);
