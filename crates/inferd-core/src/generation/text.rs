//! Turning a stream of token ids into a stream of text: characters split over tokens are held
//! back until whole, and text that may be the beginning of a stop string is held back until it
//! is known not to be one (stop strings are never emitted).

use super::TextCodec;

/// Decodes generated tokens incrementally. Decoding the whole sequence at every step would cost
/// quadratic time, and decoding token by token would break characters and the spaces some
/// tokenizers attach to the next word; this decodes a short window behind the newest token and
/// emits what the newest tokens add to it.
#[derive(Debug, Default, Clone)]
pub struct IncrementalText {
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
}

/// Prompt tokens decoded before the first generated one (as vLLM does): enough for a
/// SentencePiece decoder, which drops the space at the start of a text, to see that the first
/// generated word follows others.
const PROMPT_CONTEXT: usize = 5;

impl IncrementalText {
    /// Text generated after `prompt`: its last tokens are decoded with the first generated
    /// ones, never emitted, so that the first token's text is what it adds after the prompt
    /// (` Paris`, not `Paris`, from a SentencePiece token `▁Paris`), as the tokens' own bytes
    /// (logprobs) and llama.cpp's server give it.
    pub fn after_prompt(prompt: &[u32]) -> Self {
        let ids = prompt[prompt.len().saturating_sub(PROMPT_CONTEXT)..].to_vec();
        let read_offset = ids.len();
        Self { ids, prefix_offset: 0, read_offset }
    }

    /// Adds `id` and returns the text it completes (possibly empty).
    pub fn push(&mut self, codec: &dyn TextCodec, id: u32) -> String {
        self.ids.push(id);
        let before = codec.decode(&self.ids[self.prefix_offset..self.read_offset]);
        let after = codec.decode(&self.ids[self.prefix_offset..]);
        // The new text, when the window's text grew by whole characters (a decoder that
        // rewrites earlier text leaves `after` without `before` as its start: wait then).
        match after.get(before.len()..) {
            Some(delta) if after.len() > before.len() && !after.ends_with('\u{FFFD}') && after.starts_with(&before) => {
                let delta = delta.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                delta
            }
            _ => String::new(),
        }
    }

    /// The text still held back (an incomplete character at the end), with U+FFFD for it.
    pub fn finish(&mut self, codec: &dyn TextCodec) -> String {
        let before = codec.decode(&self.ids[self.prefix_offset..self.read_offset]);
        let after = codec.decode(&self.ids[self.prefix_offset..]);
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        match after.strip_prefix(before.as_str()) {
            Some(rest) => rest.to_string(),
            // The decoder rewrote the window: its text after the common start.
            None => {
                let common = before.chars().zip(after.chars()).take_while(|(a, b)| a == b).count();
                after.chars().skip(common).collect()
            }
        }
    }
}

/// The longest stop string accepted, in bytes (OpenAI sets no limit; this bounds the work per
/// token).
pub const MAX_STOP_BYTES: usize = 256;

/// Finds stop strings in generated text.
#[derive(Debug, Default, Clone)]
pub struct StopMatch {
    stops: Vec<String>,
    pending: String,
}

impl StopMatch {
    /// A matcher for these stop strings (empty ones are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|stop| !stop.is_empty()).collect(), pending: String::new() }
    }

    /// Adds `text`; returns the text that may be emitted now and whether a stop string was
    /// found (the text before it is emitted; it and what follows are not).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        let found = self.stops.iter().filter_map(|stop| self.pending.find(stop.as_str())).min();
        if let Some(position) = found {
            let emitted = self.pending[..position].to_string();
            self.pending.clear();
            return (emitted, true);
        }
        // Hold back the longest end of the pending text that begins some stop string.
        let held = self
            .stops
            .iter()
            .flat_map(|stop| {
                stop.char_indices().skip(1).map(|(end, _)| &stop[..end]).filter(|prefix| self.pending.ends_with(prefix))
            })
            .map(str::len)
            .max()
            .unwrap_or(0);
        let split = self.pending.len() - held;
        let emitted = self.pending[..split].to_string();
        self.pending.drain(..split);
        (emitted, false)
    }

    /// Text held back when the sequence ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::InferError;
    use crate::generation::ChatMessage;

    /// Token i is the i-th byte string of a tiny byte-level vocabulary.
    struct Bytes(Vec<Vec<u8>>);

    impl TextCodec for Bytes {
        fn render_chat(&self, _: &[ChatMessage]) -> Result<String, InferError> {
            Ok(String::new())
        }
        fn encode(&self, _: &str, _: bool) -> Result<Vec<u32>, InferError> {
            Ok(vec![])
        }
        fn decode(&self, ids: &[u32]) -> String {
            String::from_utf8_lossy(&ids.iter().flat_map(|&id| self.0[id as usize].clone()).collect::<Vec<_>>())
                .into_owned()
        }
        fn token_bytes(&self, id: u32) -> Vec<u8> {
            self.0[id as usize].clone()
        }
    }

    #[test]
    fn characters_split_over_tokens_come_out_whole() {
        let euro = "€".as_bytes();
        let codec = Bytes(vec![b"a ".to_vec(), euro[..1].to_vec(), euro[1..].to_vec(), b"!".to_vec()]);
        let mut text = IncrementalText::default();
        let pieces: Vec<String> = [0, 1, 2, 3, 0].iter().map(|&id| text.push(&codec, id)).collect();
        assert_eq!(pieces, vec!["a ", "", "€", "!", "a "]);
        let mut cut = IncrementalText::default();
        assert_eq!(cut.push(&codec, 1), "");
        assert_eq!(cut.finish(&codec), "\u{FFFD}");
    }

    /// A SentencePiece-style decoder: `_` is a space, and one space at the start of the text
    /// is dropped.
    struct Spm(Vec<&'static str>);

    impl TextCodec for Spm {
        fn render_chat(&self, _: &[ChatMessage]) -> Result<String, InferError> {
            Ok(Default::default())
        }
        fn encode(&self, _: &str, _: bool) -> Result<Vec<u32>, InferError> {
            Ok(Default::default())
        }
        fn decode(&self, ids: &[u32]) -> String {
            let text: String = ids.iter().map(|&id| self.0[id as usize].replace('_', " ")).collect();
            text.strip_prefix(' ').map(str::to_string).unwrap_or(text)
        }
        fn token_bytes(&self, id: u32) -> Vec<u8> {
            self.0[id as usize].replace('_', " ").into_bytes()
        }
    }

    #[test]
    fn the_first_token_keeps_its_space_after_the_prompt() {
        let codec = Spm(vec!["_Hello", "_world", "_Paris", "_is", "\n"]);
        let mut text = IncrementalText::after_prompt(&[0, 1]);
        let pieces: Vec<String> = [2, 3].iter().map(|&id| text.push(&codec, id)).collect();
        assert_eq!(pieces, vec![" Paris", " is"]);
        // A prompt longer than the context, and one ending in a line break.
        let mut text = IncrementalText::after_prompt(&[0, 1, 0, 1, 0, 1, 4]);
        assert_eq!(text.push(&codec, 2), " Paris");
        assert_eq!(text.finish(&codec), "");
        // Without the prompt, the decoder drops the space.
        assert_eq!(IncrementalText::default().push(&codec, 2), "Paris");
    }

    #[test]
    fn stop_strings_are_found_across_pieces_and_not_emitted() {
        let mut stop = StopMatch::new(vec!["END".into(), "\n\n".into()]);
        assert_eq!(stop.push("Hello E"), ("Hello ".to_string(), false));
        assert_eq!(stop.push("N"), (String::new(), false));
        assert_eq!(stop.push("Dless"), (String::new(), true));
        let mut stop = StopMatch::new(vec!["END".into()]);
        assert_eq!(stop.push("ab E"), ("ab ".to_string(), false));
        assert_eq!(stop.push("x"), ("Ex".to_string(), false));
        assert_eq!(stop.push("E"), (String::new(), false));
        assert_eq!(stop.finish(), "E");
        let mut none = StopMatch::new(vec![String::new()]);
        assert_eq!(none.push("text"), ("text".to_string(), false));
    }
}
