//! qwenrt: a synchronous, embeddable CPU inference engine for Qwen3.5 models.
//!
//! Weights ([`Model`]) are immutable and shared; each conversation owns a [`SessionState`]
//! (KV caches, DeltaNet conv and recurrent states) that the caller passes to the model.
//! [`LanguageModel`] bundles a model with its tokenizer, chat template and generation defaults.

pub mod chat;
pub mod config;
mod error;
pub mod generate;
pub mod linear;
mod lm;
pub mod model;
pub mod tokenizer;
pub mod weights;

pub use config::ModelConfig;
pub use error::{Error, Result};
pub use generate::{generate, FinishReason, GenerateOptions, Generation, GenerationConfig, Sampler, SamplingParams};
pub use lm::LanguageModel;
pub use model::{Logits, Model, SessionState, Snapshot};
