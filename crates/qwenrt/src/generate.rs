//! Token generation: `generation_config.json`, sampling and the decode loop.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::{Logits, Model, SessionState};
pub use crate::sampling::{argmax, Sampler, SamplingParams};
use crate::speculative::{SpeculationStats, SpeculativeOptions, Speculator};

/// The keys of `generation_config.json` that qwenrt uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub eos_token_id: Option<IdOrIds>,
    #[serde(default)]
    pub do_sample: Option<bool>,
    /// `temperature`, `top_k`, `top_p`, `min_p` and the penalties, under their own keys.
    #[serde(flatten)]
    pub sampling: crate::sampling::SamplingOverrides,
}

/// `eos_token_id` is a single id or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdOrIds {
    One(u32),
    Many(Vec<u32>),
}

impl IdOrIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            IdOrIds::One(id) => vec![*id],
            IdOrIds::Many(ids) => ids.clone(),
        }
    }
}

impl GenerationConfig {
    /// Reads `generation_config.json` from a model folder; a missing file is an empty config.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        match crate::files::read_to_string(&path, crate::files::CONFIG_LIMIT) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| Error::Json { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// The sampling the model's authors recommend; greedy when `do_sample` is false.
    pub fn default_sampling(&self) -> SamplingParams {
        if self.do_sample == Some(false) {
            return SamplingParams::greedy();
        }
        let mut params = SamplingParams::default();
        self.sampling.apply_to(&mut params);
        params
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The token callback asked to stop, or the generation was cancelled.
    Cancelled,
    /// One of the stop strings appeared in the text (it is not part of the output).
    StopString,
    /// The repetition guard found the output looping on a repeated n-gram.
    Repetition,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::StopString => "stop_string",
            FinishReason::Repetition => "repetition",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these ids (which are included in the output tokens).
    pub stop_ids: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, including the stop token if one ended generation.
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Decode speed over the tokens after the first (the first comes out of the prefill).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Feeds `prompt` after what `state` holds, then samples up to `max_tokens` tokens, calling
/// `on_token` for each one as soon as it is chosen; `on_token` returning false cancels.
pub fn generate(
    model: &Model,
    state: &mut SessionState,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    let (mut sampler, mut next, prefill_time) = prefill(model, state, prompt, options)?;
    let decode_start = Instant::now();
    let mut tokens = Vec::new();
    let finish_reason = loop {
        if tokens.len() == options.max_tokens {
            break FinishReason::Length;
        }
        tokens.push(next);
        sampler.accept(next);
        if !on_token(next) {
            break FinishReason::Cancelled;
        }
        if options.stop_ids.contains(&next) {
            break FinishReason::Stop;
        }
        if tokens.len() == options.max_tokens || state.len() >= state.max_len() {
            break FinishReason::Length;
        }
        next = sampler.sample(finite(model.forward(state, &[next], Logits::Last)?)?);
    };
    Ok(Generation {
        tokens,
        finish_reason,
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time: decode_start.elapsed(),
    })
}

/// `logits` if every one is a number: broken weights show up as NaN or infinite logits, which
/// would otherwise sample as garbage (greedy picks the first id, `!`).
pub fn finite(logits: &[f32]) -> Result<&[f32]> {
    if logits.iter().all(|l| l.is_finite()) {
        Ok(logits)
    } else {
        Err(Error::NonFiniteLogits)
    }
}

/// Feeds the prompt and chooses the first token: the sampler (which has seen the prompt), the
/// token, and the time it took.
fn prefill(
    model: &Model,
    state: &mut SessionState,
    prompt: &[u32],
    options: &GenerateOptions,
) -> Result<(Sampler, u32, Duration)> {
    if prompt.is_empty() {
        return Err(Error::InvalidInput("the prompt is empty".into()));
    }
    let mut sampler = Sampler::new(options.sampling.clone())?;
    sampler.observe_prompt(prompt);
    let start = Instant::now();
    let next = sampler.sample(finite(model.forward(state, prompt, Logits::Last)?)?);
    Ok((sampler, next, start.elapsed()))
}

/// [`generate`] with speculative decoding by the model's MTP head ([`crate::speculative`]): the
/// same tokens for greedy decoding, the same distribution for sampling, in fewer passes over the
/// weights when drafts are kept. `state` must be empty (the head needs every position). Returns
/// what speculation did beside the generation.
pub fn generate_speculative(
    model: &Model,
    state: &mut SessionState,
    prompt: &[u32],
    options: &GenerateOptions,
    speculative: SpeculativeOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Generation, SpeculationStats)> {
    if prompt.is_empty() {
        return Err(Error::InvalidInput("the prompt is empty".into()));
    }
    let mut speculator = Speculator::new(model, state, speculative)?;
    let (mut sampler, mut next, prefill_time) = prefill(model, state, prompt, options)?;
    let decode_start = Instant::now();
    let mut tokens = Vec::new();
    let max_len = state.max_len();
    // Emits one token as plain decoding does, `fed` tokens being in the state before it;
    // Some(reason) when it ends the generation (the token is then not fed).
    let mut emit = |tokens: &mut Vec<u32>, token: u32, fed: usize| {
        tokens.push(token);
        if !on_token(token) {
            return Some(FinishReason::Cancelled);
        }
        if options.stop_ids.contains(&token) {
            return Some(FinishReason::Stop);
        }
        if tokens.len() == options.max_tokens || fed >= max_len {
            return Some(FinishReason::Length);
        }
        None
    };
    let finish_reason = 'generation: loop {
        if tokens.len() == options.max_tokens {
            break FinishReason::Length;
        }
        sampler.accept(next);
        if let Some(reason) = emit(&mut tokens, next, state.len()) {
            break reason;
        }
        // Drafts beyond what may still be output, or past the context, would be wasted.
        let start = state.len();
        let room = (options.max_tokens - tokens.len()).min(max_len - start - 1);
        let following = speculator.step(model, state, next, &mut sampler, room, tokens.len() - 1)?;
        let (kept, last) = following.split_at(following.len() - 1);
        for (i, &token) in kept.iter().enumerate() {
            if let Some(reason) = emit(&mut tokens, token, start + 1 + i) {
                model.keep_verified(state, 1 + i)?;
                break 'generation reason;
            }
        }
        model.keep_verified(state, 1 + kept.len())?;
        next = last[0];
    };
    let generation = Generation {
        tokens,
        finish_reason,
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time: decode_start.elapsed(),
    };
    Ok((generation, speculator.stats().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_reads_both_eos_forms() {
        let g: GenerationConfig =
            serde_json::from_str(r#"{"eos_token_id": [248046, 248044], "top_k": 20}"#).unwrap();
        assert_eq!(g.eos_token_id.clone().unwrap().to_vec(), [248046, 248044]);
        let p = g.default_sampling();
        assert_eq!((p.top_k, p.top_p, p.temperature, p.repetition_penalty), (20, 1.0, 1.0, 1.0));
        let g: GenerationConfig = serde_json::from_str(r#"{"eos_token_id": 7}"#).unwrap();
        assert_eq!(g.eos_token_id.unwrap().to_vec(), [7]);
        // Sampling keys sit beside the others; an integer temperature is a number too.
        let g: GenerationConfig =
            serde_json::from_str(r#"{"temperature": 0, "min_p": 0.05, "presence_penalty": 1.5}"#).unwrap();
        let p = g.default_sampling();
        assert_eq!((p.temperature, p.min_p, p.presence_penalty), (0.0, 0.05, 1.5));
    }
}
