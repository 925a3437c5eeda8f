//! Token generation: `generation_config.json`, sampling and the decode loop.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::{Logits, Model, SessionState};

/// The keys of `generation_config.json` that qwenrt uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub eos_token_id: Option<IdOrIds>,
    #[serde(default)]
    pub do_sample: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub top_p: Option<f32>,
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
        match std::fs::read_to_string(&path) {
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
        SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: None,
        }
    }
}

/// How the next token is chosen. `temperature == 0` means greedy (argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Seed of the random generator; `None` seeds from the clock.
    pub seed: Option<u64>,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: None }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidInput(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
}

/// Chooses tokens from logits: temperature, then top-k, then top-p (the order of transformers'
/// logits warpers), then a draw from what is left.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Ok(Sampler { params, rng: ChaCha8Rng::seed_from_u64(seed), candidates: Vec::new() })
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (l * inv_t, i as u32)));
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.params.top_k;
        if k > 0 && k < c.len() {
            c.select_nth_unstable_by(k - 1, by_logit_desc);
            c.truncate(k);
        }
        c.sort_unstable_by(by_logit_desc);
        // Softmax over the survivors (the max is c[0]).
        let max = c[0].0;
        let mut total = 0.0f64;
        for cand in c.iter_mut() {
            cand.0 = (cand.0 - max).exp();
            total += cand.0 as f64;
        }
        if self.params.top_p < 1.0 {
            // Keep tokens while the probability mass before them is below top_p (at least one).
            let mut mass = 0.0f64;
            let mut keep = 0;
            for cand in c.iter() {
                if keep > 0 && mass / total >= self.params.top_p as f64 {
                    break;
                }
                mass += cand.0 as f64;
                keep += 1;
            }
            c.truncate(keep);
            total = mass;
        }
        let mut r = self.rng.random::<f64>() * total;
        for &(p, id) in c.iter() {
            r -= p as f64;
            if r < 0.0 {
                return id;
            }
        }
        c[c.len() - 1].1
    }
}

/// Index of the largest logit; the first one on ties, as `torch.argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The token callback asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
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
    if prompt.is_empty() {
        return Err(Error::InvalidInput("the prompt is empty".into()));
    }
    let mut sampler = Sampler::new(options.sampling.clone())?;
    let start = Instant::now();
    let mut next = sampler.sample(model.forward(state, prompt, Logits::Last)?);
    let prefill_time = start.elapsed();
    let decode_start = Instant::now();
    let mut tokens = Vec::new();
    let finish_reason = loop {
        if tokens.len() == options.max_tokens {
            break FinishReason::Length;
        }
        tokens.push(next);
        if !on_token(next) {
            break FinishReason::Cancelled;
        }
        if options.stop_ids.contains(&next) {
            break FinishReason::Stop;
        }
        if tokens.len() == options.max_tokens || state.len() >= state.max_len() {
            break FinishReason::Length;
        }
        next = sampler.sample(model.forward(state, &[next], Logits::Last)?);
    };
    Ok(Generation {
        tokens,
        finish_reason,
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time: decode_start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Sampler {
        Sampler::new(SamplingParams { temperature, top_k, top_p, seed: Some(seed) }).unwrap()
    }

    #[test]
    fn greedy_takes_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(sampler(0.0, 0, 1.0, 1).sample(&[0.0, 3.0, 1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_never_leaves_the_k_best() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 50) as f32 * 0.1).collect();
        let mut best: Vec<usize> = (0..50).collect();
        best.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let allowed = &best[..5];
        let mut s = sampler(2.0, 5, 1.0, 7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let id = s.sample(&logits) as usize;
            assert!(allowed.contains(&id), "sampled {id} outside the top 5");
            seen.insert(id);
        }
        assert_eq!(seen.len(), 5, "a high temperature should reach every one of the 5");
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let mut s = sampler(1.0, 0, 0.7, 3);
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        let frac0 = counts[0] as f64 / 4000.0;
        assert!((frac0 - 0.625).abs() < 0.03, "renormalised 0.5/0.8, got {frac0}");
    }

    #[test]
    fn same_seed_same_draws_and_frequencies_follow_softmax() {
        let logits = [1.0f32, 0.0, -1.0];
        let draws = |seed| {
            (0..100)
                .map(|_| 0)
                .scan(sampler(1.0, 0, 1.0, seed), |s, _: i32| Some(s.sample(&logits)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
        let mut s = sampler(1.0, 0, 1.0, 9);
        let mut c = [0usize; 3];
        for _ in 0..20000 {
            c[s.sample(&logits) as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for i in 0..3 {
            let want = (logits[i] as f64).exp() / z;
            let got = c[i] as f64 / 20000.0;
            assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let bad = SamplingParams { temperature: -1.0, ..SamplingParams::greedy() };
        assert!(Sampler::new(bad).err().unwrap().to_string().contains("temperature"));
        let bad = SamplingParams { top_p: 0.0, temperature: 1.0, ..SamplingParams::greedy() };
        assert!(Sampler::new(bad).err().unwrap().to_string().contains("top_p"));
    }

    #[test]
    fn generation_config_reads_both_eos_forms() {
        let g: GenerationConfig =
            serde_json::from_str(r#"{"eos_token_id": [248046, 248044], "top_k": 20}"#).unwrap();
        assert_eq!(g.eos_token_id.unwrap().to_vec(), [248046, 248044]);
        let g: GenerationConfig = serde_json::from_str(r#"{"eos_token_id": 7}"#).unwrap();
        assert_eq!(g.eos_token_id.unwrap().to_vec(), [7]);
    }
}
