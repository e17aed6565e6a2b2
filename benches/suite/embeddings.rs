//! Sentence embeddings: time per batch (texts per second) for all-MiniLM-L6-v2 at batch sizes 1
//! to 128, short (~12 tokens) and medium (~128 tokens) texts, tokenization included, on every
//! device with its default engine and precision and, outside quick mode, the others.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use inferd::core::{Engine, Precision, TextEncoder};
use inferd::transformers::{EmbeddingOptions, LoadedEmbedding, ModelSource, load_embedding};

use inferd::advise::criterion::family_tokens;

use crate::common::{Suite, root};

const MODEL: &str = "all-minilm-l6-v2";
const BATCHES: [usize; 5] = [1, 8, 32, 64, 128];
const QUICK_BATCHES: [usize; 3] = [1, 8, 32];

/// `count` different texts of `words` words each (ordinary words, one token each), as `inferd
/// bench` sends them; with [CLS] and [SEP] a text is `words + 2` tokens.
fn texts(count: usize, words: usize) -> Vec<String> {
    (0..count as u64).map(|seed| inferd::advise::load::payload::text(seed, words)).collect()
}

fn variants(suite: &Suite, on_gpu: bool) -> Vec<(Option<&'static str>, EmbeddingOptions)> {
    let options =
        |engine, precision| EmbeddingOptions { engine: Some(engine), precision: Some(precision), threads: None };
    let mut variants = vec![(None, EmbeddingOptions::default())];
    if !suite.quick {
        if on_gpu {
            variants.push((Some("f32"), options(Engine::Tensor, Precision::F32)));
        } else {
            variants.push((Some("tensor-f32"), options(Engine::Tensor, Precision::F32)));
            // bf16 only where it runs as bf16 (elsewhere it would time f32 under its name).
            if inferd::transformers::bf16_available() {
                variants.push((Some("bf16"), options(Engine::Native, Precision::Bf16)));
            }
        }
    }
    variants
}

fn embed(loaded: &mut LoadedEmbedding, texts: &[String]) -> usize {
    let mut ids: Vec<Vec<u32>> = texts.iter().map(|text| loaded.encoder.encode_text(text, true).unwrap()).collect();
    ids.sort_by_key(Vec::len);
    let sequences: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    loaded.model.embed(&sequences).unwrap().len()
}

pub fn bench(c: &mut Criterion, suite: &mut Suite) {
    let folder = root().join("models").join(MODEL);
    assert!(folder.join("model.safetensors").is_file(), "{} is missing: run models/fetch-models.sh", folder.display());
    let batches: &[usize] = if suite.quick { &QUICK_BATCHES } else { &BATCHES };
    for index in 0..suite.devices.len() {
        let (name, device, on_gpu) =
            (suite.devices[index].name.clone(), suite.devices[index].device.clone(), suite.devices[index].is_gpu());
        for (variant, options) in variants(suite, on_gpu) {
            let label = variant.map_or_else(|| name.clone(), |variant| format!("{name}+{variant}"));
            let mut loaded = load_embedding(&ModelSource::Folder(folder.clone()), &device, options).unwrap();
            for family in ["embeddings-short", "embeddings-medium"] {
                // One token per word, and [CLS] and [SEP].
                let words = family_tokens(family).unwrap() - 2;
                for &batch in batches {
                    let (group_id, function) = suite.id(family, MODEL, &label, batch);
                    let mut group = c.benchmark_group(group_id);
                    // A medium batch of 32 takes about a second on two CPU cores.
                    let call = Duration::from_micros((batch * words * 250) as u64);
                    suite.configure(&mut group, if on_gpu { Duration::ZERO } else { call });
                    let texts = texts(batch, words);
                    group.throughput(Throughput::Elements(batch as u64));
                    group.bench_with_input(BenchmarkId::new(function, batch), &texts, |b, texts| {
                        b.iter(|| embed(&mut loaded, texts));
                    });
                    group.finish();
                }
            }
        }
    }
}
