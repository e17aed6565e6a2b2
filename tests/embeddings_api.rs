//! The real server with the real all-MiniLM-L6-v2 over HTTP: `/v1/embeddings` in every input
//! and encoding form, the same model through `/v2/models/{name}/infer`, `/v1/models`, every
//! rejection in OpenAI's error shape, batches forming under concurrent clients, and
//! `precision = "bf16"` (or its fall-back to `f32`).

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::{Server, bundled_model, embedding_model};
use serde_json::{Value, json};

const MODEL: &str = "all-minilm-l6-v2";

#[derive(serde::Deserialize)]
struct Golden {
    max_seq_length: usize,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    token_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn golden() -> Golden {
    let path = common::repo().join("tests/golden/all-minilm-l6-v2.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

async fn server(settings: &str) -> Server {
    let models = embedding_model("") + &bundled_model("iris-logistic", "");
    Server::start_ready(&models, settings).await
}

#[tokio::test]
async fn embeddings_match_sentence_transformers_in_every_form() {
    let golden = golden();
    let server = server("").await;

    // One string.
    let case = &golden.cases[0];
    let response = server.post_json("/v1/embeddings", &json!({ "model": MODEL, "input": case.text })).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("server-timing"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["index"], 0);
    let embedding = floats(&body["data"][0]["embedding"]);
    assert_eq!(embedding.len(), 384);
    assert!(cosine(&embedding, &case.embedding) >= 0.9999);
    assert_eq!(body["usage"]["prompt_tokens"], case.token_ids.len());
    assert_eq!(body["usage"]["total_tokens"], case.token_ids.len());

    // A list, as base64 (little-endian f32).
    let texts: Vec<&str> = golden.cases.iter().take(8).map(|case| case.text.as_str()).collect();
    let request = json!({ "model": MODEL, "input": texts, "encoding_format": "base64" });
    let body: Value = server.post_json("/v1/embeddings", &request).await.json().await.unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 8);
    let mut tokens = 0;
    for (item, case) in data.iter().zip(&golden.cases) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(item["embedding"].as_str().unwrap()).unwrap();
        let vector: Vec<f32> = bytes.chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert!(cosine(&vector, &case.embedding) >= 0.9999);
        tokens += case.token_ids.len();
    }
    assert_eq!(body["usage"]["prompt_tokens"], tokens);

    // Token arrays: the content ids, without [CLS] and [SEP], give the text's embedding.
    let content: Vec<u32> = case.token_ids[1..case.token_ids.len() - 1].to_vec();
    for input in [json!(content), json!([content])] {
        let body: Value =
            server.post_json("/v1/embeddings", &json!({ "model": MODEL, "input": input })).await.json().await.unwrap();
        assert!(cosine(&floats(&body["data"][0]["embedding"]), &case.embedding) >= 0.9999);
    }

    // Shortened, and normalised again.
    let request = json!({ "model": MODEL, "input": case.text, "dimensions": 128 });
    let body: Value = server.post_json("/v1/embeddings", &request).await.json().await.unwrap();
    let short = floats(&body["data"][0]["embedding"]);
    assert_eq!(short.len(), 128);
    assert!((short.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-4);

    // Texts past max_seq_length are truncated, unless the request says not to.
    let long = golden.cases.iter().find(|case| case.token_ids.len() == golden.max_seq_length).unwrap();
    let body: Value =
        server.post_json("/v1/embeddings", &json!({ "model": MODEL, "input": long.text })).await.json().await.unwrap();
    assert!(cosine(&floats(&body["data"][0]["embedding"]), &long.embedding) >= 0.9999);
    assert_eq!(body["usage"]["prompt_tokens"], golden.max_seq_length);
}

#[tokio::test]
async fn the_same_model_answers_the_open_inference_protocol_and_is_listed() {
    let golden = golden();
    let server = server("").await;
    let texts: Vec<&str> = golden.cases.iter().take(3).map(|case| case.text.as_str()).collect();
    let request = json!({ "inputs": [{ "name": "text", "shape": [3], "datatype": "BYTES", "data": texts }] });
    let response = server.post_json(&format!("/v2/models/{MODEL}/infer"), &request).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let output = &body["outputs"][0];
    assert_eq!(output["name"], "embedding");
    assert_eq!(output["datatype"], "FP32");
    assert_eq!(output["shape"], json!([3, 384]));
    let values = floats(&output["data"]);
    for (row, case) in values.chunks(384).zip(&golden.cases) {
        assert!(cosine(row, &case.embedding) >= 0.9999);
    }

    let metadata: Value = server.get(&format!("/v2/models/{MODEL}")).await.json().await.unwrap();
    assert_eq!(metadata["inputs"][0]["datatype"], "BYTES");
    assert_eq!(metadata["outputs"][0]["shape"], json!([-1, 384]));
    assert_eq!(metadata["parameters"]["max_seq_length"], 256);

    let models: Value = server.get("/v1/models").await.json().await.unwrap();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&MODEL) && ids.contains(&"iris-logistic"), "{ids:?}");
    let one: Value = server.get(&format!("/v1/models/{MODEL}")).await.json().await.unwrap();
    assert_eq!(one["object"], "model");
    assert_eq!(server.get("/v1/models/nope").await.status(), 404);
}

#[tokio::test]
async fn bf16_is_served_where_the_cpu_has_it_and_f32_elsewhere() {
    let golden = golden();
    let entry =
        embedding_model("precision = \"bf16\"").replace(&format!("name = \"{MODEL}\""), "name = \"minilm-bf16\"");
    let server = Server::start_ready(&entry, "").await;
    let metadata: Value = server.get("/v2/models/minilm-bf16").await.json().await.unwrap();
    let engine = metadata["parameters"]["engine"].as_str().unwrap();
    // The server inherits this process's INFERD_CPU, so both see the same CPU level.
    let runs = if inferd::transformers::bf16_available() { "native (bf16, avx512)" } else { "native (f32, " };
    assert!(engine.starts_with(runs), "{engine}");
    if !engine.contains("bf16") {
        server.wait_for_log("bf16 asked for").await; // the fall-back to f32 is logged
    }
    let texts: Vec<&str> = golden.cases.iter().take(8).map(|case| case.text.as_str()).collect();
    let response = server.post_json("/v1/embeddings", &json!({ "model": "minilm-bf16", "input": texts })).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), texts.len());
    for (item, case) in data.iter().zip(&golden.cases) {
        let similarity = cosine(&floats(&item["embedding"]), &case.embedding);
        assert!(similarity >= 0.9995, "{}: cosine {similarity}", case.text);
    }
}

#[tokio::test]
async fn bad_requests_get_clear_openai_errors() {
    let golden = golden();
    let server = server("max_body_bytes = 65536\nmax_embedding_inputs = 4").await;
    let long = golden.cases.iter().find(|case| case.token_ids.len() == golden.max_seq_length).unwrap();
    let cases = [
        (json!({ "model": MODEL, "input": [] }), 400, "empty list"),
        (json!({ "model": MODEL, "input": "" }), 400, "input 0 is empty"),
        (json!({ "model": MODEL, "input": ["a", "b", "c", "d", "e"] }), 400, "at most 4"),
        (json!({ "model": MODEL, "input": [[101, 99999999]] }), 400, "outside this model's vocabulary"),
        (json!({ "model": MODEL, "input": [-3] }), 400, "non-negative integers"),
        (json!({ "model": MODEL, "input": 5 }), 400, "must be a string"),
        (json!({ "model": MODEL, "input": long.text, "truncate": false }), 400, "truncation is off"),
        (json!({ "model": MODEL, "input": "hi", "encoding_format": "int8" }), 400, "encoding_format"),
        (json!({ "model": MODEL, "input": "hi", "dimensions": 1000 }), 400, "dimensions"),
        (json!({ "model": "nope", "input": "hi" }), 404, "not served here"),
        (json!({ "model": "iris-logistic", "input": "hi" }), 400, "not an embedding model"),
        (json!({ "model": MODEL }), 400, "input"),
        (json!({ "model": MODEL, "input": "hi", "colour": "blue" }), 400, "colour"),
    ];
    for (request, status, message) in cases {
        let response = server.post_json("/v1/embeddings", &request).await;
        assert_eq!(response.status(), status, "{request}");
        let body: Value = response.json().await.unwrap();
        let error = &body["error"];
        assert!(error["message"].as_str().unwrap().contains(message), "{request}: {body}");
        assert!(error["type"].is_string(), "{body}");
    }
    let response = server.post("/v1/embeddings", "{not json").await;
    assert_eq!(response.status(), 400);
    let huge = json!({ "model": MODEL, "input": "word ".repeat(20_000) });
    let response = server.post_json("/v1/embeddings", &huge).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("length limit"));
    // The server still serves.
    let response = server.post_json("/v1/embeddings", &json!({ "model": MODEL, "input": "still here" })).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn batches_form_under_concurrent_clients() {
    let golden = golden();
    // 32 clients at once queue more than 100 ms of work on a debug build of two cores, which
    // the default max_queue_time would refuse (tests/v2_api.rs tests that): this test is about
    // batching, so every request is admitted.
    let models = embedding_model("batching = { max_queue_time = \"1h\" }");
    let server = Server::start_ready(&models, "").await;
    let texts: Vec<String> = golden.cases.iter().map(|case| case.text.clone()).collect();
    let mut tasks = Vec::new();
    for client in 0..32 {
        let http = server.client.clone();
        let url = server.url("/v1/embeddings");
        let texts = texts.clone();
        tasks.push(tokio::spawn(async move {
            let mut largest = 0;
            for round in 0..4 {
                let text = &texts[(client + round) % texts.len()];
                let response = http.post(&url).json(&json!({ "model": MODEL, "input": text })).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let batch: usize = response.headers()["inferd-batch-size"].to_str().unwrap().parse().unwrap();
                largest = largest.max(batch);
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
            }
            largest
        }));
    }
    let mut largest = 0;
    for task in tasks {
        largest = largest.max(task.await.unwrap());
    }
    assert!(largest > 1, "32 concurrent clients never shared a batch");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let count_line = metrics
        .lines()
        .find(|line| line.starts_with("inferd_batch_size_count") && line.contains(MODEL))
        .unwrap_or_else(|| panic!("no batch size histogram for {MODEL}:\n{metrics}"));
    let batches: f64 = count_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(batches < 128.0, "128 requests ran in {batches} batches: none shared");
}
