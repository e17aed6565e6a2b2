//! Model files from the internet, corrupted or hostile: every header field of a GGUF file and of
//! a safetensors checkpoint (and every number of its `config.json`) set to extremes, one at a
//! time, and each mutant loaded by both generation engines. Every mutant must load or be
//! refused with an error: never a panic, and never an abort (an allocation failure aborts the
//! whole process, which this test would not survive). Memory stays bounded: the test's peak
//! resident memory is checked at the end.
//!
//! The GGUF file is a tiny random Llama written here with candle's GGUF writer (Q8_0, Q4_1, F16
//! and F32 tensors, a SentencePiece vocabulary); the safetensors checkpoint is the golden tiny
//! Llama of `tests/fixtures/llm/tiny-llama`.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use inferd_core::Engine;
use inferd_transformers::ModelSource;
use inferd_transformers::generation::{
    GenerationOptions, load_generation, load_llama_safetensors, load_tensor_llama_safetensors,
};

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const INTERMEDIATE: usize = 128;
const LAYERS: usize = 2;
const VOCAB: usize = 320;

/// Deterministic values in [-0.5, 0.5).
fn random(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn tensor(rows: usize, columns: usize, dtype: GgmlDType, seed: u64) -> QTensor {
    let shape: Vec<usize> = if rows == 1 { vec![columns] } else { vec![rows, columns] };
    let values = Tensor::from_vec(random(rows * columns, seed), shape, &Device::Cpu).expect("tensor");
    QTensor::quantize(&values, dtype).expect("quantize")
}

/// A tiny Llama GGUF file with its own SentencePiece vocabulary.
fn tiny_gguf(path: &Path) {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    tokens.extend((0..=255u8).map(|byte| format!("<0x{byte:02X}>")));
    let letters = "abcdefghijklmnopqrstuvwxyz".chars();
    tokens.extend(letters.clone().map(|c| c.to_string()));
    tokens.extend(letters.map(|c| format!("\u{2581}{c}")));
    while tokens.len() < VOCAB {
        tokens.push(format!("\u{2581}w{}", tokens.len()));
    }
    let types: Vec<Value> = (0..VOCAB)
        .map(|id| {
            Value::I32(if id == 0 {
                2
            } else if id < 3 {
                3
            } else if id < 259 {
                6
            } else {
                1
            })
        })
        .collect();
    let scores: Vec<Value> = (0..VOCAB).map(|id| Value::F32(-(id as f32))).collect();
    let u32 = |v: usize| Value::U32(v as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", u32(HIDDEN)),
        ("llama.feed_forward_length", u32(INTERMEDIATE)),
        ("llama.block_count", u32(LAYERS)),
        ("llama.attention.head_count", u32(HEADS)),
        ("llama.attention.head_count_kv", u32(KV_HEADS)),
        ("llama.context_length", u32(256)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.scores", Value::Array(scores)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.bos_token_id", u32(1)),
        ("tokenizer.ggml.eos_token_id", u32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ("tokenizer.chat_template", Value::String("{% for m in messages %}{{ m['content'] }}{% endfor %}".into())),
    ];
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), tensor(VOCAB, HIDDEN, GgmlDType::Q8_0, 1)),
        ("output_norm.weight".into(), tensor(1, HIDDEN, GgmlDType::F32, 2)),
    ];
    for layer in 0..LAYERS {
        let seed = 100 * (layer as u64 + 1);
        let name = |part: &str| format!("blk.{layer}.{part}");
        tensors.extend([
            (name("attn_norm.weight"), tensor(1, HIDDEN, GgmlDType::F32, seed)),
            (name("attn_q.weight"), tensor(q, HIDDEN, GgmlDType::Q4_1, seed + 1)),
            (name("attn_k.weight"), tensor(kv, HIDDEN, GgmlDType::Q4_1, seed + 2)),
            (name("attn_v.weight"), tensor(kv, HIDDEN, GgmlDType::Q8_0, seed + 3)),
            (name("attn_output.weight"), tensor(HIDDEN, q, GgmlDType::F16, seed + 4)),
            (name("ffn_norm.weight"), tensor(1, HIDDEN, GgmlDType::F32, seed + 5)),
            (name("ffn_gate.weight"), tensor(INTERMEDIATE, HIDDEN, GgmlDType::Q4_1, seed + 6)),
            (name("ffn_up.weight"), tensor(INTERMEDIATE, HIDDEN, GgmlDType::Q4_1, seed + 7)),
            (name("ffn_down.weight"), tensor(HIDDEN, INTERMEDIATE, GgmlDType::Q8_0, seed + 8)),
        ]);
    }
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(key, value)| (*key, value)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(name, t)| (name.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).expect("create");
    gguf_file::write(&mut file, &metadata, &tensors).expect("write GGUF");
}

/// A field of a header: where it is, how wide, and what it is.
struct Field {
    offset: usize,
    width: usize,
    what: String,
}

/// Reads the little-endian integer of `width` bytes at `at`.
fn int(bytes: &[u8], at: usize, width: usize) -> u64 {
    bytes[at..at + width].iter().rev().fold(0, |value, &byte| (value << 8) | u64::from(byte))
}

/// Every length, count, type, dimension and offset of a GGUF (v2/v3) header, and the numbers of
/// its `llama.*` metadata.
fn gguf_fields(bytes: &[u8]) -> Vec<Field> {
    let mut fields = vec![
        Field { offset: 8, width: 8, what: "tensor count".into() },
        Field { offset: 16, width: 8, what: "metadata count".into() },
    ];
    let mut at = 24;
    let string = |at: &mut usize, what: String, fields: &mut Vec<Field>| -> String {
        let length = int(bytes, *at, 8) as usize;
        fields.push(Field { offset: *at, width: 8, what: format!("{what}: string length") });
        let text = String::from_utf8_lossy(&bytes[*at + 8..*at + 8 + length]).into_owned();
        *at += 8 + length;
        text
    };
    fn scalar_width(kind: u64) -> usize {
        match kind {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            other => panic!("value type {other}"),
        }
    }
    for _ in 0..int(bytes, 16, 8) {
        let key = string(&mut at, "metadata key".into(), &mut fields);
        let kind = int(bytes, at, 4);
        fields.push(Field { offset: at, width: 4, what: format!("{key}: value type") });
        at += 4;
        match kind {
            8 => {
                string(&mut at, key.clone(), &mut fields);
            }
            9 => {
                let element = int(bytes, at, 4);
                fields.push(Field { offset: at, width: 4, what: format!("{key}: element type") });
                fields.push(Field { offset: at + 4, width: 8, what: format!("{key}: array length") });
                let length = int(bytes, at + 4, 8);
                at += 12;
                for index in 0..length {
                    if element == 8 {
                        // Only the first few elements' lengths; the rest are alike.
                        let mut ignored = Vec::new();
                        string(&mut at, format!("{key}[{index}]"), if index < 3 { &mut fields } else { &mut ignored });
                    } else {
                        at += scalar_width(element);
                    }
                }
            }
            kind => {
                let width = scalar_width(kind);
                if key.starts_with("llama.") || key.starts_with("tokenizer.ggml.") {
                    fields.push(Field { offset: at, width, what: format!("{key}: value") });
                }
                at += width;
            }
        }
    }
    for _ in 0..int(bytes, 8, 8) {
        let name = string(&mut at, "tensor name".into(), &mut fields);
        let dims = int(bytes, at, 4);
        fields.push(Field { offset: at, width: 4, what: format!("{name}: n_dims") });
        at += 4;
        for dim in 0..dims {
            fields.push(Field { offset: at, width: 8, what: format!("{name}: dimension {dim}") });
            at += 8;
        }
        fields.push(Field { offset: at, width: 4, what: format!("{name}: type") });
        fields.push(Field { offset: at + 4, width: 8, what: format!("{name}: offset") });
        at += 12;
    }
    fields
}

/// The extremes a field of `width` bytes holding `original` is set to.
fn extremes(original: u64, width: usize) -> Vec<u64> {
    let max = if width == 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
    let mut values = vec![0, 1, max, max >> 1, original.saturating_add(1) & max, original.saturating_mul(1000) & max];
    if width >= 4 {
        values.extend([1 << 31, 100]);
    }
    if width == 8 {
        values.extend([1 << 40, 1 << 62]);
    }
    values.retain(|&value| value != original);
    values.sort_unstable();
    values.dedup();
    values
}

fn with_value(bytes: &[u8], field: &Field, value: u64) -> Vec<u8> {
    let mut mutant = bytes.to_vec();
    mutant[field.offset..field.offset + field.width].copy_from_slice(&value.to_le_bytes()[..field.width]);
    mutant
}

fn options(engine: Engine) -> GenerationOptions {
    GenerationOptions { threads: Some(1), engine: Some(engine), ..GenerationOptions::default() }
}

/// Loads `path` with both engines; returns whether each loaded. Panics propagate (and fail the
/// test); aborts end it.
fn load_gguf_both(path: &Path) -> [bool; 2] {
    [Engine::Native, Engine::Tensor].map(|engine| {
        load_generation(&ModelSource::Folder(path.to_path_buf()), &inferd_core::Device::Cpu, &options(engine)).is_ok()
    })
}

/// Peak resident memory of this process, in MiB.
fn peak_resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// The most this test may hold resident: the models are tiny, so anything near this is an
/// allocation taken from a mutated size.
const MAX_RESIDENT_MIB: u64 = 1024;

#[test]
fn every_gguf_header_mutant_is_refused_or_loaded_never_fatal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = dir.path().join("tiny.gguf");
    tiny_gguf(&base);
    assert_eq!(load_gguf_both(&base), [true, true], "the unmutated file loads with both engines");
    let bytes = std::fs::read(&base).expect("read");
    let fields = gguf_fields(&bytes);
    assert!(fields.len() > 150, "found {} fields", fields.len());

    let mutant = dir.path().join("mutant.gguf");
    let (mut refused, mut loaded) = (0, 0);
    for field in &fields {
        let original = int(&bytes, field.offset, field.width);
        for value in extremes(original, field.width) {
            std::fs::write(&mutant, with_value(&bytes, field, value)).expect("write");
            eprintln!("{} = {value}", field.what);
            for ok in load_gguf_both(&mutant) {
                if ok { loaded += 1 } else { refused += 1 }
            }
        }
    }
    eprintln!("GGUF mutants: {refused} loads refused, {loaded} loaded");
    assert!(refused > 1000, "refused {refused}");
    let peak = peak_resident_mib();
    assert!(peak < MAX_RESIDENT_MIB, "peak resident memory {peak} MiB");
}

fn copy_fixture(to: &Path) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llm/tiny-llama");
    for name in ["config.json", "model.safetensors", "golden.json"] {
        std::fs::copy(fixture.join(name), to.join(name)).expect("copy fixture");
    }
    fixture
}

/// Loads the checkpoint folder with both engines; returns whether each loaded.
fn load_checkpoint_both(folder: &Path) -> [bool; 2] {
    let Ok(files) = ModelSource::Folder(folder.to_path_buf()).open() else { return [false, false] };
    [load_llama_safetensors(&files, 1).is_ok(), load_tensor_llama_safetensors(&files, &Device::Cpu).is_ok()]
}

#[test]
fn every_safetensors_mutant_is_refused_or_loaded_never_fatal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = copy_fixture(dir.path());
    assert_eq!(load_checkpoint_both(dir.path()), [true, true], "the fixture loads with both engines");
    let weights = std::fs::read(fixture.join("model.safetensors")).expect("read");
    let header_length = int(&weights, 0, 8) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&weights[8..8 + header_length]).expect("header JSON");
    let data = &weights[8 + header_length..];
    let target = dir.path().join("model.safetensors");
    let (mut refused, mut loaded) = (0, 0);
    let mut count = |outcome: [bool; 2]| {
        for ok in outcome {
            if ok { loaded += 1 } else { refused += 1 }
        }
    };

    // The header's own length.
    for value in extremes(header_length as u64, 8) {
        let mut mutant = weights.clone();
        mutant[..8].copy_from_slice(&value.to_le_bytes());
        std::fs::write(&target, mutant).expect("write");
        eprintln!("header length = {value}");
        count(load_checkpoint_both(dir.path()));
    }
    // Each tensor's shape, offsets and type.
    let huge = [0u64, 1 << 31, 1 << 40, 1 << 62, u64::MAX];
    let names: Vec<String> = header.keys().filter(|name| *name != "__metadata__").cloned().collect();
    for name in &names {
        let mut mutants: Vec<(String, serde_json::Value)> = Vec::new();
        let entry = &header[name];
        for (index, _) in entry["shape"].as_array().expect("shape").iter().enumerate() {
            for &value in &huge {
                let mut changed = entry.clone();
                changed["shape"][index] = value.into();
                mutants.push((format!("{name}: shape[{index}] = {value}"), changed));
            }
        }
        for index in 0..2 {
            for &value in &huge {
                let mut changed = entry.clone();
                changed["data_offsets"][index] = value.into();
                mutants.push((format!("{name}: data_offsets[{index}] = {value}"), changed));
            }
        }
        for dtype in ["F64", "I8", "BOOL", "Q4"] {
            let mut changed = entry.clone();
            changed["dtype"] = dtype.into();
            mutants.push((format!("{name}: dtype = {dtype}"), changed));
        }
        let mut changed = entry.clone();
        changed["shape"] = serde_json::json!([]);
        mutants.push((format!("{name}: shape = []"), changed));
        for (what, changed) in mutants {
            let mut mutated = header.clone();
            mutated.insert(name.clone(), changed);
            let json = serde_json::to_vec(&mutated).expect("JSON");
            let mut file = (json.len() as u64).to_le_bytes().to_vec();
            file.extend(json);
            file.extend_from_slice(data);
            std::fs::write(&target, file).expect("write");
            eprintln!("{what}");
            count(load_checkpoint_both(dir.path()));
        }
    }
    std::fs::write(&target, &weights).expect("restore");

    // Every number of config.json.
    let config_path = dir.path().join("config.json");
    let config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).expect("config")).expect("JSON");
    let numbers: Vec<String> =
        config.iter().filter(|(_, value)| value.is_number()).map(|(key, _)| key.clone()).collect();
    for key in &numbers {
        let values = [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!(1u64 << 31),
            serde_json::json!(1u64 << 40),
            serde_json::json!(u64::MAX),
            serde_json::json!(1e300),
        ];
        for value in values {
            let mut mutated = config.clone();
            mutated.insert(key.clone(), value.clone());
            std::fs::write(&config_path, serde_json::to_vec(&mutated).expect("JSON")).expect("write");
            eprintln!("config.json {key} = {value}");
            count(load_checkpoint_both(dir.path()));
        }
    }
    eprintln!("safetensors mutants: {refused} loads refused, {loaded} loaded");
    assert!(refused > 300, "refused {refused}");
    let peak = peak_resident_mib();
    assert!(peak < MAX_RESIDENT_MIB, "peak resident memory {peak} MiB");
}
