//! Gated DeltaNet, the linear-attention token mixer (`Qwen3_5GatedDeltaNet`).
//!
//! Per value head the layer keeps a `dk × dv` state `S` that every token decays and corrects
//! with the delta rule:
//!
//! ```text
//! S_t = exp(g_t) · (I − β_t k_t k_tᵀ) · S_{t−1} + β_t k_t v_tᵀ        o_t = S_tᵀ q_t
//! ```
//!
//! Two code paths compute it and must agree: [`delta_rule_chunked`] for prompts (chunks of 64
//! tokens turned into small matrix products, as `torch_chunk_gated_delta_rule` does) and
//! [`delta_rule_step`] for decoding one token (`torch_recurrent_gated_delta_rule`).

use qwenrt_kernels as k;

use super::{grow, LayerWeights};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::linear::{load_vector, Linear};

/// Tokens per chunk of the parallel form, as in transformers (it pads to a multiple of 64).
pub const CHUNK: usize = 64;

/// The `eps` of the FLA-style l2norm applied to q and k.
const L2_EPS: f32 = 1e-6;

#[derive(Clone, Copy, Debug)]
struct Dims {
    hidden: usize,
    /// Key heads `Hk` and value heads `Hv` (`Hv` is a multiple of `Hk`).
    hk: usize,
    hv: usize,
    dk: usize,
    dv: usize,
    /// Convolution kernel width `K`.
    kernel: usize,
}

impl Dims {
    fn key_dim(&self) -> usize {
        self.hk * self.dk
    }
    fn value_dim(&self) -> usize {
        self.hv * self.dv
    }
    fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
}

pub struct GatedDeltaNet {
    in_proj_qkv: Linear,
    in_proj_z: Linear,
    in_proj_b: Linear,
    in_proj_a: Linear,
    /// Depthwise causal conv taps, `[K, conv_dim]` (`conv1d.weight` transposed at load).
    conv_weight: Vec<f32>,
    dt_bias: Vec<f32>,
    /// `-exp(A_log)`, folded at load.
    neg_a: Vec<f32>,
    /// Gated RMSNorm weight over `dv`, applied as plain `w`.
    norm: Vec<f32>,
    out_proj: Linear,
    eps: f32,
    d: Dims,
}

/// Makes `v` a copy of `from`, reusing its memory.
fn refill(v: &mut Vec<f32>, from: &[f32]) {
    v.clear();
    v.extend_from_slice(from);
}

/// What a verification pass (speculative decoding) keeps of one DeltaNet layer to return to any
/// prefix of its rows: the caches from before the pass and each row's recurrence inputs.
#[derive(Clone, Debug, Default)]
pub(crate) struct LayerRollback {
    conv: Vec<f32>,
    ssm: Vec<f32>,
    /// Pre-convolution inputs, `[t, conv_dim]`.
    raw: Vec<f32>,
    /// Convolved and normed q, k, v, `[t, conv_dim]`.
    qkv: Vec<f32>,
    /// `[t, Hv]` each.
    g: Vec<f32>,
    beta: Vec<f32>,
}

/// Buffers reused across calls; sized on first use, so decoding allocates nothing.
#[derive(Default)]
pub struct DeltaNetScratch {
    qkv: Vec<f32>,
    z: Vec<f32>,
    b: Vec<f32>,
    a: Vec<f32>,
    conv_out: Vec<f32>,
    core: Vec<f32>,
    /// One per value head, so heads run in parallel.
    heads: Vec<HeadScratch>,
}

/// One value head's inputs gathered contiguously: q, k `[T, dk]`, v and out `[T, dv]`, g and β `[T]`.
#[derive(Default)]
struct HeadScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    out: Vec<f32>,
    chunk: ChunkScratch,
}

impl GatedDeltaNet {
    pub(crate) fn load(w: &LayerWeights, config: &ModelConfig) -> Result<Self> {
        let t = &config.text;
        let d = Dims {
            hidden: t.hidden_size,
            hk: t.linear_num_key_heads,
            hv: t.linear_num_value_heads,
            dk: t.linear_key_head_dim,
            dv: t.linear_value_head_dim,
            kernel: t.linear_conv_kernel_dim,
        };
        let p = |name: &str| format!("{}linear_attn.{name}", w.prefix);
        // Stored [channels, 1, K]; the kernel wants the taps of all channels side by side.
        let conv = w.store.get(&p("conv1d.weight"), &[d.conv_dim(), 1, d.kernel])?.to_finite_f32()?;
        let mut conv_weight = vec![0.0; conv.len()];
        k::transpose(&conv, d.conv_dim(), d.kernel, &mut conv_weight);
        let a_log = load_vector(w.store, &p("A_log"), d.hv)?;
        Ok(GatedDeltaNet {
            in_proj_qkv: w.linear(&p("in_proj_qkv.weight"), d.conv_dim(), d.hidden)?,
            in_proj_z: w.linear(&p("in_proj_z.weight"), d.value_dim(), d.hidden)?,
            in_proj_b: w.linear(&p("in_proj_b.weight"), d.hv, d.hidden)?,
            in_proj_a: w.linear(&p("in_proj_a.weight"), d.hv, d.hidden)?,
            conv_weight,
            dt_bias: load_vector(w.store, &p("dt_bias"), d.hv)?,
            // g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
            neg_a: a_log.iter().map(|&x| -x.exp()).collect(),
            norm: load_vector(w.store, &p("norm.weight"), d.dv)?,
            out_proj: w.linear(&p("out_proj.weight"), d.hidden, d.value_dim())?,
            eps: t.rms_norm_eps as f32,
            d,
        })
    }

    pub fn weight_bytes(&self) -> usize {
        [&self.in_proj_qkv, &self.in_proj_z, &self.in_proj_b, &self.in_proj_a, &self.out_proj]
            .iter()
            .map(|l| l.bytes())
            .sum::<usize>()
            + 4 * (self.conv_weight.len() + self.dt_bias.len() + self.neg_a.len() + self.norm.len())
    }

    /// The input projections of `t` rows, which may belong to several sequences.
    pub fn project(&self, x: &[f32], t: usize, s: &mut DeltaNetScratch) {
        let d = self.d;
        // mixed_qkv = self.in_proj_qkv(hidden_states); z = self.in_proj_z(...); b, a likewise
        self.in_proj_qkv.forward(x, t, grow(&mut s.qkv, t * d.conv_dim()));
        self.in_proj_z.forward(x, t, grow(&mut s.z, t * d.value_dim()));
        self.in_proj_b.forward(x, t, grow(&mut s.b, t * d.hv));
        self.in_proj_a.forward(x, t, grow(&mut s.a, t * d.hv));
        grow(&mut s.conv_out, t * d.conv_dim());
        grow(&mut s.core, t * d.value_dim());
    }

    /// Convolution, gates and the delta rule for the projected `rows` of one sequence, whose
    /// states these are; leaves the core output of those rows in the scratch.
    pub(crate) fn mix_sequence(
        &self,
        rows: std::ops::Range<usize>,
        conv_state: &mut [f32],
        ssm_state: &mut [f32],
        s: &mut DeltaNetScratch,
        mut record: Option<&mut LayerRollback>,
    ) {
        let d = self.d;
        let (key_dim, value_dim, conv_dim) = (d.key_dim(), d.value_dim(), d.conv_dim());
        let t = rows.len();
        let qkv = &s.qkv[rows.start * conv_dim..rows.end * conv_dim];
        let b = &mut s.b[rows.start * d.hv..rows.end * d.hv];
        let a = &mut s.a[rows.start * d.hv..rows.end * d.hv];
        if let Some(r) = record.as_deref_mut() {
            refill(&mut r.conv, conv_state);
            refill(&mut r.ssm, ssm_state);
            refill(&mut r.raw, qkv);
        }

        // mixed_qkv = F.silu(conv1d(mixed_qkv)) over [conv_state ++ mixed_qkv]
        let conv_out = &mut s.conv_out[rows.start * conv_dim..rows.end * conv_dim];
        self.causal_conv(qkv, t, conv_state, conv_out);

        // query, key = l2norm(q), l2norm(k); query *= dk^-0.5   (in the delta-rule kernels)
        let scale = (d.dk as f32).powf(-0.5);
        for row in conv_out.chunks_exact_mut(conv_dim) {
            for (i, head) in row[..2 * key_dim].chunks_exact_mut(d.dk).enumerate() {
                k::l2_normalize(head, L2_EPS);
                if i < d.hk {
                    head.iter_mut().for_each(|v| *v *= scale);
                }
            }
        }

        // beta = b.sigmoid(); g = -exp(A_log) * softplus(a + dt_bias)   (both [t, Hv], in place)
        for bi in b.iter_mut() {
            *bi = k::sigmoid(*bi);
        }
        for row in a.chunks_exact_mut(d.hv) {
            for (h, ai) in row.iter_mut().enumerate() {
                *ai = self.neg_a[h] * k::softplus(*ai + self.dt_bias[h]);
            }
        }
        let (beta, g) = (&*b, &*a);
        // A verification pass goes token by token, as decode does: each row's output is then the
        // one plain decoding would give, and any prefix of the rows can be replayed exactly.
        let recurrent = record.is_some();
        if let Some(r) = record {
            refill(&mut r.qkv, conv_out);
            refill(&mut r.g, g);
            refill(&mut r.beta, beta);
        }

        let group = d.hv / d.hk;
        let state_len = d.dk * d.dv;
        if s.heads.len() < d.hv {
            s.heads.resize_with(d.hv, HeadScratch::default);
        }
        let conv_out = &*conv_out;
        // Value heads are independent: each runs on its own state and scratch.
        k::pool::for_each_mut_with_chunks(&mut s.heads[..d.hv], ssm_state, state_len, |h, hs, state| {
            let kh = h / group; // repeat_interleave: value head h reads key head h // group
            let q_off = kh * d.dk;
            let k_off = key_dim + kh * d.dk;
            let v_off = 2 * key_dim + h * d.dv;
            let o = grow(&mut hs.out, t * d.dv);
            if t == 1 || recurrent {
                // torch_recurrent_gated_delta_rule
                for (ti, (row, o)) in
                    conv_out.chunks_exact(conv_dim).zip(o.chunks_exact_mut(d.dv)).enumerate()
                {
                    k::delta_rule_step(
                        &row[q_off..q_off + d.dk],
                        &row[k_off..k_off + d.dk],
                        &row[v_off..v_off + d.dv],
                        g[ti * d.hv + h],
                        beta[ti * d.hv + h],
                        state,
                        o,
                    );
                }
                return;
            }
            let (q, kk, v) =
                (grow(&mut hs.q, t * d.dk), grow(&mut hs.k, t * d.dk), grow(&mut hs.v, t * d.dv));
            let (gh, bh) = (grow(&mut hs.g, t), grow(&mut hs.beta, t));
            for (ti, row) in conv_out.chunks_exact(conv_dim).enumerate() {
                q[ti * d.dk..(ti + 1) * d.dk].copy_from_slice(&row[q_off..q_off + d.dk]);
                kk[ti * d.dk..(ti + 1) * d.dk].copy_from_slice(&row[k_off..k_off + d.dk]);
                v[ti * d.dv..(ti + 1) * d.dv].copy_from_slice(&row[v_off..v_off + d.dv]);
                gh[ti] = g[ti * d.hv + h];
                bh[ti] = beta[ti * d.hv + h];
            }
            delta_rule_chunked(q, kk, v, gh, bh, d.dk, d.dv, state, o, &mut hs.chunk);
        });
        let core = &mut s.core[rows.start * value_dim..rows.end * value_dim];
        for (h, hs) in s.heads[..d.hv].iter().enumerate() {
            for ti in 0..t {
                core[ti * value_dim + h * d.dv..ti * value_dim + (h + 1) * d.dv]
                    .copy_from_slice(&hs.out[ti * d.dv..(ti + 1) * d.dv]);
            }
        }
    }

    /// Returns the caches to where they were after the first `kept` rows of the verification pass
    /// that filled `r`: the states from before the pass, then the recurrence over the kept rows'
    /// recorded inputs, with the kernel decode uses (no projection is recomputed).
    pub(crate) fn roll_back(
        &self,
        r: &LayerRollback,
        kept: usize,
        conv_state: &mut [f32],
        ssm_state: &mut [f32],
    ) {
        let d = self.d;
        let conv_dim = d.conv_dim();
        // The conv state is the last K - 1 pre-convolution inputs of [old state ++ kept rows].
        let history = (d.kernel - 1) * conv_dim;
        let joined: Vec<f32> = r.conv.iter().chain(&r.raw[..kept * conv_dim]).copied().collect();
        conv_state.copy_from_slice(&joined[joined.len() - history..]);
        ssm_state.copy_from_slice(&r.ssm);
        let (key_dim, group) = (d.key_dim(), d.hv / d.hk);
        let mut out = [0.0f32; MAX_HEAD_DIM];
        for (h, state) in ssm_state.chunks_exact_mut(d.dk * d.dv).enumerate() {
            let (q_off, k_off, v_off) =
                ((h / group) * d.dk, key_dim + (h / group) * d.dk, 2 * key_dim + h * d.dv);
            for (ti, row) in r.qkv.chunks_exact(conv_dim).take(kept).enumerate() {
                k::delta_rule_step(
                    &row[q_off..q_off + d.dk],
                    &row[k_off..k_off + d.dk],
                    &row[v_off..v_off + d.dv],
                    r.g[ti * d.hv + h],
                    r.beta[ti * d.hv + h],
                    state,
                    &mut out[..d.dv],
                );
            }
        }
    }

    /// The gated norm and output projection of all `t` rows.
    pub fn output(&self, t: usize, s: &mut DeltaNetScratch, out: &mut [f32]) {
        let dv = self.d.dv;
        let core = &mut s.core[..t * self.d.value_dim()];
        // core_attn_out = self.norm(core_attn_out, z): per head over dv, gated by silu(z)
        for (o, zg) in core.chunks_exact_mut(dv).zip(s.z.chunks_exact(dv)) {
            k::rms_norm_gated(o, zg, &self.norm, self.eps);
        }
        // output = self.out_proj(core_attn_out)
        self.out_proj.forward(core, t, out);
    }

    /// Depthwise causal convolution of `u: [t, C]` with SiLU, reading the `K-1` inputs before
    /// `u` from `state` (oldest first) and leaving the last `K-1` inputs there.
    fn causal_conv(&self, u: &[f32], t: usize, state: &mut [f32], out: &mut [f32]) {
        k::causal_conv(u, t, self.d.conv_dim(), &self.conv_weight, self.d.kernel, state, out);
    }
}

/// Largest head size the attention norms' stack scratch holds (checked at load); real models
/// use 128 (DeltaNet) and 256 (attention).
pub const MAX_HEAD_DIM: usize = 512;

/// Per-chunk matrices of the parallel form, reused across heads and calls.
#[derive(Default)]
pub struct ChunkScratch {
    cum_g: Vec<f32>,
    /// `e^{G_i−G_j}` for one row `i`.
    decay: Vec<f32>,
    /// Strictly lower `β_i (k_i·k_j) e^{G_i−G_j}`, `[C, C]`.
    ut: Vec<f32>,
    /// `(q_i·k_j) e^{G_i−G_j}` for `j <= i`, `[C, C]`.
    qk: Vec<f32>,
    /// Solutions of the unit-lower-triangular systems: `U [C, dv]`, `W [C, dk]`.
    u: Vec<f32>,
    w: Vec<f32>,
    v_new: Vec<f32>,
    /// Transposes and products for the matrix-product steps.
    state_t: Vec<f32>,
    v_new_t: Vec<f32>,
    k_decayed_t: Vec<f32>,
    q_decayed: Vec<f32>,
    prod: Vec<f32>,
}

/// The chunked (parallel) delta rule for one value head over `t` tokens, continuing from `state`
/// (`torch_chunk_gated_delta_rule`). Within a chunk with cumulative log-decay `G`:
///
/// ```text
/// (I + A) U = β V,   (I + A) W = β K e^G,   A_ij = β_i (k_i·k_j) e^{G_i−G_j}  (j < i)
/// V' = U − W S
/// O  = (Q e^G) S + [(Q Kᵀ) e^{G_i−G_j}]_{j<=i} V'
/// S  = e^{G_C} S + (K e^{G_C−G})ᵀ V'
/// ```
#[allow(clippy::too_many_arguments)]
pub fn delta_rule_chunked(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: &[f32],
    dk: usize,
    dv: usize,
    state: &mut [f32],
    out: &mut [f32],
    s: &mut ChunkScratch,
) {
    let t = g.len();
    for c0 in (0..t).step_by(CHUNK) {
        let c = CHUNK.min(t - c0);
        let q = &q[c0 * dk..(c0 + c) * dk];
        let k = &k[c0 * dk..(c0 + c) * dk];
        let v = &v[c0 * dv..(c0 + c) * dv];
        let beta = &beta[c0..c0 + c];
        let out = &mut out[c0 * dv..(c0 + c) * dv];

        // cum_decay = decay.cumsum(dim=3)
        let cum = grow(&mut s.cum_g, c);
        let mut acc = 0.0f32;
        for (ci, &gi) in cum.iter_mut().zip(&g[c0..c0 + c]) {
            acc += gi;
            *ci = acc;
        }
        let row = |i: usize, n: usize| i * n..(i + 1) * n;

        // ut_system (strictly lower part) and intra_chunk_attn (lower part incl. diagonal)
        // Both from the products K K^T and Q K^T, then decayed and masked row by row.
        let ut = grow(&mut s.ut, c * c);
        k::matmul_f32_local(k, k, ut, c, dk, c);
        let qk = grow(&mut s.qk, c * c);
        k::matmul_f32_local(q, k, qk, c, dk, c);
        let decay = grow(&mut s.decay, c);
        for i in 0..c {
            for (d, &cj) in decay[..=i].iter_mut().zip(cum.iter()) {
                *d = cum[i] - cj;
            }
            k::exp_in_place(&mut decay[..=i]);
            let (ut_row, qk_row) = (&mut ut[row(i, c)], &mut qk[row(i, c)]);
            for ((u, q), &d) in ut_row[..i].iter_mut().zip(&mut qk_row[..i]).zip(decay.iter()) {
                *u *= beta[i] * d;
                *q *= d;
            }
            qk_row[i] *= decay[i];
            ut_row[i..].fill(0.0);
            // The causal mask: qk multiplies v_new as a full [c, c] matrix below.
            qk_row[i + 1..].fill(0.0);
        }

        // new_values = solve(ut, v_beta); k_cumdecay = solve(ut, k_beta * exp(cum_decay))
        // by forward substitution on the unit-lower-triangular system.
        let u = grow(&mut s.u, c * dv);
        let w = grow(&mut s.w, c * dk);
        for i in 0..c {
            let scale_k = beta[i] * cum[i].exp();
            for x in 0..dv {
                u[i * dv + x] = v[i * dv + x] * beta[i];
            }
            for x in 0..dk {
                w[i * dk + x] = k[i * dk + x] * scale_k;
            }
            let (done_u, cur_u) = u.split_at_mut(i * dv);
            let (done_w, cur_w) = w.split_at_mut(i * dk);
            for j in 0..i {
                let a = ut[i * c + j];
                k::axpy(&mut cur_u[..dv], -a, &done_u[j * dv..(j + 1) * dv]);
                k::axpy(&mut cur_w[..dk], -a, &done_w[j * dk..(j + 1) * dk]);
            }
        }

        // v_new = new_values - k_cumdecay @ S           ([c, dk] @ [dk, dv], as x @ (S^T)^T)
        let state_t = grow(&mut s.state_t, dk * dv);
        k::transpose(state, dk, dv, state_t);
        let prod = grow(&mut s.prod, c * dv);
        k::matmul_f32_local(w, state_t, prod, c, dk, dv);
        let v_new = grow(&mut s.v_new, c * dv);
        for ((vn, &ui), &pi) in v_new.iter_mut().zip(u.iter()).zip(prod.iter()) {
            *vn = ui - pi;
        }

        // out = (q * exp(cum_decay)) @ S + intra_chunk_attn @ v_new
        let q_decayed = grow(&mut s.q_decayed, c * dk);
        for i in 0..c {
            let eg = cum[i].exp();
            for (qd, &qv) in q_decayed[i * dk..(i + 1) * dk].iter_mut().zip(&q[i * dk..(i + 1) * dk]) {
                *qd = qv * eg;
            }
        }
        k::matmul_f32_local(q_decayed, state_t, out, c, dk, dv);
        let v_new_t = grow(&mut s.v_new_t, dv * c);
        k::transpose(v_new, c, dv, v_new_t);
        let prod = grow(&mut s.prod, c * dv);
        k::matmul_f32_local(qk, v_new_t, prod, c, c, dv);
        k::add_assign(out, prod);

        // S = S * exp(cum_decay[-1]) + (k * exp(cum_decay[-1] - cum_decay)).T @ v_new
        let last = cum[c - 1];
        let k_decayed_t = grow(&mut s.k_decayed_t, dk * c);
        for j in 0..c {
            let kd = (last - cum[j]).exp();
            for a in 0..dk {
                k_decayed_t[a * c + j] = k[j * dk + a] * kd;
            }
        }
        let prod = grow(&mut s.prod, dk * dv);
        k::matmul_f32_local(k_decayed_t, v_new_t, prod, dk, c, dv);
        let chunk_decay = last.exp();
        for (sx, &px) in state.iter_mut().zip(prod.iter()) {
            *sx = *sx * chunk_decay + px;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn normalized_rows(n: usize, d: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
        let mut x = rand_vec(n * d, seed);
        for r in x.chunks_exact_mut(d) {
            k::l2_normalize(r, L2_EPS);
            r.iter_mut().for_each(|v| *v *= scale);
        }
        x
    }

    /// The chunked and recurrent forms compute the same outputs and final state, for lengths on
    /// both sides of the chunk boundary and from a non-zero starting state.
    #[test]
    fn chunked_equals_recurrent() {
        let (dk, dv) = (16, 24);
        for t in [1usize, 2, 63, 64, 65, 130, 300] {
            let mut seed = t as u64;
            let q = normalized_rows(t, dk, &mut seed, (dk as f32).powf(-0.5));
            let kk = normalized_rows(t, dk, &mut seed, 1.0);
            let v = rand_vec(t * dv, &mut seed);
            let g: Vec<f32> = rand_vec(t, &mut seed).iter().map(|x| -0.5 * (x + 1.0) - 0.01).collect();
            let beta: Vec<f32> = rand_vec(t, &mut seed).iter().map(|x| 0.5 + 0.5 * x).collect();
            let init = rand_vec(dk * dv, &mut seed);

            let mut s_rec = init.clone();
            let mut o_rec = vec![0.0; t * dv];
            for i in 0..t {
                k::delta_rule_step(
                    &q[i * dk..(i + 1) * dk],
                    &kk[i * dk..(i + 1) * dk],
                    &v[i * dv..(i + 1) * dv],
                    g[i],
                    beta[i],
                    &mut s_rec,
                    &mut o_rec[i * dv..(i + 1) * dv],
                );
            }
            let mut s_chunk = init.clone();
            let mut o_chunk = vec![0.0; t * dv];
            let mut ws = ChunkScratch::default();
            delta_rule_chunked(&q, &kk, &v, &g, &beta, dk, dv, &mut s_chunk, &mut o_chunk, &mut ws);

            let max_diff =
                |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            let (dout, dstate) = (max_diff(&o_rec, &o_chunk), max_diff(&s_rec, &s_chunk));
            assert!(dout < 2e-5 && dstate < 2e-5, "t={t}: out diff {dout}, state diff {dstate}");
        }
    }
}
