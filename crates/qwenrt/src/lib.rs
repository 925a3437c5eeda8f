//! qwenrt: a synchronous, embeddable CPU inference engine for Qwen3.5 models.
//!
//! Weights ([`Model`]) are immutable and shared; each conversation owns a [`SessionState`]
//! (KV caches, DeltaNet conv and recurrent states) that the caller passes to the model.
//! [`LanguageModel`] bundles a model with its tokenizer, chat template and generation defaults.
//! For conversations use [`ChatSession`] (streaming, sampling, thinking control, state reuse
//! across turns; see the [`session`] module); below is the lower level it is built on. Messages
//! may carry images and videos for multimodal checkpoints (see [`vision`]).
//!
//! ```no_run
//! use qwenrt::chat::Message;
//! use qwenrt::{generate, GenerateOptions, LanguageModel, SamplingParams};
//!
//! let lm = LanguageModel::load("Qwen3.5-0.8B".as_ref())?;
//! let prompt = lm.render_chat(&[Message::user("Hello!")], true, None)?;
//! let ids = lm.encode(&prompt)?;
//! let mut state = lm.model.new_state(); // one per conversation; the model is shared
//! let options = GenerateOptions {
//!     max_tokens: 64,
//!     sampling: SamplingParams::greedy(),
//!     stop_ids: lm.stop_ids().to_vec(),
//! };
//! let out = generate(&lm.model, &mut state, &ids, &options, |_token| true)?;
//! println!("{}", lm.tokenizer.decode(&out.tokens)?);
//! # Ok::<(), qwenrt::Error>(())
//! ```

pub mod chat;
pub mod config;
pub mod constraint;
pub mod embed;
mod error;
mod files;
pub mod generate;
#[cfg(feature = "hub")]
pub mod hub;
pub mod linear;
mod lm;
pub mod model;
pub mod params;
pub mod prompt_cache;
pub mod quality;
pub mod sampling;
pub mod scheduler;
pub mod session;
pub mod speculative;
pub mod synthetic;
pub mod tokenizer;
pub mod tool_calls;
pub mod vision;
pub mod weights;

pub use config::ModelConfig;
pub use constraint::{Constraint, ToolCallFormat};
pub use embed::{EmbedKind, EmbedOptions, Embedder, Embedding};
pub use error::{Error, Result};
pub use generate::{
    generate, generate_speculative, FinishReason, GenerateOptions, Generation, GenerationConfig, Sampler,
    SamplingParams,
};
pub use linear::{LoadOptions, WeightDtype};
pub use qwenrt_kernels::{set_threads, threads};
pub use speculative::{SpeculationStats, SpeculativeOptions};

/// The instruction set the kernels chose for this CPU.
pub fn isa_name() -> &'static str {
    qwenrt_kernels::Isa::detect().name()
}
pub use lm::LanguageModel;
pub use model::{EmbeddedInput, Injection, Logits, Model, SessionState, Snapshot};
pub use prompt_cache::{CacheStats, MediaMark, PromptCache};
pub use session::{
    CancelToken, ChatParams, ChatSession, Event, MemoryFootprint, RepetitionGuard, Reply, SessionOptions,
    TokenLogprob, Turn, Usage,
};
pub use vision::{ImageInput, Prompt, VideoInput};
