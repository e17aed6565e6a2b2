//! What a load test sends: the API (and so the route and how the answer is read) and the body,
//! either built in per model kind or read from a file.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The protocol a load test speaks; each has one route, relative to the server's base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Open Inference Protocol (KServe v2) `POST /v2/models/{model}/infer` with one FP32 tensor:
    /// tabular models (inferd, Triton, KServe, MLServer).
    V2,
    /// OpenAI `POST /v1/embeddings` (inferd, TEI, vLLM, llama.cpp's server).
    Embeddings,
    /// OpenAI `POST /v1/chat/completions`, streamed unless told otherwise.
    Chat,
    /// OpenAI `POST /v1/completions`, streamed unless told otherwise.
    Completions,
}

impl Api {
    /// The route for `model`.
    pub fn path(self, model: &str) -> String {
        match self {
            Self::V2 => format!("/v2/models/{model}/infer"),
            Self::Embeddings => "/v1/embeddings".to_string(),
            Self::Chat => "/v1/chat/completions".to_string(),
            Self::Completions => "/v1/completions".to_string(),
        }
    }

    /// Whether answers carry generated tokens (and so time to first token and inter-token
    /// latency mean something).
    pub fn generates(self) -> bool {
        matches!(self, Self::Chat | Self::Completions)
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V2 => "v2",
            Self::Embeddings => "embeddings",
            Self::Chat => "chat",
            Self::Completions => "completions",
        })
    }
}

impl FromStr for Api {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v2" => Ok(Self::V2),
            "embeddings" => Ok(Self::Embeddings),
            "chat" => Ok(Self::Chat),
            "completions" => Ok(Self::Completions),
            _ => Err(format!("unknown API '{s}': expected v2, embeddings, chat or completions")),
        }
    }
}

/// The shape of the built-in requests (ignored for a body read from a file, except `stream`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadSpec {
    /// Rows per v2 request, or texts per embeddings request.
    pub rows: usize,
    /// Features per row (v2 only).
    pub features: usize,
    /// Words per text or prompt; each common English word is about one token.
    pub input_words: usize,
    /// Tokens to generate per chat or completion request (`max_tokens`, with `ignore_eos` so that
    /// every request generates them all on servers that honour it).
    pub output_tokens: usize,
    /// Stream chat and completion answers (needed for time to first token).
    pub stream: bool,
}

impl Default for PayloadSpec {
    fn default() -> Self {
        Self { rows: 1, features: 4, input_words: 32, output_tokens: 64, stream: true }
    }
}

/// Ordinary words, one token each in common vocabularies; texts are drawn from them so that no
/// two requests are the same text.
const WORDS: &[&str] = &[
    "the", "server", "answers", "requests", "from", "many", "clients", "while", "its", "queue", "stays", "short",
    "and", "each", "batch", "runs", "on", "two", "cores", "with", "little", "waste", "between", "texts", "of",
    "similar", "length", "so", "delay", "remains", "low", "under", "load", "during", "busy", "hours", "a", "model",
    "reads", "every", "word", "once", "then", "writes", "new", "ones", "for", "people", "who", "wait",
];

/// `words` words of text, different for each `seed`.
pub fn text(seed: u64, words: usize) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..words)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            WORDS[(state % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A body for request number `seed`: a file's body as it is, else the built-in one for `api`.
pub fn body(api: Api, model: &str, spec: &PayloadSpec, file: Option<&Value>, seed: u64) -> Value {
    if let Some(body) = file {
        return body.clone();
    }
    match api {
        Api::V2 => {
            // Values in [0, 10): inside the range of most features after the usual scaling.
            let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let data: Vec<f32> = (0..spec.rows * spec.features)
                .map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) * 10.0
                })
                .collect();
            json!({"inputs": [{"name": "input", "shape": [spec.rows, spec.features], "datatype": "FP32", "data": data}]})
        }
        Api::Embeddings => {
            let input: Vec<String> =
                (0..spec.rows as u64).map(|row| text(seed * spec.rows as u64 + row, spec.input_words)).collect();
            json!({"model": model, "input": input})
        }
        Api::Chat | Api::Completions => {
            let prompt = text(seed, spec.input_words);
            let mut body = if api == Api::Chat {
                json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
            } else {
                json!({"model": model, "prompt": prompt})
            };
            body["max_tokens"] = json!(spec.output_tokens);
            body["temperature"] = json!(0);
            body["ignore_eos"] = json!(true);
            if spec.stream {
                body["stream"] = json!(true);
                body["stream_options"] = json!({"include_usage": true});
            }
            body
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_bodies_have_the_asked_shape() {
        let spec = PayloadSpec { rows: 3, features: 5, input_words: 7, output_tokens: 9, stream: true };
        let v2 = body(Api::V2, "m", &spec, None, 1);
        assert_eq!(v2["inputs"][0]["shape"], json!([3, 5]));
        assert_eq!(v2["inputs"][0]["data"].as_array().unwrap().len(), 15);
        assert!(v2["inputs"][0]["data"].as_array().unwrap().iter().all(|v| (0.0..10.0).contains(&v.as_f64().unwrap())));
        let embeddings = body(Api::Embeddings, "m", &spec, None, 1);
        let texts = embeddings["input"].as_array().unwrap();
        assert_eq!(texts.len(), 3);
        assert!(texts.iter().all(|t| t.as_str().unwrap().split(' ').count() == 7));
        assert_ne!(texts[0], texts[1]);
        let chat = body(Api::Chat, "m", &spec, None, 2);
        assert_eq!(chat["max_tokens"], 9);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        assert_eq!(chat["messages"][0]["content"].as_str().unwrap().split(' ').count(), 7);
        let plain = body(Api::Completions, "m", &PayloadSpec { stream: false, ..spec }, None, 2);
        assert!(plain.get("stream").is_none());
        assert_ne!(text(1, 20), text(2, 20));
    }

    #[test]
    fn a_file_body_is_sent_as_it_is() {
        let file = json!({"anything": [1, 2]});
        assert_eq!(body(Api::V2, "m", &PayloadSpec::default(), Some(&file), 5), file);
    }
}
