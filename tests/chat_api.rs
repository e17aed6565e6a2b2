//! The real server with the real SmolLM2-135M-Instruct (GGUF) over HTTP: `/v1/chat/completions`
//! and `/v1/completions` plain and streamed, sampling options, every bad input in OpenAI's error
//! shape, a disconnect freeing its sequence, and concurrent streams each getting the tokens it
//! gets alone.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{ChatStream, Server, chat_request, embedding_model, llm_model, repo, sse_events};
use serde_json::{Value, json};

const MODEL: &str = "smollm2-135m-instruct";

async fn server(extra: &str) -> Server {
    Server::start_ready(&(llm_model(extra) + &embedding_model("")), "").await
}

/// The prompt token count of the golden file's case for a conversation of one user message.
fn golden_prompt_tokens(content: &str) -> u64 {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/golden/smollm2-chat.json")).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    let case = cases
        .iter()
        .find(|case| case["messages"] == json!([{ "role": "user", "content": content }]))
        .unwrap_or_else(|| panic!("no golden case for {content:?}"));
    case["prompt_ids"].as_array().unwrap().len() as u64
}

fn chat(content: &str, extra: Value) -> Value {
    chat_request(MODEL, content, extra)
}

#[tokio::test]
async fn chat_plain_and_streamed_agree_in_openai_shape() {
    let server = server("").await;
    let response = server
        .post_json("/v1/chat/completions", &chat("What is the capital of France?", json!({ "max_tokens": 16 })))
        .await;
    assert_eq!(response.status(), 200);
    let timing = response.headers()["server-timing"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    // As many prompt tokens as llama.cpp's rendering of this conversation in the golden file.
    let prompt = golden_prompt_tokens("What is the capital of France?");
    assert_eq!(body["usage"]["prompt_tokens"], prompt);
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=16).contains(&completion));
    assert_eq!(body["usage"]["total_tokens"], prompt + completion);
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    for stage in ["parse", "tokenize", "queue", "compute", "serialize"] {
        assert!(timing.contains(stage), "{timing}");
    }

    let streamed = server
        .post_json(
            "/v1/chat/completions",
            &chat(
                "What is the capital of France?",
                json!({ "max_tokens": 16, "stream": true, "stream_options": { "include_usage": true } }),
            ),
        )
        .await;
    let stream = ChatStream::read(&sse_events(streamed).await);
    assert_eq!(stream.text(), text);
    assert_eq!(stream.finish, choice["finish_reason"].as_str().unwrap());
    assert_eq!(stream.usage.unwrap(), body["usage"]);

    // Legacy completions, with a prompt of token ids and with logprobs.
    let response = server
        .post_json(
            "/v1/completions",
            &json!({ "model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "logprobs": 3 }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "text_completion");
    let logprobs = &body["choices"][0]["logprobs"];
    let tokens = logprobs["tokens"].as_array().unwrap();
    assert_eq!(tokens.len() as u64, body["usage"]["completion_tokens"].as_u64().unwrap());
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, body["choices"][0]["text"].as_str().unwrap());
    for (chosen, top) in
        logprobs["token_logprobs"].as_array().unwrap().iter().zip(logprobs["top_logprobs"].as_array().unwrap())
    {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely.
        let best = top.values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert!((chosen.as_f64().unwrap() - best).abs() < 1e-6);
        assert!(best <= 0.0);
    }
}

#[tokio::test]
async fn sampling_options_take_effect() {
    let server = server("").await;
    let ask = |extra: Value| {
        let server = &server;
        async move {
            let response =
                server.post_json("/v1/chat/completions", &chat("Write a short poem about the sea.", extra)).await;
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["choices"][0].clone()
        }
    };
    // A seed reproduces a sampled completion; another seed (almost surely) does not.
    let seeded = json!({ "temperature": 1.0, "seed": 42, "max_tokens": 24 });
    let first = ask(seeded.clone()).await;
    assert_eq!(ask(seeded).await, first);
    let other = ask(json!({ "temperature": 1.0, "seed": 7, "max_tokens": 24 })).await;
    assert_ne!(other["message"]["content"], first["message"]["content"]);
    // top_k 1 is greedy whatever the temperature.
    let greedy = ask(json!({ "max_tokens": 24 })).await;
    assert_eq!(ask(json!({ "temperature": 1.5, "top_k": 1, "max_tokens": 24 })).await["message"], greedy["message"]);
    // A stop string ends the text before it, with finish_reason stop.
    let text = greedy["message"]["content"].as_str().unwrap();
    let word: String = text.split_whitespace().nth(2).unwrap().to_string();
    let stopped = ask(json!({ "max_tokens": 24, "stop": [word.clone()] })).await;
    let stopped_text = stopped["message"]["content"].as_str().unwrap();
    assert!(!stopped_text.contains(&word), "{stopped_text:?} contains the stop {word:?}");
    assert!(text.starts_with(stopped_text));
    assert_eq!(stopped["finish_reason"], "stop");
    // Chat logprobs: the chosen token's bytes and alternatives.
    let with_logprobs = ask(json!({ "max_tokens": 4, "logprobs": true, "top_logprobs": 5 })).await;
    let content = with_logprobs["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    for entry in content {
        assert_eq!(entry["top_logprobs"].as_array().unwrap().len(), 5);
        assert_eq!(entry["top_logprobs"][0]["token"], entry["token"]);
        let bytes: Vec<u8> = entry["bytes"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert_eq!(String::from_utf8_lossy(&bytes), entry["token"].as_str().unwrap());
    }
}

#[tokio::test]
async fn bad_input_is_a_clear_400_in_openai_shape() {
    // A short context, so that a long prompt and a large max_tokens are easy to reach.
    let server = server("context_length = 128").await;
    let long = "word ".repeat(200);
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({ "model": MODEL, "messages": [] }), "messages", "at least one message"),
        (json!({ "model": MODEL, "messages": [{ "role": "wizard", "content": "hi" }] }), "messages", "role 'wizard'"),
        (chat("hi", json!({ "max_tokens": 0 })), "max_tokens", "at least 1"),
        (chat("hi", json!({ "max_tokens": 500 })), "max_tokens", "context holds 128"),
        (chat(&long, json!({})), "messages", "context holds 128"),
        (chat("hi", json!({ "temperature": 3.0 })), "temperature", "between 0 and 2"),
        (chat("hi", json!({ "top_p": 0 })), "top_p", "top_p"),
        (chat("hi", json!({ "n": 2 })), "n", "n must be 1"),
        (chat("hi", json!({ "top_logprobs": 3 })), "top_logprobs", "needs logprobs"),
        (chat("hi", json!({ "logprobs": true, "top_logprobs": 21 })), "top_logprobs", "between 0 and 20"),
        (chat("hi", json!({ "stop": 5 })), "stop", "stop must be"),
        (chat("hi", json!({ "stop": "x".repeat(300) })), "stop", "at most 256 bytes"),
        (
            json!({ "model": MODEL, "messages": [{ "role": "user", "content": [{ "type": "image_url" }] }] }),
            "messages",
            "image_url",
        ),
        (
            json!({ "model": "all-minilm-l6-v2", "messages": [{ "role": "user", "content": "hi" }] }),
            "model",
            "does not generate",
        ),
        (json!({ "model": MODEL, "prompt": [[1, 2], [3]] }), "prompt", "one prompt"),
        (json!({ "model": MODEL, "prompt": [49152] }), "prompt", "outside the vocabulary"),
    ];
    for (body, param, needle) in cases {
        let path = if body.get("prompt").is_some() { "/v1/completions" } else { "/v1/chat/completions" };
        let response = server.post_json(path, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let response = server.post("/v1/chat/completions", "{\"model\": ").await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("invalid request body"));
    let response = server
        .post_json(
            "/v1/chat/completions",
            &json!({ "model": "nope", "messages": [{ "role": "user", "content": "hi" }] }),
        )
        .await;
    assert_eq!(response.status(), 404);
    // The server still serves.
    let response = server.post_json("/v1/chat/completions", &chat("hi", json!({ "max_tokens": 2 }))).await;
    assert_eq!(response.status(), 200);
}

/// `inferd_running_sequences` for the chat model.
async fn running(server: &Server) -> f64 {
    let metrics = server.get("/metrics").await.text().await.unwrap();
    metrics
        .lines()
        .find(|line| line.starts_with("inferd_running_sequences{") && line.contains(MODEL))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

#[tokio::test]
async fn a_client_that_disconnects_frees_its_sequence() {
    let server = server("").await;
    // Without the disconnect this would run for 4000 tokens (a minute or more).
    let body = chat("Tell me a very long story.", json!({ "max_tokens": 4000, "ignore_eos": true, "stream": true }));
    let mut response = server.post_json("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    let mut received = 0;
    while received < 5 {
        let chunk = response.chunk().await.unwrap().unwrap();
        received += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    assert_eq!(running(&server).await, 1.0);
    drop(response);
    let dropped = Instant::now();
    while running(&server).await != 0.0 {
        assert!(dropped.elapsed() < Duration::from_secs(5), "the sequence still runs after the client left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stream's end is logged as a disconnect, with the tokens it had generated.
    let log = server.wait_for_log("stream ended").await;
    assert!(log.contains("disconnected"), "{log}");
}

#[tokio::test]
async fn eight_concurrent_streams_each_get_their_own_greedy_tokens() {
    let server = server("").await;
    let prompts: Vec<String> = [
        "What is the capital of France?",
        "Name three colours.",
        "Write a haiku about autumn.",
        "What is 12 times 12?",
        "Describe a cat in one sentence.",
        "How do airplanes fly?",
        "Give me a synonym for happy.",
        "What is the boiling point of water?",
    ]
    .map(str::to_string)
    .to_vec();
    let body = |prompt: &str, stream: bool| chat(prompt, json!({ "max_tokens": 32, "stream": stream }));
    let mut alone = Vec::new();
    for prompt in &prompts {
        let response: Value =
            server.post_json("/v1/chat/completions", &body(prompt, false)).await.json().await.unwrap();
        alone.push(response["choices"][0]["message"]["content"].as_str().unwrap().to_string());
    }
    let together = futures_util::future::join_all(prompts.iter().map(|prompt| {
        let request = server.client.post(server.url("/v1/chat/completions")).json(&body(prompt, true)).send();
        async move { ChatStream::read(&sse_events(request.await.unwrap()).await).text() }
    }))
    .await;
    for (i, (alone, together)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(alone, together, "prompt {i} gave different text in a batch of 8");
    }
    // The batches really held several sequences.
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let largest = metrics
        .lines()
        .filter(|line| line.starts_with("inferd_batch_size_bucket{") && line.contains(MODEL))
        .filter_map(|line| {
            let le: f64 = line.split("le=\"").nth(1)?.split('"').next()?.parse().ok()?;
            let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect::<Vec<_>>();
    let at_most_one = largest.iter().find(|(le, _)| *le == 1.0).map_or(0.0, |(_, count)| *count);
    let all = largest.last().map_or(0.0, |(_, count)| *count);
    assert!(all > at_most_one, "no step ran more than one sequence: {largest:?}");
}
