//! What every handler and middleware shares: below both, so neither depends on the other.

use std::sync::Arc;

use qwenrt::LanguageModel;

use super::embeddings::EmbeddingService;
use super::engine::Engine;

/// Everything the handlers share.
pub struct AppState {
    pub lm: Arc<LanguageModel>,
    pub engine: Engine,
    /// The name `/v1/models` reports.
    pub model_id: String,
    pub api_key: Option<String>,
    /// Most tokens a sequence may hold, prompt and answer.
    pub max_context: usize,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How long a request body may take to arrive.
    pub read_timeout: std::time::Duration,
    /// When the server started (the models' `created`).
    pub started: u64,
    /// The embedding model, with `--embedding-model`.
    pub embeddings: Option<EmbeddingService>,
    /// How requests decode speculatively (`--speculative`), unless they turn it off.
    pub speculative: Option<qwenrt::SpeculativeOptions>,
}
