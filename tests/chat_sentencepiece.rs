//! A SentencePiece GGUF model through the real server: a llama-architecture file that carries
//! Phi-3's vocabulary (`tokenizer.ggml.model = llama`, 32,064 pieces with byte fallback) and its
//! chat template, and no `tokenizer.json`, as Llama 2, Mistral, TinyLlama and Phi-3 GGUF files
//! come.
//!
//! No such model can be downloaded here, so the test writes one: the vocabulary and template
//! from llama.cpp's vocabulary file for Phi-3 (`models/fetch-models.sh` fetches it), two small
//! random layers, and embeddings and an output head made so that greedy decoding spells a known
//! answer whatever the prompt: every token but the answer's is embedded as one unit vector,
//! each answer token as another, and the head maps each of those vectors to the next answer
//! token, the last to the end-of-text token. The layers' weights are small, so they perturb the
//! hidden state without changing which logit wins. What is checked is the serving path of such
//! a model (tokenizer and template built from the file, text and streamed text, byte tokens,
//! end of text), not its arithmetic (the golden tests cover that).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::{ChatStream, Server, chat_request, sse_events};
use serde_json::{Value as Json, json};

const MODEL: &str = "tiny-phi3-vocab";
/// The answer's tokens, in Phi-3's (Llama 2's) vocabulary: ` Paris, France.☕`, the cup written
/// as its three UTF-8 bytes.
const ANSWER: [&str; 7] = ["\u{2581}Paris", ",", "\u{2581}France", ".", "<0xE2>", "<0x98>", "<0x95>"];
const ANSWER_TEXT: &str = " Paris, France.\u{2615}";
const HIDDEN: usize = 64;
const FEED_FORWARD: usize = 128;
const LAYERS: usize = 2;

/// A deterministic pseudo-random sequence in [-scale, scale).
fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(values: Vec<f32>, shape: &[usize], dtype: GgmlDType) -> QTensor {
    QTensor::quantize(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap(), dtype).unwrap()
}

/// Writes the model to `path`; returns the answer's token ids.
fn write_model(path: &Path) -> Vec<u32> {
    let vocabulary = common::repo().join("models/llama-cpp-models/ggml-vocab-phi-3.gguf");
    assert!(vocabulary.is_file(), "{} is missing: run models/fetch-models.sh", vocabulary.display());
    let mut file = std::fs::File::open(&vocabulary).unwrap();
    let source = gguf_file::Content::read(&mut file).unwrap();
    let tokens: Vec<String> = source.metadata["tokenizer.ggml.tokens"]
        .to_vec()
        .unwrap()
        .iter()
        .map(|token| token.to_string().unwrap().clone())
        .collect();
    let eos = source.metadata["tokenizer.ggml.eos_token_id"].to_u32().unwrap();
    let index: HashMap<&str, u32> = tokens.iter().enumerate().map(|(id, token)| (token.as_str(), id as u32)).collect();
    let answer: Vec<u32> = ANSWER.iter().map(|token| index[token]).collect();
    let vocab = tokens.len();

    // Token embeddings: unit vector 0 for every token outside the answer, 1 + i for answer
    // token i. The head: answer token 0 after vector 0, answer token i + 1 after vector 1 + i,
    // end of text after the last.
    let mut embeddings = vec![0f32; vocab * HIDDEN];
    for token in 0..vocab {
        let unit = answer.iter().position(|&id| id as usize == token).map_or(0, |i| 1 + i);
        embeddings[token * HIDDEN + unit] = 1.0;
    }
    let mut head = vec![0f32; vocab * HIDDEN];
    for (unit, &next) in answer.iter().chain([&eos]).enumerate() {
        head[next as usize * HIDDEN + unit] = 4.0;
    }

    let mut tensors = vec![
        ("token_embd.weight".to_string(), tensor(embeddings, &[vocab, HIDDEN], GgmlDType::Q8_0)),
        ("output.weight".to_string(), tensor(head, &[vocab, HIDDEN], GgmlDType::Q8_0)),
        ("output_norm.weight".to_string(), tensor(vec![1.0; HIDDEN], &[HIDDEN], GgmlDType::F32)),
    ];
    for layer in 0..LAYERS {
        let seed = layer as u64 * 16;
        let matrices = [
            ("attn_q", HIDDEN, HIDDEN),
            ("attn_k", HIDDEN / 2, HIDDEN),
            ("attn_v", HIDDEN / 2, HIDDEN),
            ("attn_output", HIDDEN, HIDDEN),
            ("ffn_gate", FEED_FORWARD, HIDDEN),
            ("ffn_up", FEED_FORWARD, HIDDEN),
            ("ffn_down", HIDDEN, FEED_FORWARD),
        ];
        for (i, (name, rows, columns)) in matrices.into_iter().enumerate() {
            let values = noise(rows * columns, seed + i as u64, 0.05);
            tensors.push((format!("blk.{layer}.{name}.weight"), tensor(values, &[rows, columns], GgmlDType::Q4_1)));
        }
        for name in ["attn_norm", "ffn_norm"] {
            tensors.push((format!("blk.{layer}.{name}.weight"), tensor(vec![1.0; HIDDEN], &[HIDDEN], GgmlDType::F32)));
        }
    }

    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(MODEL.into())),
        ("llama.block_count".into(), Value::U32(LAYERS as u32)),
        ("llama.context_length".into(), Value::U32(512)),
        ("llama.embedding_length".into(), Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length".into(), Value::U32(FEED_FORWARD as u32)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        ("llama.rope.dimension_count".into(), Value::U32(16)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
    ];
    metadata.extend(
        source.metadata.iter().filter(|(key, _)| key.starts_with("tokenizer.")).map(|(k, v)| (k.clone(), v.clone())),
    );
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    answer
}

async fn server(dir: &Path) -> Server {
    let path = dir.join("tiny.gguf");
    write_model(&path);
    let models = format!(
        "[[models]]\nname = \"{MODEL}\"\nkind = \"llm\"\npath = \"{}\"\ndevice = \"cpu\"\nthreads = 1\n",
        path.display()
    );
    Server::start_ready(&models, "").await
}

fn chat(content: &str, extra: Json) -> Json {
    chat_request(MODEL, content, extra)
}

#[tokio::test]
async fn a_sentencepiece_gguf_without_tokenizer_json_serves_chat_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;

    // Chat, with the template from the file: `<s><|user|>\n…<|end|>\n<|assistant|>\n`, where
    // llama.cpp's tokenizer puts a `▁` after each special token: <s> <|user|> ▁ \n Where ▁is ▁the
    // ▁E iff el ▁Tower ? <|end|> ▁ \n <|assistant|> ▁ \n.
    let response = server.post_json("/v1/chat/completions", &chat("Where is the Eiffel Tower?", json!({}))).await;
    assert_eq!(response.status(), 200);
    let body: Json = response.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["content"], ANSWER_TEXT, "{body}");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 18, "{body}");
    // The answer's 7 tokens (the end-of-text token that ends it is not text, and not counted).
    assert_eq!(body["usage"]["completion_tokens"], 7, "{body}");

    // Streamed: the same text, the cup's three byte tokens arriving as one whole character.
    let streamed = server
        .post_json(
            "/v1/chat/completions",
            &chat("Where is the Eiffel Tower?", json!({ "stream": true, "stream_options": { "include_usage": true } })),
        )
        .await;
    let stream = ChatStream::read(&sse_events(streamed).await);
    let deltas = &stream.deltas;
    assert_eq!(stream.text(), ANSWER_TEXT);
    assert!(deltas.iter().any(|delta| delta == "\u{2615}"), "{deltas:?}");
    assert!(deltas.iter().all(|delta| !delta.contains('\u{FFFD}')), "{deltas:?}");
    assert_eq!(stream.finish, "stop");
    assert_eq!(stream.usage.unwrap(), body["usage"]);

    // Completions: `Hello world` is `<s> ▁Hello ▁world` (BOS from `add_bos_token`); the text
    // keeps the first token's space, and the logprobs' tokens spell it.
    let response = server
        .post_json(
            "/v1/completions",
            &json!({ "model": MODEL, "prompt": "Hello world", "max_tokens": 4, "temperature": 0, "logprobs": 1 }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Json = response.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 3, "{body}");
    assert_eq!(body["choices"][0]["text"], " Paris, France.", "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let tokens: Vec<&str> =
        body["choices"][0]["logprobs"]["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens, [" Paris", ",", " France", "."]);
}
