//! Qwen3.5's multi-token-prediction head (`mtp.*`), which drafts tokens for speculative
//! decoding, and the bookkeeping that keeps its cache in step with the decoder's.
//!
//! transformers skips these tensors; the definition followed is vLLM's
//! (`model_executor/models/qwen3_5_mtp.py`, `Qwen3_5MultiTokenPredictor.forward`, and the
//! proposer loop of `v1/spec_decode/eagle.py`), which llama.cpp's `graph_mtp` agrees with:
//!
//! ```text
//! H[p] = norm(h[p])                                # the decoder's output AFTER its final norm
//! e = pre_fc_norm_embedding(embed_tokens(x[p+1]));  g = pre_fc_norm_hidden(H[p])
//! y = fc(cat([e, g], -1))                          # [hidden, 2 * hidden], embedding half first
//! y = decoder_layer(y) at position p               # gated full attention + SwiGLU, own KV cache
//! h_mtp = mtp.norm(y);  logits = lm_head(h_mtp)    # the shared (tied) head: a guess at x[p+2]
//! ```
//!
//! Row `p` of the head pairs the decoder's state after position `p` with the token that follows
//! it, so the head can only run once that token is known. Between drafts the decoder's final-normed
//! rows wait in [`MtpCache`] with their tokens; a draft first feeds them (catching up on every
//! position the decoder has verified) and then chains: draft `k + 1` pairs the head's own `h_mtp`
//! of draft `k` with draft `k`, one position further. The chained rows are guesses, so the cache
//! is cut back to the verified positions after each draft. All norms are zero-centred (`1 + w`).

use qwenrt_kernels as k;

use super::attention::GatedAttention;
use super::state::KvRows;
use super::{grow, rms_norm_rows, LayerWeights, Mlp, Model, Position3};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::linear::Linear;

pub(crate) struct MtpHead {
    pre_fc_norm_embedding: Vec<f32>,
    pre_fc_norm_hidden: Vec<f32>,
    /// `[hidden, 2 * hidden]`.
    fc: Linear,
    input_layernorm: Vec<f32>,
    attention: GatedAttention,
    post_attention_layernorm: Vec<f32>,
    mlp: Mlp,
    norm: Vec<f32>,
}

impl MtpHead {
    /// The head if the checkpoint has one (`mtp.fc.weight`), checked tensor by tensor; `None`
    /// for checkpoints saved without it (every transformers save).
    pub(crate) fn load(w: &LayerWeights, config: &ModelConfig) -> Result<Option<Self>> {
        if !w.store.contains("mtp.fc.weight") {
            return Ok(None);
        }
        let t = &config.text;
        if t.mtp_num_hidden_layers > 1 || t.mtp_use_dedicated_embeddings {
            return Err(Error::InvalidInput(format!(
                "config.json: an MTP head with {} layers{} is not supported (Qwen3.5 has one layer and \
                 shares the embedding)",
                t.mtp_num_hidden_layers,
                if t.mtp_use_dedicated_embeddings { " and its own embedding" } else { "" }
            )));
        }
        let hidden = t.hidden_size;
        let layer = LayerWeights { prefix: "mtp.layers.0.".into(), ..*w };
        Ok(Some(MtpHead {
            pre_fc_norm_embedding: w.norm("mtp.pre_fc_norm_embedding.weight", hidden)?,
            pre_fc_norm_hidden: w.norm("mtp.pre_fc_norm_hidden.weight", hidden)?,
            fc: w.linear("mtp.fc.weight", hidden, 2 * hidden)?,
            input_layernorm: layer.norm("mtp.layers.0.input_layernorm.weight", hidden)?,
            attention: GatedAttention::load(&layer, config)?,
            post_attention_layernorm: layer.norm("mtp.layers.0.post_attention_layernorm.weight", hidden)?,
            mlp: Mlp::load(&layer, config)?,
            norm: w.norm("mtp.norm.weight", hidden)?,
        }))
    }

    pub(crate) fn weight_bytes(&self) -> usize {
        self.fc.bytes() + self.attention.weight_bytes() + self.mlp.weight_bytes()
    }
}

/// What a state keeps for the MTP head: its own keys and values (one row per decoder position
/// already paired with its next token), and the decoder's final-normed rows still waiting for
/// theirs.
#[derive(Clone, Debug)]
pub(crate) struct MtpCache {
    keys: KvRows,
    values: KvRows,
    /// `H[p]` for the positions `keys.rows()..len`, `[waiting, hidden]`.
    hidden: Vec<f32>,
    /// The tokens at the same positions (`x[p]`: row `p`'s next token is the one after it).
    tokens: Vec<u32>,
    /// Each waiting row's M-RoPE position.
    positions: Vec<Position3>,
}

impl MtpCache {
    pub(crate) fn new(keys: KvRows, values: KvRows) -> Self {
        MtpCache { keys, values, hidden: Vec::new(), tokens: Vec::new(), positions: Vec::new() }
    }

    /// Positions whose head row is cached.
    pub(crate) fn filled(&self) -> usize {
        self.keys.rows()
    }

    /// Appends the decoder's final-normed rows (`[t, hidden]`) of `tokens` at `positions`.
    pub(crate) fn push(&mut self, normed: &[f32], tokens: &[u32], positions: &[Position3]) {
        self.hidden.extend_from_slice(normed);
        self.tokens.extend_from_slice(tokens);
        self.positions.extend_from_slice(positions);
    }

    /// Forgets waiting rows past the first `waiting` (a verification pass rolled back).
    pub(crate) fn truncate_waiting(&mut self, waiting: usize, hidden: usize) {
        self.hidden.truncate(waiting * hidden);
        self.tokens.truncate(waiting);
        self.positions.truncate(waiting);
    }

    pub(crate) fn waiting(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
        self.hidden.clear();
        self.tokens.clear();
        self.positions.clear();
    }

    pub(crate) fn bytes(&self) -> usize {
        self.keys.byte_len() + self.values.byte_len() + self.hidden.len() * 4
    }
}

impl Model {
    /// Whether the checkpoint carries an MTP head, so that [`draft`](Self::draft) can work.
    pub fn has_mtp(&self) -> bool {
        self.mtp.is_some()
    }

    /// Makes `state` keep what the MTP head needs from every token fed from now on. The state
    /// must be empty: the head needs the decoder's output at every position.
    pub fn enable_drafting(&self, state: &mut super::SessionState) -> Result<()> {
        if self.mtp.is_none() {
            return Err(Error::InvalidInput(
                "this checkpoint has no MTP head (mtp.* tensors): speculative decoding with mtp is \
                 unavailable"
                    .into(),
            ));
        }
        self.check_state(state)?;
        if state.mtp.is_some() {
            return Ok(());
        }
        if !state.is_empty() {
            return Err(Error::InvalidInput(
                "drafting must be enabled on an empty state (the MTP head needs every position)".into(),
            ));
        }
        state.mtp = Some(MtpCache::new(state.new_kv_rows(), state.new_kv_rows()));
        Ok(())
    }

    /// Drafts up to `max` tokens to follow `next`, the token about to be fed after what `state`
    /// holds. `pick` chooses each draft from the head's logits (`[vocab]`) or ends the draft with
    /// `None`. The state's decoder caches are untouched; the head's cache catches up on every
    /// position fed since the last draft.
    pub fn draft(
        &self,
        state: &mut super::SessionState,
        next: u32,
        max: usize,
        pick: &mut dyn FnMut(&[f32]) -> Option<u32>,
    ) -> Result<Vec<u32>> {
        self.draft_among(state, next, max, self.vocab_size(), pick)
    }

    /// [`draft`](Self::draft) with the head scoring only the first `candidates` token ids:
    /// `pick` gets `[candidates]` logits. The LM head is most of a draft step's cost (on the
    /// 0.8B it is a third of all the weights), and shrinks in proportion.
    pub fn draft_among(
        &self,
        state: &mut super::SessionState,
        next: u32,
        max: usize,
        candidates: usize,
        pick: &mut dyn FnMut(&[f32]) -> Option<u32>,
    ) -> Result<Vec<u32>> {
        let vocab = self.vocab_size();
        if !(1..=vocab).contains(&candidates) {
            return Err(Error::InvalidInput(format!(
                "a draft's candidates must be 1 to {vocab} token ids, not {candidates}"
            )));
        }
        let head = self
            .mtp
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("this checkpoint has no MTP head: it cannot draft".into()))?;
        self.check_state(state)?;
        if next as usize >= self.vocab_size() {
            return Err(Error::InvalidInput(format!("token id {next} is outside the vocabulary")));
        }
        let Some(mut cache) = state.mtp.take() else {
            return Err(Error::InvalidInput(
                "drafting was not enabled on this state (Model::enable_drafting)".into(),
            ));
        };
        if cache.waiting() == 0 {
            state.mtp = Some(cache);
            return Err(Error::InvalidInput("nothing to draft from: the state has no tokens".into()));
        }
        let hidden = self.config.text.hidden_size;
        let verified = cache.filled();
        let mut s = std::mem::take(&mut state.scratch);
        // Catch up: row p pairs H[p] with x[p + 1]; the last waiting row's next token is `next`.
        let waiting = cache.waiting();
        let mut tokens = std::mem::take(&mut cache.tokens);
        tokens.remove(0);
        tokens.push(next);
        let rows_h = std::mem::take(&mut cache.hidden);
        let positions = std::mem::take(&mut cache.positions);
        let mut h_mtp = Vec::new();
        for start in (0..waiting).step_by(super::PREFILL_BATCH) {
            let end = (start + super::PREFILL_BATCH).min(waiting);
            h_mtp = self.mtp_rows(
                head,
                &mut cache,
                &rows_h[start * hidden..end * hidden],
                &tokens[start..end],
                &positions[start..end],
                &mut s,
            );
        }
        // Chain: draft k + 1 pairs the head's own h_mtp of draft k with draft k, one position on.
        let mut position = positions[waiting - 1];
        let mut drafts = Vec::with_capacity(max);
        let outcome = loop {
            if drafts.len() == max {
                break Ok(());
            }
            if !drafts.is_empty() {
                position = position.map(|p| p + 1);
                h_mtp =
                    self.mtp_rows(head, &mut cache, &h_mtp, &drafts[drafts.len() - 1..], &[position], &mut s);
            }
            let logits = grow(&mut s.logits, candidates);
            self.lm_head().forward_rows(&h_mtp, 1, 0..candidates, logits);
            match pick(logits) {
                None => break Ok(()),
                Some(token) if token as usize >= vocab => {
                    break Err(Error::InvalidInput(format!(
                        "drafted token id {token} is outside the vocabulary"
                    )))
                }
                Some(token) => drafts.push(token),
            }
        };
        // The chained rows were guesses: the cache keeps only the verified positions' rows.
        cache.keys.truncate(verified + waiting);
        cache.values.truncate(verified + waiting);
        state.scratch = s;
        state.mtp = Some(cache);
        outcome.map(|()| drafts)
    }

    /// One pass of the head over `t` rows (`h`: `[t, hidden]` final-normed decoder or head rows,
    /// `tokens`: each row's next token), appending to its cache; returns the last row's `h_mtp`.
    fn mtp_rows(
        &self,
        head: &MtpHead,
        cache: &mut MtpCache,
        h: &[f32],
        tokens: &[u32],
        positions: &[Position3],
        s: &mut super::Scratch,
    ) -> Vec<f32> {
        let hidden = self.config.text.hidden_size;
        let eps = self.config.text.rms_norm_eps as f32;
        let t = tokens.len();
        // cat([pre_fc_norm_embedding(embed(x)), pre_fc_norm_hidden(h)], -1)
        let mut joined = vec![0.0f32; t * 2 * hidden];
        let mut row = vec![0.0f32; hidden];
        for (i, (&token, h)) in tokens.iter().zip(h.chunks_exact(hidden)).enumerate() {
            let out = &mut joined[i * 2 * hidden..(i + 1) * 2 * hidden];
            self.embed_tokens.row(token as usize, &mut row);
            k::rms_norm(&row, &head.pre_fc_norm_embedding, eps, &mut out[..hidden]);
            k::rms_norm(h, &head.pre_fc_norm_hidden, eps, &mut out[hidden..]);
        }
        // y = fc(...)
        let y = grow(&mut s.hidden, t * hidden);
        head.fc.forward(&joined, t, y);
        // y = y + self_attn(input_layernorm(y))
        let normed = grow(&mut s.normed, t * hidden);
        rms_norm_rows(&s.hidden[..t * hidden], &head.input_layernorm, eps, normed);
        head.attention.project(normed, t, &mut s.attn);
        head.attention.attend_sequence(
            0..t,
            positions,
            &self.rope,
            &mut cache.keys,
            &mut cache.values,
            &mut s.attn,
        );
        let mixed = grow(&mut s.mixed, t * hidden);
        head.attention.output(t, &mut s.attn, mixed);
        let y = &mut s.hidden[..t * hidden];
        k::add_assign(y, mixed);
        // y = y + mlp(post_attention_layernorm(y))
        rms_norm_rows(y, &head.post_attention_layernorm, eps, normed);
        head.mlp.forward(normed, t, &mut s.mlp_gate, &mut s.mlp_up, mixed);
        k::add_assign(y, mixed);
        // h_mtp = norm(y), of the last row
        let mut h_mtp = vec![0.0f32; hidden];
        k::rms_norm(&y[(t - 1) * hidden..], &head.norm, eps, &mut h_mtp);
        h_mtp
    }
}
