//! Golden test: tokenizers built from GGUF metadata alone, against llama.cpp's own tokenizer
//! tests.
//!
//! llama.cpp keeps, for many model families, a vocabulary-only GGUF file
//! (`ggml-vocab-<family>.gguf`), test texts (`.inp`: spaces, line breaks, digits, accents,
//! emoji, code, several scripts) and the token ids the family's Hugging Face tokenizer gives
//! each text without special tokens (`.out`). They come with llama-cpp-python's source archive,
//! unpacked by `models/fetch-models.sh` (the test command runs it first). inferd must give the
//! same ids for every text, for byte-level BPE families (`gpt2` with the pre-tokenizers of
//! GPT-2, MPT, Llama 3, Qwen2, Qwen3.5, StarCoder, Refact, Command-R, Falcon and DeepSeek Coder)
//! and SentencePiece families (Llama 2's and Phi-3's vocabularies).

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use inferd_core::TextCodec;
use inferd_transformers::generation::codec::LlmCodec;
use inferd_transformers::generation::gguf_tokenizer::{GgufVocabulary, from_gguf};

/// The families inferd builds tokenizers for, as llama.cpp names their test files.
const FAMILIES: [&str; 12] = [
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "llama-spm",
    "phi-3",
    "mpt",
    "starcoder",
    "refact",
    "command-r",
    "falcon",
    "deepseek-coder",
    "qwen35",
];
/// The SentencePiece ones among them.
const SENTENCEPIECE: [&str; 2] = ["llama-spm", "phi-3"];
/// What follows each test text in an `.inp` file.
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn vocabulary_path(family: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/llama-cpp-models")
        .join(format!("ggml-vocab-{family}.gguf"));
    assert!(path.is_file(), "{} is missing: run models/fetch-models.sh", path.display());
    path
}

fn content(family: &str) -> (gguf_file::Content, PathBuf) {
    let path = vocabulary_path(family);
    let mut file = File::open(&path).expect("vocabulary file");
    (gguf_file::Content::read(&mut file).expect("GGUF"), path)
}

fn vocabulary(family: &str) -> GgufVocabulary {
    let (content, path) = content(family);
    from_gguf(&content, &path).unwrap_or_else(|err| panic!("{family}: {err}"))
}

/// The family's test texts and, for each, the ids llama.cpp's test expects.
fn cases(family: &str) -> Vec<(String, Vec<u32>)> {
    let path = vocabulary_path(family);
    let inputs = std::fs::read_to_string(path.with_extension("gguf.inp")).expect("test texts");
    let outputs = std::fs::read_to_string(path.with_extension("gguf.out")).expect("expected ids");
    // Each text is followed by the separator.
    let texts: Vec<&str> = inputs.strip_suffix(SEPARATOR).unwrap_or(&inputs).split(SEPARATOR).collect();
    let ids: Vec<Vec<u32>> =
        outputs.lines().map(|line| line.split_whitespace().map(|id| id.parse().expect("token id")).collect()).collect();
    assert_eq!(texts.len(), ids.len(), "{family}: texts and expected ids");
    assert!(texts.len() >= 40, "{family}: {} cases", texts.len());
    texts.into_iter().map(str::to_string).zip(ids).collect()
}

#[test]
fn every_text_tokenizes_as_in_llama_cpp_tests() {
    for family in FAMILIES {
        let tokenizer = vocabulary(family).tokenizer;
        for (text, expected) in cases(family) {
            let ids = tokenizer.encode(text.as_str(), false).expect("encode").get_ids().to_vec();
            assert_eq!(ids, expected, "{family}: {text:?}");
        }
    }
}

#[test]
fn sentencepiece_tokens_stream_back_to_the_text() {
    for family in SENTENCEPIECE {
        let tokenizer = vocabulary(family).tokenizer;
        let codec = LlmCodec::new(tokenizer.clone(), None, None);
        for (text, _) in cases(family) {
            let ids = codec.encode(&text, false).expect("encode");
            // Token by token, as a stream sends them: the space before the first word stays.
            let streamed: Vec<u8> = ids.iter().flat_map(|&id| codec.token_bytes(id)).collect();
            let prefix = if text.is_empty() { "" } else { " " };
            assert_eq!(String::from_utf8_lossy(&streamed), format!("{prefix}{text}"), "{family}: streamed");
            // Whole, as a reply is decoded: that space is the tokenizer's, and goes.
            assert_eq!(codec.decode(&ids), text, "{family}: decoded");
        }
    }
}

#[test]
fn special_tokens_of_sentencepiece_vocabularies_are_recognised_in_prompts() {
    let vocabulary = vocabulary("llama-spm");
    let tokens = &vocabulary.tokens;
    let id = |text: &str| tokens.iter().position(|t| t == text).expect("token") as u32;
    assert!(vocabulary.control.contains(&id("<s>")) && vocabulary.control.contains(&id("</s>")));
    let ids = vocabulary.tokenizer.encode("<s>Hi</s>", false).expect("encode").get_ids().to_vec();
    assert_eq!(ids.first(), Some(&id("<s>")));
    assert_eq!(ids.last(), Some(&id("</s>")));
    // After a special token the text gets its own leading space, as llama.cpp gives it.
    assert_eq!(ids[1..ids.len() - 1], [id("\u{2581}Hi")]);
}

#[test]
fn families_without_a_builder_are_clear_errors() {
    for (family, expected) in
        [("gemma-4", "tokenizer.ggml.model 'gemma4'"), ("deepseek-llm", "tokenizer.ggml.pre 'deepseek-llm'")]
    {
        let (content, path) = content(family);
        let err = from_gguf(&content, &path).err().unwrap_or_else(|| panic!("{family} built"));
        let message = err.to_string();
        assert!(message.contains(expected) && message.contains("tokenizer.json"), "{family}: {message}");
    }
}
