//! Golden test: all-MiniLM-L6-v2 against sentence-transformers' own output.
//!
//! `tests/golden/all-minilm-l6-v2.json` holds texts (short, medium, past max_seq_length,
//! unicode, code, whitespace-only), the token ids sentence-transformers fed the model, and its
//! embeddings; `models/reference/make_embeddings.py` wrote it. Every engine must give the same
//! ids and embeddings with cosine similarity of at least 0.9999 to the reference (0.9995 in bf16),
//! one text at a time and all together in sub-batches.
//!
//! The model comes from `models/fetch-models.sh` (the test command runs it first).

use std::path::{Path, PathBuf};

use inferd_core::{Device, Engine, Precision, TextEncoder};
use inferd_transformers::embedding::cosine;
use inferd_transformers::{EmbeddingOptions, LoadedEmbedding, ModelSource, load_embedding};
use serde::Deserialize;

const MIN_COSINE: f64 = 0.9999;

/// The same in bf16: the dense layers' weights and activations keep 8 significant bits.
const MIN_COSINE_BF16: f64 = 0.9995;

#[derive(Deserialize)]
struct Golden {
    max_seq_length: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    token_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> Golden {
    let path = root().join("tests/golden/all-minilm-l6-v2.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("golden file")).expect("golden JSON")
}

fn load(engine: Engine) -> LoadedEmbedding {
    load_at(engine, None)
}

fn load_at(engine: Engine, precision: Option<Precision>) -> LoadedEmbedding {
    let folder = root().join("models/all-minilm-l6-v2");
    assert!(folder.join("model.safetensors").is_file(), "{} is missing: run models/fetch-models.sh", folder.display());
    let options = EmbeddingOptions { engine: Some(engine), precision, ..EmbeddingOptions::default() };
    load_embedding(&ModelSource::Folder(folder), &Device::Cpu, options).expect("model loads")
}

fn check_engine(engine: Engine) {
    check(load(engine), MIN_COSINE);
}

fn check(mut loaded: LoadedEmbedding, min_cosine: f64) {
    let golden = golden();
    assert!(golden.cases.len() >= 30);
    let (engine, precision) = (loaded.engine, loaded.precision);
    assert_eq!(loaded.info.max_seq_length, golden.max_seq_length);
    assert_eq!(loaded.info.dimensions, 384);

    let mut sequences = Vec::new();
    let mut worst = (1.0f64, String::new());
    for case in &golden.cases {
        let ids = loaded.encoder.encode_text(&case.text, true).expect("encodes");
        assert_eq!(ids, case.token_ids, "{}: token ids", case.name);
        let got = loaded.model.embed(&[&ids]).expect("embeds").remove(0);
        let similarity = cosine(&got, &case.embedding);
        assert!(similarity >= min_cosine, "{}: cosine {similarity}", case.name);
        if similarity < worst.0 {
            worst = (similarity, case.name.clone());
        }
        sequences.push(ids);
    }
    eprintln!(
        "{engine:?} {}, {} kernels: lowest cosine one by one 1 - {:.1e} ({})",
        precision.name(),
        inferd_core::cpu_level(),
        1.0 - worst.0,
        worst.1
    );

    // All together, shortest first, as the batcher runs them: padding (tensor engine) and the
    // end-to-end layout (native engine) must not change any embedding.
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&index| sequences[index].len());
    for chunk in order.chunks(16) {
        let batch: Vec<&[u32]> = chunk.iter().map(|&index| sequences[index].as_slice()).collect();
        let vectors = loaded.model.embed(&batch).expect("embeds a batch");
        for (&index, vector) in chunk.iter().zip(&vectors) {
            let case = &golden.cases[index];
            let similarity = cosine(vector, &case.embedding);
            assert!(similarity >= min_cosine, "{} in a batch: cosine {similarity}", case.name);
        }
    }
}

#[test]
fn native_engine_matches_sentence_transformers() {
    check_engine(Engine::Native);
}

#[test]
fn native_engine_in_bf16_matches_sentence_transformers_or_falls_back_to_f32() {
    let loaded = load_at(Engine::Native, Some(Precision::Bf16));
    if inferd_transformers::bf16_available() {
        assert_eq!(loaded.precision, Precision::Bf16);
        // The label is not enough: the vectors must be bf16's, not f32's.
        let mut f32_model = load(Engine::Native);
        let mut bf16_model = load_at(Engine::Native, Some(Precision::Bf16));
        let ids = golden().cases[0].token_ids.clone();
        let a = f32_model.model.embed(&[&ids]).expect("embeds");
        let b = bf16_model.model.embed(&[&ids]).expect("embeds");
        assert_ne!(a, b, "bf16 gave f32's embedding bit for bit");
        check(loaded, MIN_COSINE_BF16);
    } else {
        eprintln!("bf16 skipped: no AVX-512 BF16 at this CPU level; checking the fall-back to f32");
        assert_eq!(loaded.precision, Precision::F32);
        check(loaded, MIN_COSINE);
    }
}

#[test]
fn tensor_engine_matches_sentence_transformers() {
    check_engine(Engine::Tensor);
}

#[test]
fn truncation_and_token_arrays() {
    let golden = golden();
    let loaded = load(Engine::Native);
    let long =
        golden.cases.iter().find(|case| case.token_ids.len() == golden.max_seq_length).expect("a truncated case");
    let err = loaded.encoder.encode_text(&long.text, false).unwrap_err().to_string();
    assert!(err.contains("truncation is off"), "{err}");
    // Token arrays get the same special tokens as text.
    let short = &golden.cases[0];
    let content = &short.token_ids[1..short.token_ids.len() - 1];
    assert_eq!(loaded.encoder.encode_ids(content, true).unwrap(), short.token_ids);
    let err = loaded.encoder.encode_ids(&[5, 1_000_000], true).unwrap_err().to_string();
    assert!(err.contains("token id 1000000 is outside"), "{err}");
    let too_many = vec![1000u32; golden.max_seq_length];
    assert_eq!(loaded.encoder.encode_ids(&too_many, true).unwrap().len(), golden.max_seq_length);
    assert!(loaded.encoder.encode_ids(&too_many, false).is_err());
}

/// A tiny model folder written by sentence-transformers 6 (`models/reference/make_tiny_encoders.py`),
/// with that library's own embeddings in `golden.json`.
#[derive(Deserialize)]
struct TinyGolden {
    normalize: bool,
    max_seq_length: usize,
    dimension: usize,
    cases: Vec<TinyCase>,
}

#[derive(Deserialize)]
struct TinyCase {
    text: String,
    token_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn norm(vector: &[f32]) -> f64 {
    vector.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

/// Folders saved by today's sentence-transformers (6.x module paths, one `pooling_mode`, the
/// sequence length in the tokenizer's configuration) load and match it, on both engines: mean
/// pooling with `Normalize`, and CLS pooling without.
#[test]
fn folders_saved_by_sentence_transformers_6_match_it() {
    for name in ["st6-bert-mean", "st6-bert-cls"] {
        let folder = root().join("tests/fixtures/encoders").join(name);
        let golden: TinyGolden =
            serde_json::from_str(&std::fs::read_to_string(folder.join("golden.json")).expect("golden file"))
                .expect("golden JSON");
        for engine in [Engine::Native, Engine::Tensor] {
            let options = EmbeddingOptions { engine: Some(engine), ..EmbeddingOptions::default() };
            let mut loaded = load_embedding(&ModelSource::Folder(folder.clone()), &Device::Cpu, options)
                .unwrap_or_else(|err| panic!("{name} loads: {err}"));
            assert_eq!(loaded.info.max_seq_length, golden.max_seq_length, "{name}");
            assert_eq!(loaded.info.dimensions, golden.dimension, "{name}");
            let mut sequences = Vec::new();
            for case in &golden.cases {
                let ids = loaded.encoder.encode_text(&case.text, true).expect("encodes");
                assert_eq!(ids, case.token_ids, "{name}, {:?}: token ids", case.text);
                sequences.push(ids);
            }
            let batch: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
            let vectors = loaded.model.embed(&batch).expect("embeds");
            for (case, vector) in golden.cases.iter().zip(&vectors) {
                let similarity = cosine(vector, &case.embedding);
                assert!(similarity >= MIN_COSINE, "{name} ({engine:?}), {:?}: cosine {similarity}", case.text);
                let (got, want) = (norm(vector), norm(&case.embedding));
                assert!(
                    (got - want).abs() <= 1e-4 * want,
                    "{name} ({engine:?}), {:?}: norm {got} against {want}",
                    case.text
                );
                if golden.normalize {
                    assert!((got - 1.0).abs() < 1e-5, "{name}: not normalised ({got})");
                }
            }
        }
    }
}
