//! What one turn generates and how: [`ChatParams`], which a [`crate::LanguageModel`] fills
//! with its own defaults and a [`crate::ChatSession`] or [`crate::scheduler::Scheduler`] runs.

use crate::constraint::Constraint;
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;
use crate::speculative::SpeculativeOptions;

/// Ends generation when the output loops: the last tokens are one n-gram (`n <= max_ngram`)
/// repeated at least `min_repeats` times back to back, spanning at least `min_tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepetitionGuard {
    pub max_ngram: usize,
    pub min_repeats: usize,
    pub min_tokens: usize,
}

impl Default for RepetitionGuard {
    fn default() -> Self {
        RepetitionGuard { max_ngram: 32, min_repeats: 3, min_tokens: 32 }
    }
}

impl RepetitionGuard {
    /// Whether `tokens` ends in a loop.
    pub fn is_looping(&self, tokens: &[u32]) -> bool {
        // An n-gram repeated at least twice fits only for n <= len / 2: the bound keeps an
        // absurd max_ngram from looping for ever.
        (1..=self.max_ngram.min(tokens.len() / 2)).any(|n| {
            let repeats = self.min_repeats.max(self.min_tokens.div_ceil(n)).max(2);
            n.checked_mul(repeats).is_some_and(|span| {
                span <= tokens.len() && {
                    let tail = &tokens[tokens.len() - span..];
                    (n..span).all(|i| tail[i] == tail[i - n])
                }
            })
        })
    }
}

/// What one turn generates and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatParams {
    pub sampling: SamplingParams,
    /// Most tokens to sample, reasoning included.
    pub max_tokens: usize,
    /// Generation ends when the text contains one of these (checked across token boundaries);
    /// the stop string and anything after it are not part of the output. Reasoning and content
    /// are searched separately.
    pub stop: Vec<String>,
    /// The chat template's `enable_thinking`; `None` lets the template decide (off for
    /// Qwen3.5-0.8B and 2B, on for the larger ones).
    pub enable_thinking: Option<bool>,
    /// When the reasoning reaches this many tokens, the thought is closed (`</think>` and what
    /// the template puts after it are fed to the model) and the answer begins.
    pub max_thinking_tokens: Option<usize>,
    /// Off by default.
    pub repetition_guard: Option<RepetitionGuard>,
    /// Report each sampled token's log-probability and this many most likely alternatives
    /// ([`Event::Token`], [`Reply::logprobs`]); `None` skips the work.
    pub logprobs: Option<usize>,
    /// What the answer must be (see [`crate::constraint`]); the reasoning stays free. Checked
    /// when the turn begins: a bad schema, regex or grammar is an error before any token.
    pub constraint: Option<Constraint>,
    /// Speculative decoding with the checkpoint's MTP head ([`crate::speculative`]): the same
    /// output (token for token when greedy, in distribution when sampling) in fewer passes over
    /// the weights when the drafts are kept. Needs a session made with
    /// [`SessionOptions::drafting`](crate::SessionOptions::drafting); `None` decodes one token
    /// per pass.
    pub speculative: Option<SpeculativeOptions>,
}

impl Default for ChatParams {
    /// Model-independent defaults; [`LanguageModel::default_params`] uses the model's own
    /// `generation_config.json` instead.
    fn default() -> Self {
        ChatParams {
            sampling: SamplingParams::default(),
            max_tokens: 1024,
            stop: Vec::new(),
            enable_thinking: None,
            max_thinking_tokens: None,
            repetition_guard: None,
            logprobs: None,
            constraint: None,
            speculative: None,
        }
    }
}

impl ChatParams {
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::InvalidInput("stop strings must not be empty".into()));
        }
        if let Some(g) = &self.repetition_guard {
            if g.max_ngram == 0 || g.min_repeats < 2 {
                return Err(Error::InvalidInput(format!(
                    "repetition guard needs max_ngram >= 1 and min_repeats >= 2, got {g:?}"
                )));
            }
        }
        if let Some(s) = &self.speculative {
            s.validate()?;
        }
        Ok(())
    }
}
