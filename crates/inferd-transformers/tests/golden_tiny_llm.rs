//! Golden test: the safetensors path (Llama and Qwen2 layouts) against Hugging Face
//! transformers.
//!
//! `tests/fixtures/llm/tiny-{llama,qwen2}` are tiny random models written by
//! `models/reference/make_tiny_llm.py` with transformers' logits for every position of three
//! sequences and 8 greedy tokens. The Llama has grouped-query attention and an untied head; the
//! Qwen2 has query/key/value biases and a tied head. In `f32` the logits must agree within
//! [`TOLERANCE`] and greedy decoding must give transformers' tokens.

use std::path::{Path, PathBuf};

use inferd_core::{CausalLm, SequenceStep};
use inferd_transformers::ModelSource;
use inferd_transformers::generation::load_llama_safetensors;
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

fn check(model: &str) {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llm").join(model);
    let golden: Golden =
        serde_json::from_str(&std::fs::read_to_string(folder.join("golden.json")).expect("golden")).expect("JSON");
    let files = ModelSource::Folder(PathBuf::from(&folder)).open().expect("folder");
    let mut llama = load_llama_safetensors(&files, 2).expect("loads");
    for case in &golden.cases {
        let logits = llama.logits_of_each(&case.input_ids).expect("forward");
        let mut worst = 0f32;
        for (ours, reference) in logits.iter().zip(&case.logits) {
            for (a, b) in ours.iter().zip(reference) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst <= TOLERANCE, "{model} {}: logits differ by {worst}", case.name);

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
}

#[test]
fn tiny_llama_matches_transformers() {
    check("tiny-llama");
}

#[test]
fn tiny_qwen2_with_biases_and_a_tied_head_matches_transformers() {
    check("tiny-qwen2");
}
