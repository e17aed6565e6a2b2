//! A bare axum server that answers inferd's hottest routes with nothing around them: no
//! authentication, quotas, limits, metrics, logs, traces, batching or model. It parses each body
//! with serde_json as a real server must, and answers a response of the same shape and about the
//! same size as inferd's, and uses the same allocator as the `inferd` binary (mimalloc).
//! `benches/http_path.py` runs it beside inferd under the same load, so
//! that the ratio of the two is what inferd's request path costs over the HTTP stack itself.
//!
//! ```sh
//! cargo run --release --example bare_axum -- 127.0.0.1:8090
//! ```
//!
//! Routes:
//! - `POST /v2/models/{name}/infer`: a v2 request with one input tensor, JSON or binary (the
//!   `Inference-Header-Content-Length` header); answers a `label` and a `probabilities` output
//!   for each row, in JSON.
//! - `POST /v1/embeddings`: OpenAI's request; answers one 384-value vector per input.

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
struct InferRequest {
    inputs: Vec<InputTensor>,
}

#[derive(Deserialize)]
struct InputTensor {
    #[allow(dead_code)]
    name: String,
    shape: Vec<usize>,
    #[allow(dead_code)]
    datatype: String,
    #[serde(default)]
    data: Option<Vec<f64>>,
}

#[derive(Serialize)]
struct InferResponse {
    model_name: String,
    model_version: &'static str,
    outputs: Vec<OutputTensor>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutputData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Serialize)]
struct OutputTensor {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<usize>,
    data: OutputData,
}

async fn infer(Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    // A binary request's JSON header ends where the header says; the tensors follow.
    let json_length = headers
        .get("inference-header-content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<usize>().ok())
        .unwrap_or(body.len())
        .min(body.len());
    let request: InferRequest = match serde_json::from_slice(&body[..json_length]) {
        Ok(request) => request,
        Err(err) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": err.to_string()}))).into_response();
        }
    };
    let Some(input) = request.inputs.first() else {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": "no input"}))).into_response();
    };
    let rows = input.shape.first().copied().unwrap_or(0);
    let features: usize = input.data.as_ref().map_or(0, Vec::len);
    let probabilities = vec![1.0 / 3.0; rows * 3];
    let response = InferResponse {
        model_name: name,
        model_version: "1",
        outputs: vec![
            OutputTensor {
                name: "probabilities",
                datatype: "FP32",
                shape: vec![rows, 3],
                data: OutputData::F32(probabilities),
            },
            OutputTensor {
                name: "label",
                datatype: "INT64",
                shape: vec![rows],
                data: OutputData::I64(vec![(features % 3) as i64; rows]),
            },
        ],
    };
    Json(response).into_response()
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: Value,
    model: String,
}

async fn embeddings(body: Bytes) -> Response {
    let request: EmbeddingsRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": err.to_string()}))).into_response();
        }
    };
    let inputs = match &request.input {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..inputs)
        .map(|index| serde_json::json!({"object": "embedding", "index": index, "embedding": vec![0.051_f32; 384]}))
        .collect();
    Json(serde_json::json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }))
    .into_response()
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8090".to_string());
    let app = Router::new().route("/v2/models/{name}/infer", post(infer)).route("/v1/embeddings", post(embeddings));
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("bare axum server on {address}");
    axum::serve(listener, app).await
}
