//! Inference for tabular models: one input tensor `input` of shape `[rows, features]`, any
//! numeric datatype; outputs chosen by the request or the model's defaults.
//!
//! Float outputs come back as `FP64` when the input was `FP64`, else as `FP32`; integer labels
//! as `INT64`, text labels as `BYTES`.

use std::time::Instant;

use inferd_core::{Rows, TabularOutput, TabularService, ValueKind, Values};

use super::codec::{DataType, InferRequest, OutputData, OutputTensor, RequestedOutput, TensorData};
use crate::error::V2Error;
use crate::timing::Timing;

/// The name of a tabular model's one input.
pub(super) const INPUT: &str = "input";

/// The datatype metadata reports for an output kind (floats at full precision).
pub(super) fn metadata_datatype(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::Float => "FP64",
        ValueKind::Int => "INT64",
        ValueKind::Text => "BYTES",
    }
}

pub(super) async fn infer(
    service: &TabularService,
    request: InferRequest,
    deadline: Option<Instant>,
    timing: &Timing,
) -> Result<Vec<OutputTensor>, V2Error> {
    let schema = service.schema();
    let input = super::single_input(request.inputs, INPUT)?;
    let TensorData::Numeric(values) = input.data else {
        return Err(V2Error::bad_request(format!("input '{INPUT}' must be numeric, not {}", input.datatype.name())));
    };
    let [n_rows, n_features] = input.shape[..] else {
        return Err(V2Error::bad_request(format!(
            "input '{INPUT}' must have shape [rows, {}], not {:?}",
            schema.n_features, input.shape
        )));
    };
    let wanted = select_outputs(service, request.outputs, request.binary_output)?;
    let rows = Rows::new(n_rows, n_features, values)?;
    let done = service.predict(rows, deadline).await?;
    timing.batch(&done.stats);
    let double = input.datatype == DataType::F64;
    let mut produced = done.output;
    let outputs = wanted
        .into_iter()
        .filter_map(|want| {
            let position = produced.iter().position(|output| output.name == want.name)?;
            Some(encode(produced.swap_remove(position), want.binary, double))
        })
        .collect();
    Ok(outputs)
}

/// The outputs to return: those the request names (each must exist), else the defaults.
fn select_outputs(
    service: &TabularService,
    requested: Option<Vec<RequestedOutput>>,
    binary_output: bool,
) -> Result<Vec<RequestedOutput>, V2Error> {
    let schema = service.schema();
    let Some(requested) = requested else {
        return Ok(schema
            .outputs
            .iter()
            .filter(|output| output.default)
            .map(|output| RequestedOutput { name: output.name.clone(), binary: binary_output })
            .collect());
    };
    for (index, output) in requested.iter().enumerate() {
        if requested[..index].iter().any(|earlier| earlier.name == output.name) {
            return Err(V2Error::bad_request(format!("output '{}' is requested twice", output.name)));
        }
        if schema.output(&output.name).is_none() {
            let names: Vec<&str> = schema.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(V2Error::bad_request(format!(
                "unknown output '{}': this model's outputs are {}",
                output.name,
                names.join(", ")
            )));
        }
    }
    Ok(requested)
}

fn encode(output: TabularOutput, binary: bool, double: bool) -> OutputTensor {
    let data = match output.values {
        Values::Float(values) if double => OutputData::F64(values),
        Values::Float(values) => OutputData::F32(values.into_iter().map(|v| v as f32).collect()),
        Values::Int(values) => OutputData::I64(values),
        Values::Text(values) => OutputData::Bytes(values.into_iter().map(String::into_bytes).collect()),
    };
    OutputTensor { name: output.name, shape: output.shape, data, binary }
}
