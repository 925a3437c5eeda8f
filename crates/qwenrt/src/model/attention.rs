//! Gated full attention (`Qwen3_5Attention`): per-head `[q | gate]` projection, zero-centred
//! q/k RMSNorm, partial M-RoPE, grouped-query causal softmax attention over the KV cache, and a
//! sigmoid output gate before `o_proj`. Without the gate, plain norms and full-width RoPE it is
//! Qwen3's attention (`Qwen3Attention`), which the same code runs.

use qwenrt_kernels as k;
use rayon::prelude::*;

use super::rope::{MRope, Position3};
use super::{grow, LayerWeights};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::linear::Linear;

pub struct GatedAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// q_norm and k_norm weights as they multiply (Qwen3.5's `1 + w` folded at load).
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Whether `q_proj` also produces the output gate (`attn_output_gate`).
    gated: bool,
    eps: f32,
}

#[derive(Default)]
pub struct AttentionScratch {
    q_and_gate: Vec<f32>,
    q: Vec<f32>,
    gate: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    /// Per KV head: attention probabilities of its query heads `[group, past + t]` and their
    /// output rows `[t, group, head_dim]`.
    heads: Vec<(Vec<f32>, Vec<f32>)>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl GatedAttention {
    pub(crate) fn load(w: &LayerWeights, config: &ModelConfig) -> Result<Self> {
        let t = &config.text;
        let (heads, kv_heads, hd, hidden) =
            (t.num_attention_heads, t.num_key_value_heads, config.head_dim, t.hidden_size);
        let gated = t.attn_output_gate;
        let p = |name: &str| format!("{}self_attn.{name}", w.prefix);
        Ok(GatedAttention {
            q_proj: w.linear(&p("q_proj.weight"), heads * hd * if gated { 2 } else { 1 }, hidden)?,
            k_proj: w.linear(&p("k_proj.weight"), kv_heads * hd, hidden)?,
            v_proj: w.linear(&p("v_proj.weight"), kv_heads * hd, hidden)?,
            o_proj: w.linear(&p("o_proj.weight"), hidden, heads * hd)?,
            q_norm: w.norm(&p("q_norm.weight"), hd)?,
            k_norm: w.norm(&p("k_norm.weight"), hd)?,
            heads,
            kv_heads,
            head_dim: hd,
            gated,
            eps: t.rms_norm_eps as f32,
        })
    }

    pub fn weight_bytes(&self) -> usize {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj].iter().map(|l| l.bytes()).sum::<usize>()
            + 4 * (self.q_norm.len() + self.k_norm.len())
    }

    /// The q (and gate), k and v projections of `t` rows, which may belong to several sequences.
    pub fn project(&self, x: &[f32], t: usize, s: &mut AttentionScratch) {
        let hd = self.head_dim;
        let (q_width, kv_width) = (self.heads * hd, self.kv_heads * hd);
        // query_states, gate = torch.chunk(q_proj(x).view(*input_shape, -1, head_dim * 2), 2, dim=-1)
        let q = grow(&mut s.q, t * q_width);
        let gate = grow(&mut s.gate, t * q_width);
        if self.gated {
            let qg = grow(&mut s.q_and_gate, t * 2 * q_width);
            self.q_proj.forward(x, t, qg);
            for (i, pair) in qg.chunks_exact(2 * hd).enumerate() {
                q[i * hd..(i + 1) * hd].copy_from_slice(&pair[..hd]);
                gate[i * hd..(i + 1) * hd].copy_from_slice(&pair[hd..]);
            }
        } else {
            self.q_proj.forward(x, t, q);
        }
        self.k_proj.forward(x, t, grow(&mut s.k, t * kv_width));
        self.v_proj.forward(x, t, grow(&mut s.v, t * kv_width));
        grow(&mut s.attn, t * q_width);
    }

    /// Norms, rotary embedding, cache update and causal attention for the projected `rows` of
    /// one sequence (at `positions`, one per row), whose cache `keys`/`values` is.
    pub fn attend_sequence(
        &self,
        rows: std::ops::Range<usize>,
        positions: &[Position3],
        rope: &MRope,
        keys: &mut Vec<f32>,
        values: &mut Vec<f32>,
        s: &mut AttentionScratch,
    ) {
        let hd = self.head_dim;
        let (q_width, kv_width) = (self.heads * hd, self.kv_heads * hd);
        let t = rows.len();
        let q = &mut s.q[rows.start * q_width..rows.end * q_width];
        let kx = &mut s.k[rows.start * kv_width..rows.end * kv_width];
        let vx = &s.v[rows.start * kv_width..rows.end * kv_width];

        // q_norm / k_norm over each head, then apply_rotary_pos_emb on the first rotary_dim dims
        let half = rope.half_dim();
        let cos = grow(&mut s.cos, half);
        let sin = grow(&mut s.sin, half);
        let mut normed = [0.0f32; super::deltanet::MAX_HEAD_DIM];
        let normed = &mut normed[..hd];
        for ti in 0..t {
            rope.tables(positions[ti], cos, sin);
            for head in q[ti * q_width..(ti + 1) * q_width].chunks_exact_mut(hd) {
                k::rms_norm(head, &self.q_norm, self.eps, normed);
                head.copy_from_slice(normed);
                rope.rotate(head, cos, sin);
            }
            for head in kx[ti * kv_width..(ti + 1) * kv_width].chunks_exact_mut(hd) {
                k::rms_norm(head, &self.k_norm, self.eps, normed);
                head.copy_from_slice(normed);
                rope.rotate(head, cos, sin);
            }
        }

        // key_states, value_states = cache.update(key_states, value_states, ...)
        let past = keys.len() / kv_width;
        keys.extend_from_slice(kx);
        values.extend_from_slice(vx);

        // softmax(q k^T * head_dim^-0.5 + causal_mask) v, one query row at a time so that a long
        // prompt never materialises a [t, t] matrix. One task per KV head: the query heads that
        // share it read each cached key and value once, not once per query head.
        let scale = (hd as f32).powf(-0.5);
        let group = self.heads / self.kv_heads;
        if s.heads.len() < self.kv_heads {
            s.heads.resize_with(self.kv_heads, Default::default);
        }
        let (keys, values, q) = (&keys[..], &values[..], &*q);
        s.heads[..self.kv_heads].par_iter_mut().enumerate().for_each(|(kvh, (scores_buf, out))| {
            let span = past + t;
            let scores_buf = grow(scores_buf, group * span);
            let out = grow(out, t * group * hd);
            out.fill(0.0);
            let key = |j: usize| &keys[j * kv_width + kvh * hd..j * kv_width + (kvh + 1) * hd];
            let value = |j: usize| &values[j * kv_width + kvh * hd..j * kv_width + (kvh + 1) * hd];
            for ti in 0..t {
                let visible = past + ti + 1;
                let query = |g: usize| {
                    let h = kvh * group + g;
                    &q[ti * q_width + h * hd..ti * q_width + (h + 1) * hd]
                };
                for j in 0..visible {
                    let kj = key(j);
                    for g in 0..group {
                        scores_buf[g * span + j] = k::dot(query(g), kj) * scale;
                    }
                }
                for g in 0..group {
                    k::softmax(&mut scores_buf[g * span..g * span + visible]);
                }
                let rows = &mut out[ti * group * hd..(ti + 1) * group * hd];
                for j in 0..visible {
                    let vj = value(j);
                    for (g, oh) in rows.chunks_exact_mut(hd).enumerate() {
                        k::axpy(oh, scores_buf[g * span + j], vj);
                    }
                }
            }
        });
        let attn = &mut s.attn[rows.start * q_width..rows.end * q_width];
        for (kvh, (_, out)) in s.heads[..self.kv_heads].iter().enumerate() {
            for ti in 0..t {
                let first = kvh * group * hd;
                attn[ti * q_width + first..ti * q_width + first + group * hd]
                    .copy_from_slice(&out[ti * group * hd..(ti + 1) * group * hd]);
            }
        }
    }

    /// The output gate and projection of all `t` rows.
    pub fn output(&self, t: usize, s: &mut AttentionScratch, out: &mut [f32]) {
        let attn = &mut s.attn[..t * self.heads * self.head_dim];
        // attn_output = attn_output * torch.sigmoid(gate); o_proj(attn_output)
        if self.gated {
            for (a, &g) in attn.iter_mut().zip(s.gate.iter()) {
                *a *= k::sigmoid(g);
            }
        }
        self.o_proj.forward(attn, t, out);
    }
}
