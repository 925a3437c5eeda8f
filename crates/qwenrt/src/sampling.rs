//! Choosing the next token from logits: logit bias, repetition/presence/frequency penalties,
//! temperature, top-k, top-p, min-p, then a seeded draw.
//!
//! The order and the formulas are transformers' (`RepetitionPenaltyLogitsProcessor`, then the
//! temperature, top-k, top-p and min-p warpers), with OpenAI's `logit_bias` (added first) and
//! presence/frequency penalties (over generated tokens only).
//!
//! ```
//! use qwenrt::{Sampler, SamplingParams};
//!
//! let params = SamplingParams { temperature: 0.7, top_k: 2, seed: Some(42), ..SamplingParams::default() };
//! let mut sampler = Sampler::new(params)?;
//! let logits = [2.0, 1.0, -5.0, 0.5];
//! let id = sampler.sample(&logits);
//! assert!(id == 0 || id == 1, "top-k 2 keeps the two best");
//! sampler.accept(id); // feeds the repetition/presence/frequency penalties, when set
//! # Ok::<(), qwenrt::Error>(())
//! ```

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// How the next token is chosen. `temperature == 0` means greedy (argmax after bias and
/// penalties; the filters then do not matter).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (after temperature); 0 keeps all.
    pub min_p: f32,
    /// Divides positive logits and multiplies negative ones of every token already in the context
    /// (prompt and generated); 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token generated so far; 0 is off.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated; 0 is off.
    pub frequency_penalty: f32,
    /// Added to the logits of these ids before anything else (`f32::NEG_INFINITY` bans a token).
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the random generator; `None` seeds from the clock. Same seed, same tokens.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// Plain sampling from the model's distribution: temperature 1, no filters, no penalties.
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Self::default() }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidInput(msg));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be a finite number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be a finite number > 0, got {}",
                self.repetition_penalty
            ));
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return bad(format!(
                "presence and frequency penalties must be finite, got {} and {}",
                self.presence_penalty, self.frequency_penalty
            ));
        }
        if let Some((id, b)) = self.logit_bias.iter().find(|(_, b)| b.is_nan() || *b == f32::INFINITY) {
            return bad(format!("logit_bias for token {id} must be finite or -inf, got {b}"));
        }
        Ok(())
    }

    fn penalises_context(&self) -> bool {
        self.repetition_penalty != 1.0
    }

    fn penalises_output(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

/// Sampling settings that a layer above the defaults may set, each left as it is when `None`:
/// `generation_config.json` over the built-in defaults, then a command line or an API request
/// over those. One place applies them all, in one order.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
pub struct SamplingOverrides {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

impl SamplingOverrides {
    /// Sets every field given here on `params`; the others keep their values.
    pub fn apply_to(&self, params: &mut SamplingParams) {
        let set = |target: &mut f32, value: Option<f32>| *target = value.unwrap_or(*target);
        set(&mut params.temperature, self.temperature);
        params.top_k = self.top_k.unwrap_or(params.top_k);
        set(&mut params.top_p, self.top_p);
        set(&mut params.min_p, self.min_p);
        set(&mut params.repetition_penalty, self.repetition_penalty);
        set(&mut params.presence_penalty, self.presence_penalty);
        set(&mut params.frequency_penalty, self.frequency_penalty);
    }
}

/// First candidate-set size tried when top-p needs the most likely tokens in order: sorting the
/// whole 248k vocabulary per token would cost more than the draw is worth.
const NUCLEUS_START: usize = 64;

/// Chooses tokens from logits. Holds the seeded generator, the penalty bookkeeping and reusable
/// buffers, so sampling a token allocates nothing once the buffers have grown.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    work: Vec<f32>,
    candidates: Vec<(f32, u32)>,
    /// Per id: whether it is in the context (repetition penalty) …
    in_context: Vec<bool>,
    context_ids: Vec<u32>,
    /// … and how often it was generated (presence/frequency penalties).
    counts: Vec<u32>,
    generated_ids: Vec<u32>,
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
        Ok(Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            work: Vec::new(),
            candidates: Vec::new(),
            in_context: Vec::new(),
            context_ids: Vec::new(),
            counts: Vec::new(),
            generated_ids: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records context tokens that were not generated (the prompt), for the repetition penalty.
    pub fn observe_prompt(&mut self, ids: &[u32]) {
        if self.params.penalises_context() {
            for &id in ids {
                self.mark_context(id);
            }
        }
    }

    /// Records a token that was generated (or forced into the output), for the penalties.
    pub fn accept(&mut self, id: u32) {
        if self.params.penalises_context() {
            self.mark_context(id);
        }
        if self.params.penalises_output() {
            let i = id as usize;
            if i >= self.counts.len() {
                self.counts.resize(i + 1, 0);
            }
            if self.counts[i] == 0 {
                self.generated_ids.push(id);
            }
            self.counts[i] += 1;
        }
    }

    fn mark_context(&mut self, id: u32) {
        let i = id as usize;
        if i >= self.in_context.len() {
            self.in_context.resize(i + 1, false);
        }
        if !self.in_context[i] {
            self.in_context[i] = true;
            self.context_ids.push(id);
        }
    }

    /// Picks the next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let modifies =
            !p.logit_bias.is_empty() || !self.context_ids.is_empty() || !self.generated_ids.is_empty();
        let greedy = p.temperature == 0.0;
        if greedy && !modifies {
            return argmax(logits);
        }
        self.modify_into_work(logits);
        if greedy {
            return argmax(&self.work);
        }
        self.draw()
    }

    /// [`sample`](Self::sample) among the ids whose bit is set in `allowed` (bit `i % 32` of word
    /// `i / 32`): the others count as `-inf` after bias and penalties, before temperature and the
    /// filters, so greedy takes the best allowed id. `None` when no allowed id has a finite
    /// score (every one banned by `-inf` biases, or no id allowed).
    pub fn sample_masked(&mut self, logits: &[f32], allowed: &[u32]) -> Option<u32> {
        let best = self.masked_into_work(logits, allowed)?;
        if self.params.temperature == 0.0 {
            return Some(best);
        }
        Some(self.draw())
    }

    /// [`distribution`](Self::distribution) among the ids `allowed` (as for
    /// [`sample_masked`](Self::sample_masked)); `None` when no allowed id has a finite score.
    pub fn distribution_masked(&mut self, logits: &[f32], allowed: &[u32]) -> Option<Vec<(u32, f64)>> {
        let best = self.masked_into_work(logits, allowed)?;
        if self.params.temperature == 0.0 {
            return Some(vec![(best, 1.0)]);
        }
        Some(self.distribution_of_work())
    }

    /// The logits with bias and penalties applied and every id outside `allowed` at `-inf`, in
    /// `self.work`; returns the best id, or `None` when none is finite.
    fn masked_into_work(&mut self, logits: &[f32], allowed: &[u32]) -> Option<u32> {
        self.modify_into_work(logits);
        for (chunk, &bits) in self.work.chunks_mut(32).zip(allowed.iter().chain(std::iter::repeat(&0))) {
            // Most words are all-allowed (inside a string) or all-banned (between JSON tokens).
            match bits {
                u32::MAX => {}
                0 => chunk.fill(f32::NEG_INFINITY),
                _ => {
                    for (j, l) in chunk.iter_mut().enumerate() {
                        if bits >> j & 1 == 0 {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        let best = argmax(&self.work) as usize;
        if self.work.get(best).is_none_or(|&l| l == f32::NEG_INFINITY || l.is_nan()) {
            return None;
        }
        Some(best as u32)
    }

    /// The logits with bias and penalties applied, in `self.work`.
    fn modify_into_work(&mut self, logits: &[f32]) {
        let p = &self.params;
        let w = &mut self.work;
        w.clear();
        w.extend_from_slice(logits);
        let n = w.len();
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = w.get_mut(id as usize) {
                *l += bias;
            }
        }
        for &id in self.context_ids.iter().filter(|&&id| (id as usize) < n) {
            let l = &mut w[id as usize];
            *l = if *l < 0.0 { *l * p.repetition_penalty } else { *l / p.repetition_penalty };
        }
        for &id in self.generated_ids.iter().filter(|&&id| (id as usize) < n) {
            let count = self.counts[id as usize] as f32;
            w[id as usize] -= count * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// Temperature, top-k, top-p and min-p over `self.work` (biased and penalised logits), then
    /// a draw.
    fn draw(&mut self) -> u32 {
        let p = &self.params;
        if (p.top_k == 0 || p.top_k >= self.work.len()) && p.top_p >= 1.0 && p.min_p <= 0.0 {
            // No filter: one pass over the vocabulary, no candidate list.
            let t = p.temperature;
            self.work.iter_mut().for_each(|l| *l /= t);
            let w = &self.work;
            let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total = w.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>();
            let mut r = self.rng.random::<f64>() * total;
            let mut last = 0;
            for (i, &l) in w.iter().enumerate() {
                let prob = ((l - max) as f64).exp();
                if prob > 0.0 {
                    r -= prob;
                    last = i;
                    if r < 0.0 {
                        return i as u32;
                    }
                }
            }
            return last as u32;
        }
        let (keep, max) = self.survivors();
        let survivors = &self.candidates[..keep];
        let mass: f64 = survivors.iter().map(|&(l, _)| ((l - max) as f64).exp()).sum();
        let mut r = self.rng.random::<f64>() * mass;
        for &(l, id) in survivors {
            r -= ((l - max) as f64).exp();
            if r < 0.0 {
                return id;
            }
        }
        survivors.last().map_or_else(|| argmax(&self.work), |&(_, id)| id)
    }

    /// What `sample` would draw from for these logits, with this sampler's history: the
    /// (id, probability) pairs of every id it can choose (one id with probability 1 when greedy).
    /// Speculative sampling compares two such distributions.
    pub fn distribution(&mut self, logits: &[f32]) -> Vec<(u32, f64)> {
        self.modify_into_work(logits);
        if self.params.temperature == 0.0 {
            return vec![(argmax(&self.work), 1.0)];
        }
        self.distribution_of_work()
    }

    /// The distribution of `self.work` (biased and penalised logits) under temperature, top-k,
    /// top-p and min-p.
    fn distribution_of_work(&mut self) -> Vec<(u32, f64)> {
        let (keep, max) = self.survivors();
        let survivors = &self.candidates[..keep];
        let mass: f64 = survivors.iter().map(|&(l, _)| ((l - max) as f64).exp()).sum();
        survivors.iter().map(|&(l, id)| (id, ((l - max) as f64).exp() / mass)).collect()
    }

    /// A uniform draw in `[0, 1)` from this sampler's seeded generator.
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// Draws from a distribution of (id, probability) pairs that sum to about 1.
    pub fn draw_from(&mut self, distribution: &[(u32, f64)]) -> u32 {
        let total: f64 = distribution.iter().map(|&(_, p)| p).sum();
        let mut r = self.rng.random::<f64>() * total;
        for &(id, p) in distribution {
            r -= p;
            if r < 0.0 {
                return id;
            }
        }
        distribution.last().map_or(0, |&(id, _)| id)
    }

    /// Temperature, top-k, min-p and top-p over `self.work`: leaves the ids that can be drawn
    /// in `self.candidates[..keep]` as (logit / temperature, id), and returns `keep` and the
    /// largest scaled logit.
    fn survivors(&mut self) -> (usize, f32) {
        let p = &self.params;
        let t = p.temperature;
        let n = self.work.len();
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let c = &mut self.candidates;
        // The normaliser of the distribution top-p sees: the top-k survivors, or everything.
        let top_k = p.top_k > 0 && p.top_k < n;
        let (max, total) = if top_k {
            // Dividing by a positive temperature keeps the order: select first, scale k values.
            top_k_into(&self.work, p.top_k, c);
            c.iter_mut().for_each(|x| x.0 /= t);
            let max = c.iter().map(|x| x.0).fold(f32::NEG_INFINITY, f32::max);
            (max, c.iter().map(|&(l, _)| ((l - max) as f64).exp()).sum::<f64>())
        } else {
            c.clear();
            self.work.iter_mut().for_each(|l| *l /= t);
            let max = self.work.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            (max, self.work.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>())
        };
        let w = &self.work;
        // min-p keeps a most-likely-first prefix, like top-k and top-p, so applying it as a
        // threshold up front gives the same survivors as transformers' order.
        let min_logit = if p.min_p > 0.0 { max + p.min_p.ln() } else { f32::NEG_INFINITY };
        if top_k {
            c.retain(|&(l, _)| l >= min_logit);
            if c.is_empty() {
                let best = argmax(w);
                c.push((w[best as usize], best));
            }
        } else {
            c.extend(
                w.iter()
                    .enumerate()
                    .filter(|&(_, &l)| l >= min_logit && l > f32::NEG_INFINITY)
                    .map(|(i, &l)| (l, i as u32)),
            );
        }
        let mut keep = c.len();
        if p.top_p < 1.0 {
            // The nucleus in order of likelihood, growing the sorted prefix only as far as needed.
            let mut want = NUCLEUS_START.min(c.len());
            loop {
                if want < c.len() {
                    c.select_nth_unstable_by(want - 1, by_logit_desc);
                }
                c[..want].sort_unstable_by(by_logit_desc);
                let mut mass = 0.0f64;
                let mut kept = 0;
                let mut reached = false;
                for &(l, _) in &c[..want] {
                    if kept > 0 && mass / total >= p.top_p as f64 {
                        reached = true;
                        break;
                    }
                    mass += ((l - max) as f64).exp();
                    kept += 1;
                }
                if reached || want == c.len() {
                    keep = kept;
                    break;
                }
                want = (want * 4).min(c.len());
            }
        }
        (keep, max)
    }
}

/// The `k` largest logits as (logit, id), in no particular order, ties going to the lower id:
/// one pass over the vocabulary with an occasional compaction, instead of sorting or selecting
/// over a vocabulary-sized buffer. `-inf` logits (banned tokens) are left out.
fn top_k_into(logits: &[f32], k: usize, out: &mut Vec<(f32, u32)>) {
    let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let cap = (4 * k).max(256);
    out.clear();
    // Nothing below the k-th best seen so far can enter; a later equal logit has a higher id and
    // loses the tie, so `>` is exact.
    let mut threshold = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > threshold {
            out.push((l, i as u32));
            if out.len() == cap {
                out.select_nth_unstable_by(k - 1, by_logit_desc);
                out.truncate(k);
                threshold = out[k - 1].0;
            }
        }
    }
    if out.len() > k {
        out.select_nth_unstable_by(k - 1, by_logit_desc);
        out.truncate(k);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams, seed: u64) -> Sampler {
        Sampler::new(SamplingParams { seed: Some(seed), ..params }).unwrap()
    }

    fn at(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, ..SamplingParams::default() }
    }

    fn softmax(logits: &[f32]) -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|x| x / z).collect()
    }

    fn frequencies(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut c = vec![0usize; logits.len()];
        for _ in 0..draws {
            c[s.sample(logits) as usize] += 1;
        }
        c.iter().map(|&x| x as f64 / draws as f64).collect()
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < tol, "token {i}: frequency {g} vs probability {w}\n{got:?}\n{want:?}");
        }
    }

    #[test]
    fn greedy_takes_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(sampler(SamplingParams::greedy(), 1).sample(&[0.0, 3.0, 1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_never_leaves_the_k_best() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 50) as f32 * 0.1).collect();
        let mut best: Vec<usize> = (0..50).collect();
        best.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let allowed = &best[..5];
        let mut s = sampler(SamplingParams { top_k: 5, ..at(2.0) }, 7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let id = s.sample(&logits) as usize;
            assert!(allowed.contains(&id), "sampled {id} outside the top 5");
            seen.insert(id);
        }
        assert_eq!(seen.len(), 5, "a high temperature should reach every one of the 5");
    }

    #[test]
    fn streaming_top_k_equals_a_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut out = Vec::new();
        for (n, k) in [(10, 3), (1000, 20), (5000, 1), (5000, 700), (300, 299)] {
            // Few distinct values, so ties are everywhere; some banned tokens.
            let logits: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..20u32) {
                    0 => f32::NEG_INFINITY,
                    v => (v % 7) as f32,
                })
                .collect();
            let mut want: Vec<(f32, u32)> = logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (l, i as u32))
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            want.truncate(k);
            top_k_into(&logits, k, &mut out);
            out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            assert_eq!(out, want, "n {n}, k {k}");
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let mut s = sampler(SamplingParams { top_p: 0.7, ..at(1.0) }, 3);
        let f = frequencies(&mut s, &logits, 4000);
        assert_eq!(f[2] + f[3], 0.0, "{f:?}");
        assert!((f[0] - 0.625).abs() < 0.03, "renormalised 0.5/0.8, got {}", f[0]);
    }

    #[test]
    fn top_p_over_a_wide_nucleus_grows_past_the_first_candidates() {
        // 1000 equally likely tokens and 1000 negligible ones: top_p 0.5 keeps ~500 of the first
        // kind, far more than the first sorted batch.
        let logits: Vec<f32> = (0..2000).map(|i| if i < 1000 { 0.0 } else { -30.0 }).collect();
        let mut s = sampler(SamplingParams { top_p: 0.5, ..at(1.0) }, 11);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20000 {
            let id = s.sample(&logits);
            // 500 tokens hold exactly half the mass; the negligible tail makes it a hair less, so
            // a 501st joins (ties break towards lower ids).
            assert!(id <= 500, "{id} is outside the nucleus");
            seen.insert(id);
        }
        assert!(seen.len() > 450, "only {} distinct tokens drawn", seen.len());
    }

    #[test]
    fn min_p_drops_tokens_below_the_fraction_of_the_best() {
        // Probabilities ∝ 1, 0.5, 0.2, 0.05: min_p 0.1 drops the last only.
        let logits: Vec<f32> = [1.0f32, 0.5, 0.2, 0.05].iter().map(|p| p.ln()).collect();
        let mut s = sampler(SamplingParams { min_p: 0.1, ..at(1.0) }, 5);
        let f = frequencies(&mut s, &logits, 20000);
        assert_close(&f, &[1.0 / 1.7, 0.5 / 1.7, 0.2 / 1.7, 0.0], 0.015);
        // After temperature: at T = 2 the ratios are square roots (1, .71, .45, .22), so min_p 0.3
        // keeps three.
        let mut s = sampler(SamplingParams { min_p: 0.3, ..at(2.0) }, 5);
        let f = frequencies(&mut s, &logits, 5000);
        assert_eq!(f[3], 0.0);
        assert!(f[2] > 0.1, "{f:?}");
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut s = sampler(SamplingParams { repetition_penalty: 1.5, ..SamplingParams::greedy() }, 1);
        s.observe_prompt(&[0]);
        assert_eq!(s.sample(&[2.0, 1.5]), 1, "2 / 1.5 < 1.5");
        assert_eq!(s.sample(&[-1.0, -1.2]), 1, "-1 * 1.5 < -1.2");
        assert_eq!(s.sample(&[3.5, 2.0]), 0, "3.5 / 1.5 > 2");
        // The distribution after the penalty.
        let mut s = sampler(SamplingParams { repetition_penalty: 2.0, ..at(1.0) }, 9);
        s.accept(1);
        let logits = [1.0f32, 2.0, -1.0];
        let f = frequencies(&mut s, &logits, 20000);
        assert_close(&f, &softmax(&[1.0, 1.0, -1.0]), 0.015);
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens() {
        let params = SamplingParams { presence_penalty: 0.5, frequency_penalty: 0.25, ..at(1.0) };
        let mut s = sampler(params, 4);
        s.observe_prompt(&[2]); // the prompt is not penalised
        s.accept(0);
        s.accept(0);
        s.accept(1);
        let logits = [1.0f32, 1.0, 1.0];
        let f = frequencies(&mut s, &logits, 20000);
        assert_close(&f, &softmax(&[1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25, 1.0]), 0.015);
    }

    #[test]
    fn logit_bias_is_added_first() {
        let ban = SamplingParams { logit_bias: vec![(0, f32::NEG_INFINITY)], ..SamplingParams::greedy() };
        assert_eq!(sampler(ban, 1).sample(&[5.0, 1.0, 0.0]), 1);
        let push = SamplingParams { logit_bias: vec![(2, 10.0), (99, 1.0)], top_k: 1, ..at(1.0) };
        assert_eq!(sampler(push, 1).sample(&[5.0, 1.0, 0.0]), 2, "ids outside the vocabulary are ignored");
        let shift = SamplingParams { logit_bias: vec![(1, 1.0)], ..at(1.0) };
        let f = frequencies(&mut sampler(shift, 2), &[0.0, 0.0], 20000);
        assert_close(&f, &softmax(&[0.0, 1.0]), 0.015);
    }

    #[test]
    fn same_seed_same_draws_and_frequencies_follow_softmax() {
        let logits = [1.0f32, 0.0, -1.0];
        let draws = |seed| {
            let mut s = sampler(at(1.0), seed);
            (0..100).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
        let f = frequencies(&mut sampler(at(1.0), 9), &logits, 20000);
        assert_close(&f, &softmax(&logits), 0.015);
        // Temperature 0.5 doubles the logits.
        let f = frequencies(&mut sampler(at(0.5), 9), &logits, 20000);
        assert_close(&f, &softmax(&[2.0, 0.0, -2.0]), 0.015);
    }

    #[test]
    fn filters_combine_like_transformers() {
        // top_k 3 renormalises over {0, 1, 2}; top_p 0.8 of that keeps {0, 1}.
        let probs = [0.4f32, 0.3, 0.2, 0.1];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let mut s = sampler(SamplingParams { top_k: 3, top_p: 0.7, ..at(1.0) }, 8);
        let f = frequencies(&mut s, &logits, 20000);
        // Mass before token 1 is 0.4/0.9 = 0.44 < 0.7; before token 2 it is 0.78 >= 0.7.
        assert_close(&f, &[0.4 / 0.7, 0.3 / 0.7, 0.0, 0.0], 0.015);
    }

    #[test]
    fn masked_sampling_stays_inside_the_mask() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        // Allowed: ids 3, 40..=71 (a whole word), 97.
        let mut allowed = vec![0u32; 4];
        for id in [3usize, 97].into_iter().chain(40..72) {
            allowed[id / 32] |= 1 << (id % 32);
        }
        let is_allowed = |id: u32| allowed[id as usize / 32] >> (id % 32) & 1 == 1;
        let best = (0..100u32)
            .filter(|&i| is_allowed(i))
            .max_by(|&a, &b| logits[a as usize].total_cmp(&logits[b as usize]))
            .unwrap();
        assert_eq!(sampler(SamplingParams::greedy(), 0).sample_masked(&logits, &allowed), Some(best));
        for params in
            [at(1.0), SamplingParams { top_k: 5, ..at(0.7) }, SamplingParams { top_p: 0.5, ..at(1.3) }]
        {
            let mut s = sampler(params, 9);
            for _ in 0..500 {
                assert!(is_allowed(s.sample_masked(&logits, &allowed).unwrap()));
            }
        }
        // Masked draws follow the softmax renormalised over the allowed ids.
        let mut s = sampler(at(1.0), 5);
        let mut counts = vec![0usize; 100];
        let draws = 20_000;
        for _ in 0..draws {
            counts[s.sample_masked(&logits, &allowed).unwrap() as usize] += 1;
        }
        let masked: Vec<f32> =
            (0..100u32).map(|i| if is_allowed(i) { logits[i as usize] } else { f32::NEG_INFINITY }).collect();
        let want = softmax(&masked);
        let got: Vec<f64> = counts.iter().map(|&c| c as f64 / draws as f64).collect();
        assert_close(&got, &want, 0.015);
        // Nothing possible: no id allowed, or every allowed id banned by a bias.
        assert_eq!(sampler(at(1.0), 1).sample_masked(&logits, &[0; 4]), None);
        let banned = SamplingParams { logit_bias: vec![(5, f32::NEG_INFINITY)], ..SamplingParams::greedy() };
        assert_eq!(sampler(banned, 1).sample_masked(&logits, &[1 << 5, 0, 0, 0]), None);
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let check = |p: SamplingParams, word: &str| {
            let e = Sampler::new(p).err().expect("should be rejected").to_string();
            assert!(e.contains(word), "{e}");
        };
        check(at(-1.0), "temperature");
        check(SamplingParams { top_p: 0.0, ..at(1.0) }, "top_p");
        check(SamplingParams { min_p: 1.5, ..at(1.0) }, "min_p");
        check(SamplingParams { repetition_penalty: 0.0, ..at(1.0) }, "repetition_penalty");
        check(SamplingParams { presence_penalty: f32::NAN, ..at(1.0) }, "presence");
        check(SamplingParams { logit_bias: vec![(3, f32::INFINITY)], ..at(1.0) }, "logit_bias");
    }
}
