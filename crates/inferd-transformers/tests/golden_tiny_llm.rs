//! Golden test: the safetensors path (Llama and Qwen2 layouts) against Hugging Face
//! transformers, on both engines (the native one, and the tensor one on the CPU device).
//!
//! `tests/fixtures/llm/tiny-{llama,qwen2}` are tiny random models written by
//! `models/reference/make_tiny_llm.py` with transformers' logits for every position of three
//! sequences and 8 greedy tokens. The Llama has grouped-query attention and an untied head; the
//! Qwen2 has query/key/value biases and a tied head. In `f32` the logits must agree within
//! [`TOLERANCE`] and greedy decoding must give transformers' tokens. The same sequences in one
//! batch, or prefilled then decoded, must give the logits they give alone and token by token.

use std::path::{Path, PathBuf};

use inferd_core::{CausalLm, InferError, SequenceStep};
use inferd_transformers::generation::{load_llama_safetensors, load_tensor_llama_safetensors};
use inferd_transformers::{ModelFiles, ModelSource};
use serde::Deserialize;

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy_ids: Vec<u32>,
}

fn fixture(model: &str) -> (Golden, ModelFiles) {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llm").join(model);
    let golden: Golden =
        serde_json::from_str(&std::fs::read_to_string(folder.join("golden.json")).expect("golden")).expect("JSON");
    let files = ModelSource::Folder(PathBuf::from(&folder)).open().expect("folder");
    (golden, files)
}

fn difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
}

/// Logits after every token of `tokens`, fed one at a time to a fresh cache.
fn logits_of_each<M: CausalLm>(llama: &mut M, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = llama.new_cache();
    tokens
        .iter()
        .map(|&token| {
            let mut step = [SequenceStep { cache: &mut cache, tokens: std::slice::from_ref(&token) }];
            llama.forward(&mut step).expect("forward").remove(0)
        })
        .collect()
}

/// Checks every case against transformers; returns the largest logit difference.
fn check<M: CausalLm>(model: &str, golden: &Golden, llama: &mut M) -> f32 {
    let mut worst_of_all = 0f32;
    for case in &golden.cases {
        let logits = logits_of_each(llama, &case.input_ids);
        let worst =
            logits.iter().zip(&case.logits).map(|(ours, reference)| difference(ours, reference)).fold(0f32, f32::max);
        assert!(worst <= TOLERANCE, "{model} {}: logits differ by {worst}", case.name);
        worst_of_all = worst_of_all.max(worst);

        // Greedy: prefill the whole input in one pass, then one token per step.
        let mut cache = llama.new_cache();
        let mut tokens = case.input_ids.clone();
        let mut generated = Vec::new();
        for _ in 0..case.greedy_ids.len() {
            let mut batch = [SequenceStep { cache: &mut cache, tokens: &tokens }];
            let logits = llama.forward(&mut batch).expect("forward").remove(0);
            let id = inferd_core::generation::sampling::argmax(&logits);
            generated.push(id);
            tokens = vec![id];
        }
        assert_eq!(generated, case.greedy_ids, "{model} {}: greedy tokens", case.name);
    }
    eprintln!("{model}: logits within {worst_of_all:e} of transformers");
    worst_of_all
}

/// The cases' sequences (of different lengths) prefilled together and then decoded together
/// must give the logits each gives alone, and a prefill the logits of feeding its tokens one
/// by one; returns the largest difference.
fn check_batch<M: CausalLm>(model: &str, golden: &Golden, llama: &mut M) -> f32 {
    let prompts: Vec<&[u32]> = golden.cases.iter().map(|case| case.input_ids.as_slice()).collect();
    assert!(prompts.len() >= 3 && prompts.iter().any(|p| p.len() == 1) && prompts.iter().any(|p| p.len() > 8));
    let next = 7u32;
    let mut worst = 0f32;
    let mut alone = Vec::new();
    for prompt in &prompts {
        let mut cache = llama.new_cache();
        let first =
            llama.forward(&mut [SequenceStep { cache: &mut cache, tokens: prompt }]).expect("forward").remove(0);
        let second =
            llama.forward(&mut [SequenceStep { cache: &mut cache, tokens: &[next] }]).expect("forward").remove(0);
        let one_by_one = logits_of_each(llama, &[prompt.to_vec(), vec![next]].concat());
        worst = worst.max(difference(&first, &one_by_one[prompt.len() - 1]));
        worst = worst.max(difference(&second, &one_by_one[prompt.len()]));
        alone.push((first, second));
    }
    let mut caches: Vec<M::Cache> = prompts.iter().map(|_| llama.new_cache()).collect();
    let mut batch: Vec<SequenceStep<'_, M::Cache>> =
        caches.iter_mut().zip(&prompts).map(|(cache, tokens)| SequenceStep { cache, tokens }).collect();
    let firsts = llama.forward(&mut batch).expect("forward");
    let nexts = [next];
    let mut batch: Vec<SequenceStep<'_, M::Cache>> =
        caches.iter_mut().map(|cache| SequenceStep { cache, tokens: &nexts }).collect();
    let seconds = llama.forward(&mut batch).expect("forward");
    for (i, (first, second)) in alone.iter().enumerate() {
        worst = worst.max(difference(&firsts[i], first)).max(difference(&seconds[i], second));
    }
    assert!(worst <= TOLERANCE, "{model}: batched or prefilled logits differ by {worst}");
    eprintln!("{model}: batched and prefilled logits within {worst:e} of alone and token by token");
    worst
}

#[test]
fn tiny_llama_matches_transformers() {
    let (golden, files) = fixture("tiny-llama");
    let mut llama = load_llama_safetensors(&files, 2).expect("loads");
    check("tiny-llama", &golden, &mut llama);
    check_batch("tiny-llama", &golden, &mut llama);
}

#[test]
fn tiny_qwen2_with_biases_and_a_tied_head_matches_transformers() {
    let (golden, files) = fixture("tiny-qwen2");
    let mut llama = load_llama_safetensors(&files, 2).expect("loads");
    check("tiny-qwen2", &golden, &mut llama);
    check_batch("tiny-qwen2", &golden, &mut llama);
}

#[test]
fn tiny_llama_on_the_tensor_engine_matches_transformers() {
    let (golden, files) = fixture("tiny-llama");
    let mut llama = load_tensor_llama_safetensors(&files, &inferd_core::Device::Cpu).expect("loads");
    check("tiny-llama (candle)", &golden, &mut llama);
    check_batch("tiny-llama (candle)", &golden, &mut llama);
}

#[test]
fn tiny_qwen2_on_the_tensor_engine_matches_transformers() {
    let (golden, files) = fixture("tiny-qwen2");
    let mut llama = load_tensor_llama_safetensors(&files, &inferd_core::Device::Cpu).expect("loads");
    check("tiny-qwen2 (candle)", &golden, &mut llama);
    check_batch("tiny-qwen2 (candle)", &golden, &mut llama);
}

#[test]
fn the_tensor_engine_refuses_what_does_not_fit() {
    let (_, files) = fixture("tiny-llama");
    let mut llama = load_tensor_llama_safetensors(&files, &inferd_core::Device::Cpu).expect("loads");
    let context = llama.config().context_length;
    let vocab = llama.config().vocab_size as u32;
    let mut cache = llama.new_cache();
    let err = llama.forward(&mut [SequenceStep { cache: &mut cache, tokens: &[1, vocab] }]).unwrap_err();
    assert!(matches!(err, InferError::InvalidInput(_)), "{err:?}");
    assert!(cache.is_empty());
    let long = vec![1u32; context + 1];
    assert!(llama.forward(&mut [SequenceStep { cache: &mut cache, tokens: &long }]).is_err());
    llama.forward(&mut [SequenceStep { cache: &mut cache, tokens: &long[..context] }]).expect("a full context");
    assert_eq!(cache.len(), context);
    assert!(llama.forward(&mut [SequenceStep { cache: &mut cache, tokens: &[1] }]).is_err());
}
