//! Speculative decoding with the checkpoint's own MTP head ([`crate::model::mtp`]).
//!
//! Decode reads every weight once per token. A step here drafts up to `k` tokens with the small
//! head, then feeds the chosen token and the drafts to the decoder in one verification pass (one
//! read of the weights for `k + 1` tokens) and keeps the longest prefix the decoder agrees with:
//!
//! ```text
//! d_1..d_k = draft(next)                        # the MTP head, chained
//! rows     = verify([next, d_1, .., d_k])       # logits after each of them
//! greedy:   keep d_i while d_i == argmax(rows[i-1]); then argmax of the first row not kept
//! sampling: keep d_i with probability min(1, p_i(d_i) / q_i(d_i)); on the first rejection draw
//!           from norm(max(0, p_i - q_i)); if all are kept, draw from p_k
//! ```
//!
//! `p_i` is what plain sampling would draw from after the same tokens (penalties included) and
//! `q_i` what the draft was drawn from, so the output has plain decoding's distribution (Leviathan
//! et al. 2023, Chen et al. 2023), and greedy output is plain greedy output token for token. The
//! decoder's caches then return to the kept prefix ([`Model::keep_verified`]).
//!
//! How many drafts to make adapts to how many were kept: it starts at one, a step that keeps all
//! of them asks for one more next time (up to `draft_max`), one that keeps none for one fewer, and
//! at zero a single draft is tried again every [`PROBE_EVERY`] steps. Low acceptance thus costs at most one draft
//! per step while it lasts, and nothing between probes.

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::model::{Model, SessionState};
use crate::sampling::Sampler;

/// Drafts per step at most: past four the chained head's guesses are rarely kept.
pub const MAX_DRAFTS: usize = 4;

/// Steps without drafting between two single-draft probes, once drafts stopped being kept.
pub const PROBE_EVERY: usize = 8;

/// How speculative decoding runs.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeculativeOptions {
    /// The most drafts per step, 1 to [`MAX_DRAFTS`].
    pub draft_max: usize,
    /// Adapt the number of drafts to how many are kept (see the module docs); otherwise always
    /// draft `draft_max`.
    pub adaptive: bool,
    /// Draft among the first `n` token ids only. The draft's LM head is most of a draft step's
    /// cost and shrinks by `vocab / n`; Qwen's ids follow BPE merge order, so the first tens of
    /// thousands are the commonest tokens. A draft can then never be a rarer token (the
    /// verification still chooses from all of them: the output does not change, only how often
    /// drafts are kept). `None` drafts over the whole vocabulary.
    pub draft_vocab: Option<usize>,
    /// For benchmarks only: see [`AcceptanceOracle`].
    pub oracle: Option<AcceptanceOracle>,
}

impl SpeculativeOptions {
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_DRAFTS).contains(&self.draft_max) {
            return Err(Error::InvalidInput(format!(
                "draft_max must be 1 to {MAX_DRAFTS}, not {}",
                self.draft_max
            )));
        }
        if self.draft_vocab == Some(0) {
            return Err(Error::InvalidInput("draft_vocab must be at least 1 token id".into()));
        }
        if let Some(oracle) = &self.oracle {
            if !(0.0..=1.0).contains(&oracle.rate) {
                return Err(Error::InvalidInput(format!(
                    "the oracle's acceptance rate must be in [0, 1], not {}",
                    oracle.rate
                )));
            }
        }
        Ok(())
    }
}

impl Default for SpeculativeOptions {
    fn default() -> Self {
        SpeculativeOptions { draft_max: 3, adaptive: true, draft_vocab: None, oracle: None }
    }
}

/// A benchmark's stand-in for a trained head. Random weights make the MTP head's drafts almost
/// always wrong, so a benchmark sets the acceptance it wants to measure: each draft is replaced,
/// with probability `rate`, by the token plain greedy decoding gives at that place (`reference`,
/// the continuation computed beforehand). The head and the verification still run at their real
/// cost. Greedy only; never for real output.
#[derive(Clone, Debug, PartialEq)]
pub struct AcceptanceOracle {
    pub reference: Vec<u32>,
    pub rate: f64,
    pub seed: u64,
}

/// What speculation did during one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpeculationStats {
    /// Verification passes.
    pub steps: usize,
    pub drafted: usize,
    pub accepted: usize,
    pub draft_time: Duration,
    pub verify_time: Duration,
}

impl SpeculationStats {
    /// Fraction of drafts kept (0 when none were made).
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// Runs the steps of one speculative generation.
pub struct Speculator {
    options: SpeculativeOptions,
    /// Drafts the next step asks for.
    k: usize,
    /// Steps since the last draft, while `k` is 0.
    idle: usize,
    oracle_rng: ChaCha8Rng,
    stats: SpeculationStats,
}

/// The drafts of one step and what each was drawn from.
#[derive(Debug)]
pub struct Drafts {
    tokens: Vec<u32>,
    /// When sampling: the distribution draft `i` was drawn from (`q_i`).
    q: Vec<Vec<(u32, f64)>>,
    drafted_at: Instant,
}

impl Drafts {
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Draft `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<u32> {
        self.tokens.get(i).copied()
    }

    /// What a verification pass feeds: `next`, then the drafts.
    pub fn pass(&self, next: u32) -> Vec<u32> {
        let mut pass = Vec::with_capacity(self.tokens.len() + 1);
        pass.push(next);
        pass.extend_from_slice(&self.tokens);
        pass
    }

    /// Speculative sampling at draft `i`, whose target distribution (what plain sampling would
    /// draw from at its position) is `p`: the draft itself with probability
    /// `min(1, p(d) / q(d))`, else a draw from the residual `norm(max(0, p - q))`. The draws use
    /// `sampler`'s generator. Greedy decoding needs no rule: the target's choice is the output.
    pub fn choose(&self, i: usize, p: &[(u32, f64)], sampler: &mut Sampler) -> u32 {
        let (draft, q) = (self.tokens[i], &self.q[i]);
        let (p_d, q_d) = (prob(p, draft), prob(q, draft));
        if sampler.uniform() * q_d >= p_d {
            sampler.draw_from(&residual(p, q))
        } else {
            draft
        }
    }
}

impl Speculator {
    /// Checks the options against the model and makes `state` (which must be empty) keep what
    /// the head needs.
    pub fn new(model: &Model, state: &mut SessionState, options: SpeculativeOptions) -> Result<Self> {
        options.validate()?;
        model.enable_drafting(state)?;
        let seed = options.oracle.as_ref().map_or(0, |o| o.seed);
        Ok(Speculator {
            // Adaptive: start at one draft and grow while they are kept, so that a head that is
            // never right costs one draft, not a ramp down from the most.
            k: if options.adaptive { 1 } else { options.draft_max },
            idle: 0,
            oracle_rng: ChaCha8Rng::seed_from_u64(seed),
            options,
            stats: SpeculationStats::default(),
        })
    }

    pub fn stats(&self) -> &SpeculationStats {
        &self.stats
    }

    /// One step after `next`, the token just chosen (and already given to `sampler.accept`) but
    /// not fed. Drafts at most `room` tokens, verifies, and returns the tokens that follow `next`
    /// as plain decoding would choose them: the kept drafts (already given to `sampler.accept`),
    /// then one more, not yet accepted nor fed. The verification stays recorded, and the caller
    /// ends the step with [`Model::keep_verified`]: `1 + n` tokens fed, where `n` is how many of
    /// the returned tokens before the last it emits. `produced` is how many tokens the
    /// generation has output before `next` (where the oracle reads its reference).
    pub fn step(
        &mut self,
        model: &Model,
        state: &mut SessionState,
        next: u32,
        sampler: &mut Sampler,
        room: usize,
        produced: usize,
    ) -> Result<Vec<u32>> {
        let drafts = self.draft(model, state, next, sampler, room, produced)?;
        let rows = model.verify(state, &drafts.pass(next))?;
        let mut out = Vec::with_capacity(drafts.len() + 1);
        for (i, row) in rows.chunks_exact(model.vocab_size()).enumerate() {
            let row = crate::generate::finite(row)?;
            let token = match drafts.get(i) {
                Some(_) if sampler.params().temperature > 0.0 => {
                    let p = sampler.distribution(row);
                    drafts.choose(i, &p, sampler)
                }
                _ => sampler.sample(row),
            };
            if drafts.get(i) != Some(token) {
                out.push(token);
                break;
            }
            sampler.accept(token);
            out.push(token);
        }
        self.verified(&drafts, out.len() - 1);
        Ok(out)
    }

    /// Drafts at most `room` tokens to follow `next` (the token about to be fed), as many as the
    /// adaptive count allows; for sampling each is drawn, with `sampler`'s generator, from the
    /// head's distribution under the request's warpers. See [`step`](Self::step).
    pub fn draft(
        &mut self,
        model: &Model,
        state: &mut SessionState,
        next: u32,
        sampler: &mut Sampler,
        room: usize,
        produced: usize,
    ) -> Result<Drafts> {
        let want = self.budget().min(room);
        let greedy = sampler.params().temperature == 0.0;
        let started = Instant::now();
        let mut q: Vec<Vec<(u32, f64)>> = Vec::new();
        let tokens = if want == 0 {
            Vec::new()
        } else {
            let oracle = self.options.oracle.as_ref();
            let rng = &mut self.oracle_rng;
            let mut drawn = 0;
            let candidates = self.options.draft_vocab.unwrap_or(usize::MAX).min(model.vocab_size());
            model.draft_among(state, next, want, candidates, &mut |logits| {
                drawn += 1;
                let mut token = if greedy {
                    crate::sampling::argmax(logits)
                } else {
                    // The draft is drawn from q: the rule holds for any q, as long as it is the
                    // one drawn from.
                    let dist = draft_distribution(logits, sampler.params());
                    let token = sampler.draw_from(&dist);
                    q.push(dist);
                    token
                };
                if let Some(o) = oracle {
                    if let Some(&right) = o.reference.get(produced + drawn) {
                        if rng.random::<f64>() < o.rate {
                            token = right;
                        }
                    }
                }
                Some(token)
            })?
        };
        let drafted_at = Instant::now();
        self.stats.draft_time += drafted_at - started;
        Ok(Drafts { tokens, q, drafted_at })
    }

    /// Ends a step whose `drafts` were verified and of which `kept` were kept: counts them and
    /// adapts the next step's draft count.
    pub fn verified(&mut self, drafts: &Drafts, kept: usize) {
        self.stats.verify_time += drafts.drafted_at.elapsed();
        self.stats.steps += 1;
        self.stats.drafted += drafts.len();
        self.stats.accepted += kept;
        self.adapt(drafts.len(), kept);
    }

    /// Drafts to ask for in this step.
    fn budget(&mut self) -> usize {
        if !self.options.adaptive || self.k > 0 {
            return self.k;
        }
        self.idle += 1;
        if self.idle >= PROBE_EVERY {
            self.idle = 0;
            1
        } else {
            0
        }
    }

    fn adapt(&mut self, drafted: usize, kept: usize) {
        if !self.options.adaptive || drafted == 0 {
            return;
        }
        if kept == drafted {
            self.k = (self.k.max(drafted) + 1).min(self.options.draft_max);
        } else if kept == 0 {
            self.k = self.k.saturating_sub(1);
        }
    }
}

/// The draft's distribution: the request's logit bias, temperature, top-k, top-p and min-p over
/// the head's logits (the penalties need the history, which the target applies).
fn draft_distribution(logits: &[f32], params: &crate::sampling::SamplingParams) -> Vec<(u32, f64)> {
    let plain = crate::sampling::SamplingParams {
        temperature: params.temperature,
        top_k: params.top_k,
        top_p: params.top_p,
        min_p: params.min_p,
        logit_bias: params.logit_bias.clone(),
        seed: Some(0),
        ..Default::default()
    };
    // validate() cannot fail: the values come from a sampler that accepted them.
    let mut sampler = Sampler::new(plain).expect("warpers of a valid sampler");
    sampler.distribution(logits)
}

fn prob(distribution: &[(u32, f64)], id: u32) -> f64 {
    distribution.iter().find(|&&(i, _)| i == id).map_or(0.0, |&(_, p)| p)
}

/// `norm(max(0, p - q))`, or `p` itself where q covers p everywhere (then p == q).
fn residual(p: &[(u32, f64)], q: &[(u32, f64)]) -> Vec<(u32, f64)> {
    let size = p.iter().chain(q).map(|&(id, _)| id as usize + 1).max().unwrap_or(0);
    let mut q_dense = vec![0.0f64; size];
    for &(id, qi) in q {
        q_dense[id as usize] = qi;
    }
    let r: Vec<(u32, f64)> = p
        .iter()
        .map(|&(id, pi)| (id, (pi - q_dense[id as usize]).max(0.0)))
        .filter(|&(_, v)| v > 0.0)
        .collect();
    if r.is_empty() {
        p.to_vec()
    } else {
        r
    }
}
