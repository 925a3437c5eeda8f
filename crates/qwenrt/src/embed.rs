//! Text embeddings with Qwen3-Embedding models, as sentence-transformers computes them.
//!
//! ```text
//! ids = tokenize(prompt + text) ++ [<|endoftext|>]     # unless the tokenizer already appended it
//! e   = rms_norm(h_L)[last token]                       # last-token pooling (1_Pooling/config.json)
//! e   = e[:dimensions]                                  # optional Matryoshka truncation
//! e   = e / ||e||                                       # the Normalize module
//! ```
//!
//! Queries get the folder's query prompt (`config_sentence_transformers.json`) or
//! `Instruct: {task}\nQuery:`; documents get none. Texts are batched by token budget with no
//! padding: every text is its own sequence in one shared pass over the weights.
//!
//! ```no_run
//! use qwenrt::embed::{EmbedKind, EmbedOptions, Embedder};
//!
//! let embedder = Embedder::load("Qwen3-Embedding-0.6B".as_ref())?;
//! let query = EmbedOptions { kind: EmbedKind::Query, ..Default::default() };
//! let q = embedder.embed(&["What is the capital of China?"], &query)?;
//! let docs = embedder.embed(&["The capital of China is Beijing.", "Gravity"], &EmbedOptions::default())?;
//! let scores: Vec<f32> = docs.iter().map(|d| q[0].cosine(d)).collect();
//! # Ok::<(), qwenrt::Error>(())
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::linear::{LoadOptions, WeightDtype};
use crate::model::{Model, SessionState};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightStore;

/// Tokens of all texts run together in one pass (each text still its own sequence): enough to
/// keep the matrix kernels busy, small enough to bound the activations.
const BATCH_TOKENS: usize = 4096;

/// What a text is, which decides the prompt put before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EmbedKind {
    /// No prompt.
    #[default]
    Document,
    /// The folder's query prompt (`prompts.query` of `config_sentence_transformers.json`).
    Query,
    /// A query for a custom task: `Instruct: {task}\nQuery:`.
    Instruct(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbedOptions {
    pub kind: EmbedKind,
    /// Keep only the first this-many dimensions (then renormalise): Matryoshka truncation.
    pub dimensions: Option<usize>,
    /// Cut texts longer than the model's maximum instead of failing.
    pub truncate: bool,
}

/// One text's embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Unit length.
    pub vector: Vec<f32>,
    /// Tokens the model read (prompt and `<|endoftext|>` included).
    pub tokens: usize,
}

impl Embedding {
    /// Cosine similarity: the dot product, both being unit vectors.
    pub fn cosine(&self, other: &Embedding) -> f32 {
        self.vector.iter().zip(&other.vector).map(|(a, b)| a * b).sum()
    }
}

/// How token states become one vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    LastToken,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize, Default)]
struct SentenceTransformersConfig {
    #[serde(default)]
    prompts: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// An embedding model: a Qwen3 decoder without its LM head, its tokenizer and the
/// sentence-transformers pipeline around them.
pub struct Embedder {
    model: Model,
    tokenizer: Tokenizer,
    end_of_text: u32,
    pooling: Pooling,
    normalize: bool,
    query_prompt: Option<String>,
    max_tokens: usize,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("hidden_size", &self.hidden_size())
            .field("max_tokens", &self.max_tokens)
            .field("pooling", &self.pooling)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads a sentence-transformers folder (or a plain `Qwen3ForCausalLM` folder: last-token
    /// pooling and normalisation are then assumed) in f32, the exactness mode.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, &LoadOptions::with_dtype(WeightDtype::F32))
    }

    pub fn load_with(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let (transformer_dir, pooling, normalize) = read_modules(dir)?;
        let config = ModelConfig::from_file(&transformer_dir.join("config.json"))?;
        let store = WeightStore::open_dir(&transformer_dir)?;
        let model = Model::from_store_with(config, &store, options)?;
        let tokenizer_path = transformer_dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path, model.config().family.pretokenizer())?;
        let end_of_text = tokenizer.token_id("<|endoftext|>").ok_or_else(|| {
            Error::InvalidInput(format!("{} has no <|endoftext|> token", tokenizer_path.display()))
        })?;
        let st: SentenceTransformersConfig =
            read_optional_json(&dir.join("config_sentence_transformers.json"))?;
        let sbert: Option<SentenceBertConfig> =
            read_optional_json(&transformer_dir.join("sentence_bert_config.json"))?;
        let max_tokens = sbert.and_then(|c| c.max_seq_length).unwrap_or(usize::MAX).min(model.max_context());
        Ok(Embedder {
            model,
            tokenizer,
            end_of_text,
            pooling,
            normalize,
            query_prompt: st.prompts.get("query").filter(|p| !p.is_empty()).cloned(),
            max_tokens,
        })
    }

    /// Length of the vectors (before any Matryoshka truncation).
    pub fn hidden_size(&self) -> usize {
        self.model.config().hidden_size()
    }

    /// Most tokens a text may have (prompt and end token included).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn query_prompt(&self) -> Option<&str> {
        self.query_prompt.as_deref()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The prompt `kind` puts before a text.
    pub fn prompt(&self, kind: &EmbedKind) -> Result<String> {
        Ok(match kind {
            EmbedKind::Document => String::new(),
            EmbedKind::Query => self.query_prompt.clone().ok_or_else(|| {
                Error::InvalidInput(
                    "this model folder declares no query prompt (config_sentence_transformers.json); \
                     give the task with an instruction instead"
                        .into(),
                )
            })?,
            EmbedKind::Instruct(task) => format!("Instruct: {task}\nQuery:"),
        })
    }

    /// The token ids the model reads for `text`: prompt, text, `<|endoftext|>`.
    pub fn tokenize(&self, text: &str, options: &EmbedOptions) -> Result<Vec<u32>> {
        let full = self.prompt(&options.kind)? + text;
        let mut ids = self.tokenizer.encode_with_special_tokens(&full)?;
        // Older tokenizer.json files do not append the end token; the model was trained with it.
        if ids.last() != Some(&self.end_of_text) {
            ids.push(self.end_of_text);
        }
        if ids.len() > self.max_tokens {
            if !options.truncate {
                return Err(Error::InvalidInput(format!(
                    "the text has {} tokens (prompt and end token included) but the model takes at \
                     most {}; shorten it or allow truncation",
                    ids.len(),
                    self.max_tokens
                )));
            }
            // As the tokenizer truncates: the text is cut, the end token stays.
            ids.truncate(self.max_tokens - 1);
            ids.push(self.end_of_text);
        }
        Ok(ids)
    }

    /// Embeds `texts`, in order. All texts are tokenized (and checked) before any runs.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S], options: &EmbedOptions) -> Result<Vec<Embedding>> {
        let hidden = self.hidden_size();
        if let Some(d) = options.dimensions {
            if d == 0 || d > hidden {
                return Err(Error::InvalidInput(format!(
                    "dimensions must be between 1 and {hidden} (the model's size), got {d}"
                )));
            }
        }
        let ids = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                self.tokenize(t.as_ref(), options).map_err(|e| match e {
                    Error::InvalidInput(msg) if texts.len() > 1 => {
                        Error::InvalidInput(format!("input {i}: {msg}"))
                    }
                    e => e,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.embed_tokens(&ids, options.dimensions)
    }

    /// Embeds already tokenized texts (see [`tokenize`](Self::tokenize)).
    pub fn embed_tokens(&self, ids: &[Vec<u32>], dimensions: Option<usize>) -> Result<Vec<Embedding>> {
        let hidden = self.hidden_size();
        let keep = dimensions.unwrap_or(hidden).min(hidden);
        let mut out = Vec::with_capacity(ids.len());
        let mut states: Vec<SessionState> = Vec::new();
        let mut start = 0;
        while start < ids.len() {
            // Consecutive texts up to the token budget (at least one, however long).
            let mut end = start + 1;
            let mut tokens = ids[start].len();
            while end < ids.len() && tokens + ids[end].len() <= BATCH_TOKENS {
                tokens += ids[end].len();
                end += 1;
            }
            while states.len() < end - start {
                states.push(self.model.new_state());
            }
            let inputs: Vec<&[u32]> = ids[start..end].iter().map(Vec::as_slice).collect();
            let mut refs: Vec<&mut SessionState> = states.iter_mut().take(end - start).collect();
            let rows = self.model.last_hidden_batch(&mut refs, &inputs)?;
            for (row, input) in rows.chunks_exact(hidden).zip(&inputs) {
                let Pooling::LastToken = self.pooling;
                let mut vector = row[..keep].to_vec();
                if self.normalize {
                    qwenrt_kernels::l2_normalize(&mut vector, 0.0);
                }
                out.push(Embedding { vector, tokens: input.len() });
            }
            start = end;
        }
        Ok(out)
    }
}

/// Reads `modules.json` (if any): the folder of the Transformer module, the pooling it declares
/// and whether a Normalize module follows.
fn read_modules(dir: &Path) -> Result<(std::path::PathBuf, Pooling, bool)> {
    let path = dir.join("modules.json");
    if !exists(&path)? {
        return Ok((dir.to_owned(), Pooling::LastToken, true));
    }
    let modules: Vec<ModuleEntry> = read_json(&path)?;
    let mut transformer = None;
    let mut pooling = None;
    let mut normalize = false;
    for m in &modules {
        let kind = m.kind.rsplit('.').next().unwrap_or(&m.kind);
        match kind {
            "Transformer" => transformer = Some(dir.join(&m.path)),
            "Pooling" => pooling = Some(read_pooling(&dir.join(&m.path).join("config.json"))?),
            "Normalize" => normalize = true,
            other => {
                return Err(Error::config(
                    &path,
                    format!("module type \"{other}\" is not supported (Transformer, Pooling, Normalize)"),
                ))
            }
        }
    }
    let transformer = transformer
        .ok_or_else(|| Error::config(&path, "no sentence_transformers.models.Transformer module"))?;
    let pooling =
        pooling.ok_or_else(|| Error::config(&path, "no sentence_transformers.models.Pooling module"))?;
    Ok((transformer, pooling, normalize))
}

fn read_pooling(path: &Path) -> Result<Pooling> {
    let c: PoolingConfig = read_json(path)?;
    let modes = [
        ("pooling_mode_cls_token", c.pooling_mode_cls_token),
        ("pooling_mode_mean_tokens", c.pooling_mode_mean_tokens),
        ("pooling_mode_max_tokens", c.pooling_mode_max_tokens),
        ("pooling_mode_mean_sqrt_len_tokens", c.pooling_mode_mean_sqrt_len_tokens),
        ("pooling_mode_weightedmean_tokens", c.pooling_mode_weightedmean_tokens),
        ("pooling_mode_lasttoken", c.pooling_mode_lasttoken),
    ];
    let on: Vec<&str> = modes.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect();
    match on.as_slice() {
        ["pooling_mode_lasttoken"] => Ok(Pooling::LastToken),
        [] => Err(Error::config(path, "no pooling mode is set")),
        other => Err(Error::config(
            path,
            format!("pooling {} is not supported (only pooling_mode_lasttoken)", other.join(" + ")),
        )),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::files::read_to_string(path, crate::files::CONFIG_LIMIT)
        .map_err(|source| Error::Io { path: path.to_owned(), source })?;
    serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_owned(), source })
}

fn exists(path: &Path) -> Result<bool> {
    crate::files::exists(path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

fn read_optional_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T> {
    if exists(path)? {
        read_json(path)
    } else {
        Ok(T::default())
    }
}
