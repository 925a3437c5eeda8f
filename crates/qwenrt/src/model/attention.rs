//! Gated full attention (`Qwen3_5Attention`): per-head `[q | gate]` projection, zero-centred
//! q/k RMSNorm, partial M-RoPE, grouped-query causal softmax attention over the KV cache, and a
//! sigmoid output gate before `o_proj`. Without the gate, plain norms and full-width RoPE it is
//! Qwen3's attention (`Qwen3Attention`), which the same code runs.

use qwenrt_kernels as k;

use super::rope::{MRope, Position3};
use super::state::KvRows;
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
    /// One per KV head, so heads run in parallel.
    heads: Vec<HeadScratch>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Query rows per tile of the tiled attention (times the GQA group).
const QUERY_TILE: usize = 64;
/// Keys per tile of the tiled attention.
const KEY_TILE: usize = 256;
/// From this many new tokens on, attention runs tiled (matrix products per tile, online
/// softmax); fewer (decode) take the row-by-row path, which is bound by reading the cache.
const TILED_MIN_TOKENS: usize = 16;

/// Buffers of one KV head's task.
#[derive(Default)]
struct HeadScratch {
    /// Output rows of its query heads, `[t, group, head_dim]`.
    out: Vec<f32>,
    /// Row-by-row path: attention probabilities `[group, past + t]`.
    scores: Vec<f32>,
    /// Tiled path: the tile's queries, keys, transposed values, scores, running max and sum,
    /// accumulated output and one tile's `P V`.
    q: Vec<f32>,
    k: Vec<f32>,
    vt: Vec<f32>,
    s: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
    pv: Vec<f32>,
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
        keys: &mut KvRows,
        values: &mut KvRows,
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
        let past = keys.rows();
        keys.extend(kx);
        values.extend(vx);

        // softmax(q k^T * head_dim^-0.5 + causal_mask) v. One task per KV head: the query heads
        // that share it read each cached key and value once, not once per query head. No
        // [t, past + t] matrix is ever built: decode goes one query row at a time, prompts in
        // tiles of queries × keys with a running softmax.
        let scale = (hd as f32).powf(-0.5);
        let group = self.heads / self.kv_heads;
        if s.heads.len() < self.kv_heads {
            s.heads.resize_with(self.kv_heads, Default::default);
        }
        let (keys, values, q) = (&*keys, &*values, &*q);
        k::pool::for_each_mut(&mut s.heads[..self.kv_heads], |kvh, hs| {
            let layout = HeadLayout { kvh, group, hd, q_width, past, t, scale };
            if t >= TILED_MIN_TOKENS {
                attend_tiled(&layout, q, keys, values, hs);
            } else {
                attend_rows(&layout, q, keys, values, hs);
            }
        });
        let attn = &mut s.attn[rows.start * q_width..rows.end * q_width];
        for (kvh, HeadScratch { out, .. }) in s.heads[..self.kv_heads].iter().enumerate() {
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

/// Where one KV head's queries, keys and values are.
struct HeadLayout {
    kvh: usize,
    group: usize,
    hd: usize,
    /// Row width of the queries.
    q_width: usize,
    /// Cached positions before the new tokens, and new tokens.
    past: usize,
    t: usize,
    scale: f32,
}

impl HeadLayout {
    fn query<'a>(&self, q: &'a [f32], ti: usize, g: usize) -> &'a [f32] {
        let h = self.kvh * self.group + g;
        &q[ti * self.q_width + h * self.hd..ti * self.q_width + (h + 1) * self.hd]
    }
}

/// One query row at a time (decode): the kernel reads each visible cached row once for all the
/// query heads of the group.
fn attend_rows(l: &HeadLayout, q: &[f32], keys: &KvRows, values: &KvRows, hs: &mut HeadScratch) {
    let (group, hd, past, t) = (l.group, l.hd, l.past, l.t);
    let scores = grow(&mut hs.scores, group * (past + t));
    let out = grow(&mut hs.out, t * group * hd);
    let scaled = grow(&mut hs.q, group * hd);
    for ti in 0..t {
        let first = ti * l.q_width + l.kvh * group * hd;
        for (d, &v) in scaled.iter_mut().zip(&q[first..first + group * hd]) {
            *d = v * l.scale;
        }
        k::attention::attend_cached(
            keys.format(),
            scaled,
            hd,
            keys.head(l.kvh),
            values.head(l.kvh),
            hd,
            past + ti + 1,
            scores,
            &mut out[ti * group * hd..(ti + 1) * group * hd],
        );
    }
}

/// Tiles of `QUERY_TILE` new tokens (all query heads of the group) against `KEY_TILE` keys: the
/// scores and the probability-weighted values of a tile are matrix products; the softmax runs
/// online (a running max and sum per row, earlier partial sums rescaled), as in FlashAttention.
fn attend_tiled(l: &HeadLayout, q: &[f32], keys: &KvRows, values: &KvRows, hs: &mut HeadScratch) {
    let (group, hd, past, t) = (l.group, l.hd, l.past, l.t);
    let out = grow(&mut hs.out, t * group * hd);
    for q0 in (0..t).step_by(QUERY_TILE) {
        let q1 = (q0 + QUERY_TILE).min(t);
        let rows = (q1 - q0) * group;
        // Row r = (token q0 + r / group, query head r % group), pre-scaled.
        let qt = grow(&mut hs.q, rows * hd);
        for ti in q0..q1 {
            for g in 0..group {
                let r = (ti - q0) * group + g;
                for (d, &v) in qt[r * hd..(r + 1) * hd].iter_mut().zip(l.query(q, ti, g)) {
                    *d = v * l.scale;
                }
            }
        }
        let max = grow(&mut hs.max, rows);
        max.fill(f32::NEG_INFINITY);
        let sum = grow(&mut hs.sum, rows);
        sum.fill(0.0);
        let acc = grow(&mut hs.acc, rows * hd);
        acc.fill(0.0);
        // The last query of the tile sees keys up to past + q1 - 1.
        let visible_end = past + q1;
        for k0 in (0..visible_end).step_by(KEY_TILE) {
            let k1 = (k0 + KEY_TILE).min(visible_end);
            let kn = k1 - k0;
            let kt = grow(&mut hs.k, kn * hd);
            let vt = grow(&mut hs.vt, hd * kn);
            let value_row = grow(&mut hs.pv, hd);
            for j in k0..k1 {
                keys.read(l.kvh, j, &mut kt[(j - k0) * hd..(j - k0 + 1) * hd]);
                values.read(l.kvh, j, value_row);
                for (d, &v) in value_row.iter().enumerate() {
                    vt[d * kn + (j - k0)] = v;
                }
            }
            // scores = q k^T over the tile
            let scores = grow(&mut hs.s, rows * kn);
            k::matmul_f32_local(qt, kt, scores, rows, hd, kn);
            for r in 0..rows {
                let visible = past + q0 + r / group + 1;
                let row = &mut scores[r * kn..(r + 1) * kn];
                // causal_mask: keys after the query's own position do not exist for it
                let live = visible.saturating_sub(k0).min(kn);
                row[live..].fill(f32::NEG_INFINITY);
                let tile_max = row[..live].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let new_max = max[r].max(tile_max);
                if new_max == f32::NEG_INFINITY {
                    row.fill(0.0); // nothing visible yet in this row
                    continue;
                }
                let rescale = (max[r] - new_max).exp();
                let mut tile_sum = 0.0f32;
                for v in row.iter_mut() {
                    *v = (*v - new_max).exp();
                    tile_sum += *v;
                }
                sum[r] = sum[r] * rescale + tile_sum;
                max[r] = new_max;
                acc[r * hd..(r + 1) * hd].iter_mut().for_each(|a| *a *= rescale);
            }
            // acc += p v over the tile
            let pv = grow(&mut hs.pv, rows * hd);
            k::matmul_f32_local(scores, vt, pv, rows, kn, hd);
            k::add_assign(acc, pv);
        }
        for ti in q0..q1 {
            for g in 0..group {
                let r = (ti - q0) * group + g;
                let inv = 1.0 / sum[r];
                let dst = &mut out[(ti * group + g) * hd..(ti * group + g + 1) * hd];
                for (d, &a) in dst.iter_mut().zip(&acc[r * hd..(r + 1) * hd]) {
                    *d = a * inv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qwenrt_kernels::attention::CacheFormat;

    /// The tiled path (online softmax over key tiles) equals the row-by-row softmax, across
    /// tile edges, with a cache before the new tokens and a partial last tile, for both cache
    /// formats.
    #[test]
    fn tiled_attention_equals_row_by_row() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for (past, t) in [(0, 70), (300, 37), (5, 300)] {
            let (kv_heads, group, hd) = (2, 3, 32);
            let (q_width, kv_width) = (kv_heads * group * hd, kv_heads * hd);
            let q: Vec<f32> = (0..t * q_width).map(|_| 3.0 * rand()).collect();
            let keys: Vec<f32> = (0..(past + t) * kv_width).map(|_| rand()).collect();
            let values: Vec<f32> = (0..(past + t) * kv_width).map(|_| rand()).collect();
            let formats = [
                CacheFormat::Float(k::FloatFormat::F32),
                CacheFormat::Float(k::FloatFormat::F16),
                CacheFormat::Q8,
            ];
            for (kvh, format) in (0..kv_heads).flat_map(|h| formats.map(|f| (h, f))) {
                let (mut cached_keys, mut cached_values) =
                    (KvRows::new(format, kv_heads, hd), KvRows::new(format, kv_heads, hd));
                cached_keys.extend(&keys);
                cached_values.extend(&values);
                let (keys, values) = (&cached_keys, &cached_values);
                let layout = HeadLayout { kvh, group, hd, q_width, past, t, scale: (hd as f32).powf(-0.5) };
                let (mut rows, mut tiled) = (HeadScratch::default(), HeadScratch::default());
                attend_rows(&layout, &q, keys, values, &mut rows);
                attend_tiled(&layout, &q, keys, values, &mut tiled);
                let worst = rows.out.iter().zip(&tiled.out).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst < 1e-5, "{format:?}, past {past}, t {t}, head {kvh}: {worst}");
            }
        }
    }
}
