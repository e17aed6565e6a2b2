//! The Open Inference Protocol's tensor encoding, both ways: JSON `data` arrays and the binary
//! tensor data extension (a JSON header of `Inference-Header-Content-Length` bytes followed by
//! raw little-endian tensors, as `tritonclient` sends by default).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Tensor element types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// `BOOL`, one byte.
    Bool,
    /// `UINT8`.
    U8,
    /// `UINT16`.
    U16,
    /// `UINT32`.
    U32,
    /// `UINT64`.
    U64,
    /// `INT8`.
    I8,
    /// `INT16`.
    I16,
    /// `INT32`.
    I32,
    /// `INT64`.
    I64,
    /// `FP16`.
    F16,
    /// `FP32`.
    F32,
    /// `FP64`.
    F64,
    /// `BYTES`: each element a byte string, length-prefixed in binary form.
    Bytes,
}

impl DataType {
    /// Parses the protocol's name for a type.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "BOOL" => Self::Bool,
            "UINT8" => Self::U8,
            "UINT16" => Self::U16,
            "UINT32" => Self::U32,
            "UINT64" => Self::U64,
            "INT8" => Self::I8,
            "INT16" => Self::I16,
            "INT32" => Self::I32,
            "INT64" => Self::I64,
            "FP16" => Self::F16,
            "FP32" => Self::F32,
            "FP64" => Self::F64,
            "BYTES" => Self::Bytes,
            _ => return None,
        })
    }

    /// The protocol's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "UINT8",
            Self::U16 => "UINT16",
            Self::U32 => "UINT32",
            Self::U64 => "UINT64",
            Self::I8 => "INT8",
            Self::I16 => "INT16",
            Self::I32 => "INT32",
            Self::I64 => "INT64",
            Self::F16 => "FP16",
            Self::F32 => "FP32",
            Self::F64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Bytes per element in binary form; `None` for `BYTES`.
    fn width(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 | Self::F16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::Bytes => return None,
        })
    }
}

/// A decoded input tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Every numeric and boolean type, widened to `f64` (exact for all but 64-bit integers
    /// beyond 2^53, which tabular features never are).
    Numeric(Vec<f64>),
    /// `BYTES` elements.
    Bytes(Vec<Vec<u8>>),
}

/// A decoded input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    /// The input's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its declared type.
    pub datatype: DataType,
    /// Its elements, row-major.
    pub data: TensorData,
}

/// One output the client asked for, and in which encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// Whether to return it in binary form.
    pub binary: bool,
}

/// A decoded inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The client's request id, echoed in the response.
    pub id: Option<String>,
    /// The inputs, in request order.
    pub inputs: Vec<InputTensor>,
    /// The outputs asked for; `None` means the model's defaults.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// Whether outputs not listed individually come back in binary form.
    pub binary_output: bool,
    /// The client's own timeout (`parameters.timeout`, microseconds), if it sent one.
    pub timeout_us: Option<u64>,
}

#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Decodes a request body. `header_length` is the `Inference-Header-Content-Length` header:
/// when present, the body is that many bytes of JSON followed by the binary tensors.
pub fn decode_request(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, String> {
    let (json, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(length) if length <= body.len() => body.split_at(length),
        Some(length) => {
            return Err(format!(
                "Inference-Header-Content-Length is {length} but the body has only {} bytes",
                body.len()
            ));
        }
    };
    let json = non_finite_tokens(json);
    let request: RequestJson =
        serde_json::from_slice(&json).map_err(|err| format!("the request is not a valid inference request: {err}"))?;
    let binary_output = bool_parameter(&request.parameters, "binary_data_output")?.unwrap_or(false);
    let timeout_us = match request.parameters.get("timeout") {
        None => None,
        Some(value) => Some(value.as_u64().ok_or("parameter 'timeout' must be a whole number of microseconds")?),
    };
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        inputs.push(decode_input(input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(format!("{} bytes of binary data follow the inputs that no input claims", binary.len()));
    }
    let outputs = request
        .outputs
        .map(|outputs| {
            outputs
                .into_iter()
                .map(|output| {
                    let binary = bool_parameter(&output.parameters, "binary_data")?.unwrap_or(binary_output);
                    Ok(RequestedOutput { name: output.name, binary })
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .transpose()?;
    Ok(InferRequest { id: request.id, inputs, outputs, binary_output, timeout_us })
}

/// JSON has no NaN or infinities, but tritonclient (through rapidjson) writes them as bare
/// `NaN`, `Infinity` and `-Infinity` tokens, as Triton accepts. Rewrites such tokens outside
/// strings to `null` and to the strings `"Infinity"` and `"-Infinity"`, which the tensor decoder
/// reads back; returns the body unchanged (and uncopied) when there are none.
fn non_finite_tokens(json: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mentions = |token: &[u8]| json.windows(token.len()).any(|window| window == token);
    if !mentions(b"NaN") && !mentions(b"Infinity") {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = Vec::with_capacity(json.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut index = 0;
    while index < json.len() {
        let rest = &json[index..];
        if in_string {
            match (escaped, rest[0]) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            let replacement: Option<(&[u8], usize)> = if rest.starts_with(b"NaN") {
                Some((b"null", 3))
            } else if rest.starts_with(b"Infinity") {
                Some((b"\"Infinity\"", 8))
            } else if rest.starts_with(b"-Infinity") {
                Some((b"\"-Infinity\"", 9))
            } else {
                in_string = rest[0] == b'"';
                None
            };
            if let Some((text, skip)) = replacement {
                out.extend_from_slice(text);
                index += skip;
                continue;
            }
        }
        out.push(rest[0]);
        index += 1;
    }
    std::borrow::Cow::Owned(out)
}

fn bool_parameter(parameters: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match parameters.get(key) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(other) => Err(format!("parameter '{key}' must be true or false, not {other}")),
    }
}

fn decode_input(input: InputJson, binary: &mut &[u8]) -> Result<InputTensor, String> {
    let name = input.name;
    let datatype = DataType::parse(&input.datatype)
        .ok_or_else(|| format!("input '{name}': unknown datatype '{}'", input.datatype))?;
    let shape = input
        .shape
        .iter()
        .map(|&dim| {
            usize::try_from(dim)
                .map_err(|_| format!("input '{name}': shape {:?} has a negative dimension", input.shape))
        })
        .collect::<Result<Vec<usize>, String>>()?;
    let elements = shape
        .iter()
        .try_fold(1usize, |total, &dim| total.checked_mul(dim))
        .ok_or_else(|| format!("input '{name}': shape {shape:?} is too large"))?;
    let binary_size = match input.parameters.get("binary_data_size") {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|size| usize::try_from(size).ok())
                .ok_or_else(|| format!("input '{name}': binary_data_size must be a byte count"))?,
        ),
    };
    let data = match (binary_size, input.data) {
        (Some(_), Some(_)) => return Err(format!("input '{name}' has both data and binary_data_size")),
        (None, None) => return Err(format!("input '{name}' has no data")),
        (Some(size), None) => {
            if size > binary.len() {
                return Err(format!(
                    "input '{name}': binary_data_size is {size} but only {} binary bytes remain",
                    binary.len()
                ));
            }
            let (bytes, rest) = binary.split_at(size);
            *binary = rest;
            decode_binary(bytes, datatype, elements).map_err(|err| format!("input '{name}': {err}"))?
        }
        (None, Some(value)) => decode_json(&value, datatype, &shape).map_err(|err| format!("input '{name}': {err}"))?,
    };
    Ok(InputTensor { name, shape, datatype, data })
}

fn decode_binary(bytes: &[u8], datatype: DataType, elements: usize) -> Result<TensorData, String> {
    let Some(width) = datatype.width() else {
        let mut items = Vec::with_capacity(elements.min(bytes.len() / 4));
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some((prefix, tail)) = rest.split_first_chunk::<4>() else {
                return Err("BYTES data ends inside an element's length prefix".into());
            };
            let length = u32::from_le_bytes(*prefix) as usize;
            if length > tail.len() {
                return Err("a BYTES element runs past the end of its data".into());
            }
            items.push(tail[..length].to_vec());
            rest = &tail[length..];
        }
        if items.len() != elements {
            return Err(format!("shape holds {elements} elements but the data has {}", items.len()));
        }
        return Ok(TensorData::Bytes(items));
    };
    if bytes.len() != elements.saturating_mul(width) {
        return Err(format!(
            "shape holds {elements} {} elements ({} bytes) but binary_data_size is {}",
            datatype.name(),
            elements.saturating_mul(width),
            bytes.len()
        ));
    }
    let chunks = bytes.chunks_exact(width);
    let values: Vec<f64> = match datatype {
        DataType::Bool => chunks.map(|c| f64::from(u8::from(c[0] != 0))).collect(),
        DataType::U8 => chunks.map(|c| f64::from(c[0])).collect(),
        DataType::I8 => chunks.map(|c| f64::from(c[0] as i8)).collect(),
        DataType::U16 => chunks.map(|c| f64::from(u16::from_le_bytes([c[0], c[1]]))).collect(),
        DataType::I16 => chunks.map(|c| f64::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
        DataType::F16 => chunks.map(|c| f16_to_f64(u16::from_le_bytes([c[0], c[1]]))).collect(),
        DataType::U32 => chunks.map(|c| f64::from(u32::from_le_bytes(array(c)))).collect(),
        DataType::I32 => chunks.map(|c| f64::from(i32::from_le_bytes(array(c)))).collect(),
        DataType::F32 => chunks.map(|c| f64::from(f32::from_le_bytes(array(c)))).collect(),
        DataType::U64 => chunks.map(|c| u64::from_le_bytes(array(c)) as f64).collect(),
        DataType::I64 => chunks.map(|c| i64::from_le_bytes(array(c)) as f64).collect(),
        DataType::F64 => chunks.map(|c| f64::from_le_bytes(array(c))).collect(),
        DataType::Bytes => unreachable!("BYTES has no fixed width and was handled above"),
    };
    Ok(TensorData::Numeric(values))
}

/// A fixed-size array from a chunk of exactly that size (`chunks_exact` guarantees it).
fn array<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(chunk);
    out
}

/// IEEE 754 half precision to f64.
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}

fn decode_json(value: &Value, datatype: DataType, shape: &[usize]) -> Result<TensorData, String> {
    // No capacity from the shape: it is the client's claim, and the data may be far smaller.
    let mut flat = Vec::new();
    collect(value, shape, &mut flat)?;
    if datatype == DataType::Bytes {
        let items = flat
            .into_iter()
            .map(|v| {
                v.as_str().map(|s| s.as_bytes().to_vec()).ok_or_else(|| format!("BYTES data must be strings, not {v}"))
            })
            .collect::<Result<_, String>>()?;
        return Ok(TensorData::Bytes(items));
    }
    let values = flat
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            json_number(value, datatype)
                .ok_or_else(|| format!("element {index} ({value}) is not a valid {} value", datatype.name()))
        })
        .collect::<Result<_, String>>()?;
    Ok(TensorData::Numeric(values))
}

/// Collects the elements of `data`, row-major. Data may be flat at any level of nesting (one
/// array holding all the values below that level) or nested to follow `shape`; either way the
/// counts must agree with the shape, so ragged data is an error rather than silently flattened.
fn collect<'a>(value: &'a Value, shape: &[usize], out: &mut Vec<&'a Value>) -> Result<(), String> {
    let expected: usize = shape.iter().product();
    match value {
        Value::Array(items) if !items.iter().any(Value::is_array) => {
            if items.len() != expected {
                return Err(format!("shape {shape:?} holds {expected} elements but data has {}", items.len()));
            }
            out.extend(items);
            Ok(())
        }
        Value::Array(items) => {
            let Some((&dim, inner)) = shape.split_first() else {
                return Err("data is nested deeper than its shape".into());
            };
            if items.len() != dim {
                return Err(format!("data nests {} items where the shape has {dim}", items.len()));
            }
            items.iter().try_for_each(|item| collect(item, inner, out))
        }
        scalar if expected == 1 => {
            out.push(scalar);
            Ok(())
        }
        scalar => Err(format!("data has the single value {scalar} where shape {shape:?} holds {expected} elements")),
    }
}

fn json_number(value: &Value, datatype: DataType) -> Option<f64> {
    let in_range = |min: f64, max: f64| {
        let number = value.as_i64().map(|n| n as f64).or_else(|| value.as_u64().map(|n| n as f64))?;
        (min..=max).contains(&number).then_some(number)
    };
    match datatype {
        DataType::Bool => value.as_bool().map(|b| f64::from(u8::from(b))),
        DataType::U8 => in_range(0.0, f64::from(u8::MAX)),
        DataType::U16 => in_range(0.0, f64::from(u16::MAX)),
        DataType::U32 => in_range(0.0, f64::from(u32::MAX)),
        DataType::U64 => in_range(0.0, u64::MAX as f64),
        DataType::I8 => in_range(f64::from(i8::MIN), f64::from(i8::MAX)),
        DataType::I16 => in_range(f64::from(i16::MIN), f64::from(i16::MAX)),
        DataType::I32 => in_range(f64::from(i32::MIN), f64::from(i32::MAX)),
        DataType::I64 => in_range(i64::MIN as f64, i64::MAX as f64),
        // JSON has no NaN: `null` stands for a missing value, as numpy and tritonclient write it.
        DataType::F16 | DataType::F32 | DataType::F64 => {
            let largest = match datatype {
                DataType::F16 => 65504.0,
                DataType::F32 => f64::from(f32::MAX),
                _ => f64::MAX,
            };
            match value {
                Value::Null => Some(f64::NAN),
                Value::String(text) => match text.as_str() {
                    "NaN" => Some(f64::NAN),
                    "Infinity" => Some(f64::INFINITY),
                    "-Infinity" => Some(f64::NEG_INFINITY),
                    _ => None,
                },
                _ => value.as_f64().filter(|v| v.abs() <= largest),
            }
        }
        DataType::Bytes => None,
    }
}

/// An output tensor's elements, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    /// `FP32`.
    F32(Vec<f32>),
    /// `FP64`.
    F64(Vec<f64>),
    /// `INT64`.
    I64(Vec<i64>),
    /// `BYTES`.
    Bytes(Vec<Vec<u8>>),
}

impl OutputData {
    /// The protocol type of the elements.
    pub fn datatype(&self) -> DataType {
        match self {
            Self::F32(_) => DataType::F32,
            Self::F64(_) => DataType::F64,
            Self::I64(_) => DataType::I64,
            Self::Bytes(_) => DataType::Bytes,
        }
    }

    fn append_binary(&self, out: &mut Vec<u8>) {
        match self {
            Self::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::Bytes(v) => v.iter().for_each(|item| {
                // Elements of a tabular output are short labels; a length over u32 cannot occur.
                out.extend_from_slice(&(item.len() as u32).to_le_bytes());
                out.extend_from_slice(item);
            }),
        }
    }
}

/// One output of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// The output's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements.
    pub data: OutputData,
    /// Whether it goes in binary form.
    pub binary: bool,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputJsonOut<'a>>,
}

/// An encoded response body and, when any output is binary, the JSON header's length for the
/// `Inference-Header-Content-Length` header.
pub struct EncodedResponse {
    /// The body.
    pub body: Vec<u8>,
    /// The JSON header's length, when binary tensors follow it.
    pub header_length: Option<usize>,
}

/// Encodes a response; binary outputs follow the JSON in output order.
pub fn encode_response(model: &str, id: Option<&str>, outputs: &[OutputTensor]) -> EncodedResponse {
    let mut binary = Vec::new();
    let json_outputs: Vec<OutputJsonOut<'_>> = outputs
        .iter()
        .map(|output| {
            let (parameters, data) = if output.binary {
                let start = binary.len();
                output.data.append_binary(&mut binary);
                (Some(BinaryParameters { binary_data_size: binary.len() - start }), None)
            } else {
                (None, Some(JsonData(&output.data)))
            };
            OutputJsonOut {
                name: &output.name,
                datatype: output.data.datatype().name(),
                shape: &output.shape,
                parameters,
                data,
            }
        })
        .collect();
    let response = ResponseJson { model_name: model, model_version: "1", id, outputs: json_outputs };
    // Serialising strings, integers and floats (non-finite ones as null) cannot fail.
    let mut body = serde_json::to_vec(&response).unwrap_or_default();
    let header_length = (!binary.is_empty() || outputs.iter().any(|o| o.binary)).then_some(body.len());
    body.extend_from_slice(&binary);
    EncodedResponse { body, header_length }
}

/// One output of a response as its JSON is written, straight from the tensor: `FP32` values as
/// the shortest `f32` text, not widened to `f64` digits.
#[derive(Serialize)]
struct OutputJsonOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// An output's elements as a JSON array: numbers (non-finite floats as `null`, as JSON has
/// none), or `BYTES` as strings.
struct JsonData<'a>(&'a OutputData);

impl Serialize for JsonData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            OutputData::F32(values) => serializer.collect_seq(values.iter().map(|&v| v.is_finite().then_some(v))),
            OutputData::F64(values) => serializer.collect_seq(values.iter().map(|&v| v.is_finite().then_some(v))),
            OutputData::I64(values) => serializer.collect_seq(values),
            OutputData::Bytes(values) => serializer.collect_seq(values.iter().map(|b| String::from_utf8_lossy(b))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_json_data_flat_or_nested() {
        let body = br#"{"id": "7", "inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32",
            "data": [[1, 2.5], [null, -4]]}]}"#;
        let request = decode_request(body, None).unwrap();
        assert_eq!(request.id.as_deref(), Some("7"));
        assert_eq!(request.inputs[0].shape, vec![2, 2]);
        let TensorData::Numeric(values) = &request.inputs[0].data else { panic!() };
        assert_eq!(values[..2], [1.0, 2.5]);
        assert!(values[2].is_nan());
        assert_eq!(request.outputs, None);
    }

    #[test]
    fn decodes_binary_tensors_in_input_order() {
        let json = br#"{"inputs": [
            {"name": "a", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": 16}},
            {"name": "b", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": 4}},
            {"name": "c", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}}],
            "parameters": {"binary_data_output": true}}"#;
        let mut body = json.to_vec();
        body.extend(1.5f64.to_le_bytes());
        body.extend((-2.0f64).to_le_bytes());
        body.extend((-7i32).to_le_bytes());
        body.extend(2u32.to_le_bytes());
        body.extend(b"hi");
        body.extend(1u32.to_le_bytes());
        body.extend(b"!");
        let request = decode_request(&body, Some(json.len())).unwrap();
        assert_eq!(request.inputs[0].data, TensorData::Numeric(vec![1.5, -2.0]));
        assert_eq!(request.inputs[1].data, TensorData::Numeric(vec![-7.0]));
        assert_eq!(request.inputs[2].data, TensorData::Bytes(vec![b"hi".to_vec(), b"!".to_vec()]));
        assert!(request.binary_output);
    }

    #[test]
    fn bad_tensors_are_explained() {
        let cases: [(&[u8], Option<usize>, &str); 8] = [
            (br#"{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}"#, None, "3 elements but data has 2"),
            (br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]}"#, None, "unknown datatype 'FP99'"),
            (br#"{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}"#, None, "negative dimension"),
            (br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}"#, None, "not a valid INT8"),
            (br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}"#, None, "has no data"),
            (br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}"#, None, "only 0 binary bytes"),
            (br#"{"inputs": [{"name": "x", "shape": [4294967296, 4294967296, 4294967296], "datatype": "FP32", "data": []}]}"#, None, "too large"),
            (br#"{"inputs": "#, None, "not a valid inference request"),
        ];
        for (body, header, expected) in cases {
            let err = decode_request(body, header).unwrap_err();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
        let ragged = br#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2, 3], [4]]}]}"#;
        assert!(decode_request(ragged, None).unwrap_err().contains("holds 2 elements but data has 3"));
        let too_big = br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1e300]}]}"#;
        assert!(decode_request(too_big, None).unwrap_err().contains("not a valid FP32"));
        // A huge shape with little data is refused without allocating for the shape.
        let huge = br#"{"inputs": [{"name": "x", "shape": [1099511627776, 1], "datatype": "FP32", "data": [1]}]}"#;
        assert!(decode_request(huge, None).unwrap_err().contains("data has 1"));
        let err = decode_request(b"{}", Some(10)).unwrap_err();
        assert!(err.contains("only 2 bytes"), "{err}");
    }

    #[test]
    fn bare_nan_tokens_read_as_missing_values() {
        let body =
            br#"{"id": "NaN", "inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [1.5, NaN,NaN]}]}"#;
        let request = decode_request(body, None).unwrap();
        assert_eq!(request.id.as_deref(), Some("NaN"), "strings are left alone");
        let TensorData::Numeric(values) = &request.inputs[0].data else { panic!() };
        assert_eq!(values[0], 1.5);
        assert!(values[1].is_nan() && values[2].is_nan());
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert!(f16_to_f64(0x7e00).is_nan());
    }

    #[test]
    fn encodes_binary_outputs_after_the_json_header() {
        let outputs = [
            OutputTensor { name: "p".into(), shape: vec![2], data: OutputData::F32(vec![0.25, 0.75]), binary: true },
            OutputTensor { name: "l".into(), shape: vec![2], data: OutputData::I64(vec![0, 1]), binary: false },
        ];
        let encoded = encode_response("m", Some("x"), &outputs);
        let length = encoded.header_length.unwrap();
        let header: Value = serde_json::from_slice(&encoded.body[..length]).unwrap();
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(header["outputs"][1]["data"], serde_json::json!([0, 1]));
        assert_eq!(header["id"], "x");
        assert_eq!(&encoded.body[length..length + 4], &0.25f32.to_le_bytes());
    }
}
