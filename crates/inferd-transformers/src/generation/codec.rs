//! The text side of a generative model: its tokenizer and chat template behind inferd-core's
//! [`TextCodec`].

use inferd_core::{ChatMessage, InferError, TextCodec};
use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;

use super::chat_template::ChatTemplate;

/// A model's tokenizer and chat template.
pub struct LlmCodec {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    /// The beginning-of-sequence token to put first, when the model asks for one.
    bos: Option<u32>,
    /// Each token's bytes.
    bytes: Vec<Vec<u8>>,
}

impl LlmCodec {
    /// Joins a tokenizer and an optional chat template; `bos` is prepended to every encoded text
    /// that does not start with it.
    pub fn new(tokenizer: Tokenizer, template: Option<ChatTemplate>, bos: Option<u32>) -> Self {
        let size = tokenizer.get_vocab_size(true);
        // Byte-level vocabularies write each byte as a character; SentencePiece ones write a
        // space as `▁` and a byte as `<0x41>` (a token decoded alone would lose the space its
        // decoder strips from the start of a text, and a byte would not be UTF-8); others are
        // decoded token by token (special tokens as their text).
        let byte_level = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let sentencepiece = is_sentencepiece(&tokenizer);
        let bytes = (0..size as u32)
            .map(|id| {
                let token = tokenizer.id_to_token(id).unwrap_or_default();
                let decoded = || match tokenizer.decode(&[id], false) {
                    Ok(text) if !text.is_empty() => text.into_bytes(),
                    _ => token.clone().into_bytes(),
                };
                if byte_level {
                    byte_level_bytes(&token).unwrap_or_else(decoded)
                } else if sentencepiece && !tokenizer.get_added_vocabulary().is_special_token(&token) {
                    sentencepiece_bytes(&token)
                } else {
                    decoded()
                }
            })
            .collect();
        Self { tokenizer, template, bos, bytes }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

impl TextCodec for LlmCodec {
    fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, InferError> {
        match &self.template {
            Some(template) => template.render(messages),
            None => Err(InferError::InvalidInput(
                "this model has no chat template: use /v1/completions with a prompt, or give the model a template"
                    .into(),
            )),
        }
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, InferError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, add_special_tokens)
            .map_err(|err| InferError::InvalidInput(format!("cannot tokenize the prompt: {err}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes.get(id as usize).cloned().unwrap_or_default()
    }
}

/// Whether the tokenizer is SentencePiece-style: a BPE model that falls back to byte tokens.
fn is_sentencepiece(tokenizer: &Tokenizer) -> bool {
    matches!(tokenizer.get_model(), tokenizers::ModelWrapper::BPE(bpe) if bpe.byte_fallback)
}

/// The bytes a SentencePiece token stands for: `<0x41>` is the byte 0x41, `▁` a space.
fn sentencepiece_bytes(token: &str) -> Vec<u8> {
    if let Some(hex) = token.strip_prefix("<0x").and_then(|rest| rest.strip_suffix('>'))
        && hex.len() == 2
        && let Ok(byte) = u8::from_str_radix(hex, 16)
    {
        return vec![byte];
    }
    token.replace('\u{2581}', " ").into_bytes()
}

/// The bytes a byte-level BPE token stands for (GPT-2 writes each byte as a printable
/// character); `None` when the token is not in that alphabet.
fn byte_level_bytes(token: &str) -> Option<Vec<u8>> {
    token
        .chars()
        .map(|c| {
            let code = c as u32;
            let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            if printable(code) {
                return Some(code as u8);
            }
            // The other bytes were shifted to 256 + n, n counting them in order.
            let n = code.checked_sub(256)?;
            (0u32..=255).filter(|&b| !printable(b)).nth(n as usize).map(|b| b as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{byte_level_bytes, sentencepiece_bytes};

    #[test]
    fn byte_level_tokens_map_back_to_bytes() {
        assert_eq!(byte_level_bytes("Ġhello"), Some(b" hello".to_vec()));
        assert_eq!(byte_level_bytes("Ċ"), Some(b"\n".to_vec()));
        assert_eq!(byte_level_bytes("Ã©"), Some("é".as_bytes().to_vec()));
        assert_eq!(byte_level_bytes("東"), None);
    }

    #[test]
    fn sentencepiece_tokens_map_back_to_bytes() {
        assert_eq!(sentencepiece_bytes("\u{2581}Hello"), b" Hello".to_vec());
        assert_eq!(sentencepiece_bytes("<0x0A>"), b"\n".to_vec());
        assert_eq!(sentencepiece_bytes("<0xE2>"), vec![0xE2]);
        assert_eq!(sentencepiece_bytes("<0xZZ>"), b"<0xZZ>".to_vec());
        assert_eq!(sentencepiece_bytes("東"), "東".as_bytes().to_vec());
    }
}
