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
        // Byte-level vocabularies write each byte as a character; others are decoded token by
        // token (special tokens as their text).
        let byte_level = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        let bytes = (0..size as u32)
            .map(|id| {
                let token = tokenizer.id_to_token(id).unwrap_or_default();
                let decoded = || match tokenizer.decode(&[id], false) {
                    Ok(text) if !text.is_empty() => text.into_bytes(),
                    _ => token.clone().into_bytes(),
                };
                if byte_level { byte_level_bytes(&token).unwrap_or_else(decoded) } else { decoded() }
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
    use super::byte_level_bytes;

    #[test]
    fn byte_level_tokens_map_back_to_bytes() {
        assert_eq!(byte_level_bytes("Ġhello"), Some(b" hello".to_vec()));
        assert_eq!(byte_level_bytes("Ċ"), Some(b"\n".to_vec()));
        assert_eq!(byte_level_bytes("Ã©"), Some("é".as_bytes().to_vec()));
        assert_eq!(byte_level_bytes("東"), None);
    }
}
