//! The library's error type. Every message names what is wrong and where (file, tensor, key).

use std::path::PathBuf;

use crate::chat::ChatTemplateError;
use crate::tokenizer::TokenizerError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{}: invalid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },

    /// A config file parsed but describes something we cannot run or that contradicts itself.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },

    #[error("missing tensor `{name}` (searched {searched})")]
    MissingTensor { name: String, searched: String },

    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", file.display())]
    ShapeMismatch { file: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("{}: tensor `{name}` has dtype {dtype}; supported: BF16, F16, F32", file.display())]
    UnsupportedDtype { file: PathBuf, name: String, dtype: String },

    #[error("{}: tensor `{name}` holds a non-finite value (NaN or infinity): the file is corrupt", file.display())]
    NonFiniteWeights { file: PathBuf, name: String },

    /// The model computed a NaN or infinite logit: its weights or config are broken.
    #[error("the model produced a non-finite logit (NaN or infinity); its weights or config are broken")]
    NonFiniteLogits,

    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),

    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),

    /// A request the model cannot serve: unknown token id, prompt longer than the context, …
    #[error("{0}")]
    InvalidInput(String),
}

impl Error {
    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config { path: path.into(), message: message.into() }
    }
}
