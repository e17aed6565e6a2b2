//! Inference for embedding models: one `BYTES` input `text` of shape `[n]` (or `[n, 1]`), each
//! element a UTF-8 text; one `FP32` output `embedding` of shape `[n, dimensions]`. Texts longer
//! than the model reads are truncated, as on `/v1/embeddings`, and at most
//! `max_embedding_inputs` texts come in one request.

use std::sync::Arc;
use std::time::Instant;

use inferd_core::{ServedModel, TextInput};

use super::codec::{InferRequest, OutputData, OutputTensor, TensorData};
use crate::auth::Caller;
use crate::embedding::{Embedded, embed};
use crate::error::V2Error;
use crate::state::AppState;
use crate::timing::Timing;

/// The name of an embedding model's input.
pub(super) const INPUT: &str = "text";
/// The name of its output.
pub(super) const OUTPUT: &str = "embedding";

pub(super) async fn infer(
    state: &AppState,
    model: &Arc<ServedModel>,
    request: InferRequest,
    deadline: Option<Instant>,
    caller: &Caller,
    timing: &Timing,
) -> Result<(Vec<OutputTensor>, Embedded), V2Error> {
    let input = super::single_input(request.inputs, INPUT)?;
    let TensorData::Bytes(items) = input.data else {
        return Err(V2Error::bad_request(format!("input '{INPUT}' must be BYTES, not {}", input.datatype.name())));
    };
    if !matches!(input.shape[..], [_] | [_, 1]) {
        return Err(V2Error::bad_request(format!(
            "input '{INPUT}' must have shape [n] or [n, 1], not {:?}",
            input.shape
        )));
    }
    let binary = match request.outputs.as_deref() {
        None => request.binary_output,
        Some([wanted]) if wanted.name == OUTPUT => wanted.binary,
        Some(_) => return Err(V2Error::bad_request(format!("this model has one output, '{OUTPUT}'"))),
    };
    let max_inputs = state.settings.max_embedding_inputs;
    if items.len() > max_inputs {
        return Err(V2Error::bad_request(format!(
            "input '{INPUT}' has {} texts; at most {max_inputs} are allowed",
            items.len()
        )));
    }
    let mut texts = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let text = String::from_utf8(item)
            .map_err(|_| V2Error::bad_request(format!("element {index} of '{INPUT}' is not UTF-8 text")))?;
        if text.is_empty() {
            return Err(V2Error::bad_request(format!("element {index} of '{INPUT}' is empty")));
        }
        texts.push(TextInput::Text(text));
    }
    let mut embedded = embed(state, model, texts, true, deadline, caller, timing).await?;
    let vectors = std::mem::take(&mut embedded.vectors);
    let rows = vectors.len();
    let dimensions = vectors.first().map_or(0, Vec::len);
    let output = OutputTensor {
        name: OUTPUT.into(),
        shape: vec![rows, dimensions],
        data: OutputData::F32(vectors.into_iter().flatten().collect()),
        binary,
    };
    Ok((vec![output], embedded))
}
