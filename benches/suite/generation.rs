//! Text generation with SmolLM2-135M-Instruct (GGUF, Q4_1), on every device with its default
//! engine: the prefill of short (32-token) and medium (256-token) prompts for 1, 4, 8 and 16
//! sequences at once (tokens per second), and one decode step for 1, 4, 8 and 16 sequences
//! holding short (60-token) and medium (250-token) contexts (tokens per second = sequences /
//! step time).
//!
//! Outside quick mode, a kernel group times the model's main matrix product alone: one pass of
//! the Q4_1 product over 48 matrices of the feed-forward's shape (3,072 × 576, 53 MB in all, more
//! than the CPU's last cache, as the model's 85 MB are), for 1 and for 8 activation rows. Its two
//! throughputs bound how much 8 decoding streams can gain over one on this machine: with one row
//! the pass waits on memory, with eight on the integer arithmetic.

use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use inferd::core::{CausalLm, Engine, SequenceStep, TextCodec};
use inferd::transformers::generation::LlamaEngineCache;
use inferd::transformers::quant::{BlockFormat, BlockMatrix, Interleaved, Q4_1_BYTES, QuantizedRows};
use inferd::transformers::{GenerationOptions, LoadedGeneration, ModelSource, load_generation};

use inferd::advise::criterion::family_tokens;

use crate::common::{Suite, root};

const MODEL: &str = "smollm2-135m-instruct";
const STREAMS: [usize; 4] = [1, 4, 8, 16];

fn load(device: &inferd::core::Device, engine: Option<Engine>) -> LoadedGeneration {
    let file = root().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(file.is_file(), "{} is missing: run models/fetch-models.sh", file.display());
    let options = GenerationOptions { engine, ..GenerationOptions::default() };
    load_generation(&ModelSource::Folder(file), device, &options).unwrap()
}

pub fn bench(c: &mut Criterion, suite: &mut Suite) {
    for index in 0..suite.devices.len() {
        let (name, device) = (suite.devices[index].name.clone(), suite.devices[index].device.clone());
        let mut loaded = load(&device, None);
        let text = "The quick brown fox jumps over the lazy dog while the farmer counts his sheep. ".repeat(32);
        let prompt = loaded.codec.encode(&text, true).unwrap();
        assert!(prompt.len() >= 300, "the benchmark prompt is only {} tokens", prompt.len());
        let prefills: &[&str] = if suite.quick { &["prefill-medium"] } else { &["prefill-short", "prefill-medium"] };
        for &family in prefills {
            let length = family_tokens(family).unwrap();
            let streams: &[usize] = if suite.quick { &STREAMS[..2] } else { &STREAMS };
            for &streams in streams {
                prefill(c, suite, &mut loaded, family, &name, &prompt[..length], streams);
            }
        }
        let decodes: &[&str] = if suite.quick { &["decode-short"] } else { &["decode-short", "decode-medium"] };
        for &family in decodes {
            let context = family_tokens(family).unwrap();
            for streams in STREAMS {
                decode(c, suite, &mut loaded, family, &name, &prompt, context, streams);
            }
        }
    }
    if !suite.quick {
        products(c, suite);
    }
}

fn prefill(
    c: &mut Criterion,
    suite: &mut Suite,
    loaded: &mut LoadedGeneration,
    family: &str,
    device: &str,
    prompt: &[u32],
    streams: usize,
) {
    let (group_id, function) = suite.id(family, MODEL, device, streams);
    let mut group = c.benchmark_group(group_id);
    // About 1 ms per prompt token per sequence on two CPU cores.
    suite.configure(&mut group, Duration::from_micros((prompt.len() * streams * 1000) as u64));
    group.throughput(Throughput::Elements((prompt.len() * streams) as u64));
    group.bench_with_input(BenchmarkId::new(function, streams), &streams, |b, &streams| {
        b.iter(|| {
            let mut caches: Vec<LlamaEngineCache> = (0..streams).map(|_| loaded.model.new_cache()).collect();
            let mut batch: Vec<SequenceStep<'_, LlamaEngineCache>> =
                caches.iter_mut().map(|cache| SequenceStep { cache, tokens: prompt }).collect();
            loaded.model.forward(&mut batch).unwrap()
        });
    });
    group.finish();
}

#[allow(clippy::too_many_arguments)]
fn decode(
    c: &mut Criterion,
    suite: &mut Suite,
    loaded: &mut LoadedGeneration,
    family: &str,
    device: &str,
    prompt: &[u32],
    context: usize,
    streams: usize,
) {
    // Every sequence holds `context` tokens (different ones); each timed step adds one token to
    // a clone. Contexts are not powers of two: a cache grows by doubling its room when full, and
    // at 64 every timed step would also time moving the whole cache to a bigger one.
    let mut caches: Vec<LlamaEngineCache> = (0..streams).map(|_| loaded.model.new_cache()).collect();
    let prompts: Vec<&[u32]> = (0..streams).map(|i| &prompt[i..i + context]).collect();
    let mut batch: Vec<SequenceStep<'_, LlamaEngineCache>> =
        caches.iter_mut().zip(&prompts).map(|(cache, tokens)| SequenceStep { cache, tokens }).collect();
    loaded.model.forward(&mut batch).unwrap();
    let (group_id, function) = suite.id(family, MODEL, device, streams);
    let mut group = c.benchmark_group(group_id);
    suite.configure(&mut group, Duration::ZERO);
    group.throughput(Throughput::Elements(streams as u64));
    group.bench_with_input(BenchmarkId::new(function, streams), &streams, |b, _| {
        b.iter_batched(
            || caches.clone(),
            |mut caches| {
                let next = [7u32];
                let mut batch: Vec<SequenceStep<'_, LlamaEngineCache>> =
                    caches.iter_mut().map(|cache| SequenceStep { cache, tokens: &next }).collect();
                loaded.model.forward(&mut batch).unwrap()
            },
            BatchSize::LargeInput,
        );
    });
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

fn products(c: &mut Criterion, suite: &mut Suite) {
    const MATRICES: usize = 48;
    let (rows, columns) = (3072, 576);
    let matrices = random_q4_1(MATRICES, rows, columns);
    for activation_rows in [1usize, 8] {
        let (group_id, function) = suite.id("kernels", "q4_1-product-3072x576x48", "cpu", activation_rows);
        let mut group = c.benchmark_group(group_id);
        group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
        let x: Vec<f32> = (0..activation_rows * columns).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut quantized = QuantizedRows::default();
        quantized.quantize(&x, activation_rows, columns);
        let mut out = vec![0f32; activation_rows * rows];
        // Elements: multiply-adds.
        group.throughput(Throughput::Elements((activation_rows * MATRICES * rows * columns) as u64));
        group.bench_with_input(BenchmarkId::new(function, activation_rows), &activation_rows, |b, _| {
            b.iter(|| {
                for matrix in &matrices {
                    matrix.matmul(&quantized, &mut out);
                }
            });
        });
        group.finish();
    }
}
