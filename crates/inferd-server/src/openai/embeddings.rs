//! `POST /v1/embeddings`, as OpenAI defines it.
//!
//! `input` is a string, an array of strings, an array of token ids, or an array of such
//! arrays (ids of the model's own vocabulary, without special tokens). `encoding_format` is
//! `float` (the default) or `base64` (little-endian `f32`, as the `openai` clients decode it).
//! `dimensions` shortens each embedding to its first `dimensions` values, normalised again when
//! the model normalises (sentence-transformers' `truncate_dim`; meaningful for models trained
//! for it). inferd adds `truncate` (default `true`): with `false`, an input longer than the
//! model reads is a 400 instead of being cut.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use inferd_core::{EmbeddingService, TextInput};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Caller;
use crate::embedding::{Embedded, embed};
use crate::error::OpenAiError;
use crate::error::rejected_body_message;
use crate::state::{AppState, labelled};
use crate::timing::{Stage, Timing};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    input: Value,
    model: String,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    /// Accepted for compatibility; inferd does not use it.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
    #[serde(default = "truncate_by_default")]
    truncate: bool,
}

/// The response. Floats are written as `f32` (shortest round-trip form), half the size of the
/// same values widened to `f64`.
#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: Encoded,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Encoded {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

fn truncate_by_default() -> bool {
    true
}

/// Answers `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(timing): Extension<Timing>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(&state, rejection).into_response(),
    };
    let request: EmbeddingsRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return OpenAiError::new(StatusCode::BAD_REQUEST, format!("invalid request body: {err}")).into_response();
        }
    };
    let model = request.model.clone();
    let result = run(&state, &caller, &timing, request).await;
    labelled(&state, &model, result)
}

fn body_error(state: &AppState, rejection: BytesRejection) -> OpenAiError {
    let message = rejected_body_message(&rejection, state.settings.max_body_bytes);
    OpenAiError::new(rejection.status(), message).closing_connection()
}

async fn run(
    state: &AppState,
    caller: &Caller,
    timing: &Timing,
    request: EmbeddingsRequest,
) -> Result<Response, OpenAiError> {
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OpenAiError::invalid(
                "encoding_format",
                format!("encoding_format '{other}' is not supported; use 'float' or 'base64'"),
            ));
        }
    };
    let served = state.model(caller, &request.model)?;
    let Some(service) = served.embedding() else {
        return Err(OpenAiError::invalid("model", format!("model '{}' is not an embedding model", request.model)));
    };
    let inputs = parse_input(request.input, state.settings.max_embedding_inputs)?;
    let dimensions = check_dimensions(service, request.dimensions)?;
    let deadline = timing.deadline();

    let normalized = service.info().normalized;
    timing.mark(Stage::Parse);
    let Embedded { vectors, tokens, reservation } =
        embed(state, &served, inputs, request.truncate, deadline, caller, timing).await?;
    let data: Vec<EmbeddingItem> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let vector = shorten(vector, dimensions, normalized);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                Encoded::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Encoded::Float(vector)
            };
            EmbeddingItem { object: "embedding", index, embedding }
        })
        .collect();
    let body = EmbeddingsResponse {
        object: "list",
        data,
        model: request.model,
        usage: Usage { prompt_tokens: tokens, total_tokens: tokens },
    };
    let mut response = axum::Json(body).into_response();
    timing.mark(Stage::Serialize);
    Embedded::settle(reservation, tokens, &mut response);
    Ok(response)
}

/// Reads OpenAI's four forms of `input`.
fn parse_input(input: Value, max_inputs: usize) -> Result<Vec<TextInput>, OpenAiError> {
    let invalid = |message: String| OpenAiError::invalid("input", message);
    let inputs = match input {
        Value::String(text) => vec![TextInput::Text(text)],
        Value::Array(items) if items.is_empty() => {
            return Err(invalid("'input' is an empty list: give at least one text".into()));
        }
        Value::Array(items) if items.iter().all(Value::is_number) => vec![TextInput::Ids(token_ids(&items, None)?)],
        Value::Array(items) => {
            if items.len() > max_inputs {
                return Err(invalid(format!("'input' has {} items; at most {max_inputs} are allowed", items.len())));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::String(text) => Ok(TextInput::Text(text)),
                    Value::Array(ids) => Ok(TextInput::Ids(token_ids(&ids, Some(index))?)),
                    other => Err(invalid(format!(
                        "input {index} must be a string or an array of token ids, not {}",
                        kind(&other)
                    ))),
                })
                .collect::<Result<_, _>>()?
        }
        other => {
            return Err(invalid(format!(
                "'input' must be a string, an array of strings, or token arrays, not {}",
                kind(&other)
            )));
        }
    };
    for (index, input) in inputs.iter().enumerate() {
        let empty = match input {
            TextInput::Text(text) => text.is_empty(),
            TextInput::Ids(ids) => ids.is_empty(),
        };
        if empty {
            return Err(invalid(format!("input {index} is empty")));
        }
    }
    Ok(inputs)
}

fn token_ids(items: &[Value], index: Option<usize>) -> Result<Vec<u32>, OpenAiError> {
    let place = index.map_or_else(String::new, |index| format!("input {index}: "));
    items
        .iter()
        .map(|item| {
            item.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
                OpenAiError::invalid("input", format!("{place}token ids must be non-negative integers, not {item}"))
            })
        })
        .collect()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_dimensions(service: &EmbeddingService, dimensions: Option<usize>) -> Result<Option<usize>, OpenAiError> {
    let full = service.info().dimensions;
    match dimensions {
        None => Ok(None),
        Some(d) if d == 0 || d > full => Err(OpenAiError::invalid(
            "dimensions",
            format!("dimensions must be between 1 and this model's {full}, not {d}"),
        )),
        Some(d) if d == full => Ok(None),
        Some(d) => Ok(Some(d)),
    }
}

/// The first `dimensions` values, normalised again if the model's embeddings are unit length.
fn shorten(mut vector: Vec<f32>, dimensions: Option<usize>, normalized: bool) -> Vec<f32> {
    if let Some(d) = dimensions {
        vector.truncate(d);
        if normalized {
            let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            vector.iter_mut().for_each(|v| *v /= norm);
        }
    }
    vector
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_every_input_form() {
        let text = |s: &str| TextInput::Text(s.into());
        assert_eq!(parse_input(json!("hi"), 8).unwrap(), vec![text("hi")]);
        assert_eq!(parse_input(json!(["a", "b"]), 8).unwrap(), vec![text("a"), text("b")]);
        assert_eq!(parse_input(json!([1, 2]), 8).unwrap(), vec![TextInput::Ids(vec![1, 2])]);
        assert_eq!(parse_input(json!([[1], "c"]), 8).unwrap(), vec![TextInput::Ids(vec![1]), text("c")]);
    }

    #[test]
    fn refuses_bad_inputs_clearly() {
        let message = |input: Value| format!("{:?}", parse_input(input, 2).unwrap_err());
        assert!(message(json!([])).contains("empty list"));
        assert!(message(json!("")).contains("input 0 is empty"));
        assert!(message(json!(["a", ""])).contains("input 1 is empty"));
        assert!(message(json!(["a", "b", "c"])).contains("at most 2"));
        assert!(message(json!([-1])).contains("non-negative integers"));
        assert!(message(json!([[1.5]])).contains("input 0: token ids"));
        assert!(message(json!(7)).contains("not a number"));
        assert!(message(json!([{}])).contains("input 0 must be a string"));
    }

    #[test]
    fn shortened_embeddings_are_renormalised() {
        let v = shorten(vec![3.0, 4.0, 12.0], Some(2), true);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(shorten(vec![3.0, 4.0, 12.0], Some(2), false), vec![3.0, 4.0]);
    }
}
