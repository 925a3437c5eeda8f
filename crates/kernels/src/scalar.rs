//! Scalar reference kernels. Straightforward loops, written so the compiler can vectorise the
//! inner products; they define the numerics every other implementation is checked against.

use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};

/// Sum of `a[i] * b[i]`, accumulated in eight lanes so the loop vectorises and so the rounding
/// does not depend on one long serial chain.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * 8..a.len() {
        tail += a[i] * b[i];
    }
    let pairs = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

/// `out[t, n] = sum_k x[t, k] * w[n, k]` — PyTorch's `x @ w.T` for `x: [t, k]`, `w: [n, k]`.
pub fn matmul_f32(x: &[f32], w: &[f32], out: &mut [f32], t: usize, k: usize, n: usize) {
    assert_eq!(x.len(), t * k, "matmul: x is not [t, k]");
    assert_eq!(w.len(), n * k, "matmul: w is not [n, k]");
    assert_eq!(out.len(), t * n, "matmul: out is not [t, n]");
    // Rows of w are visited once per block of activations so that a block of weight rows stays
    // in cache while it meets every activation row.
    const ROW_BLOCK: usize = 64;
    for n0 in (0..n).step_by(ROW_BLOCK) {
        let n1 = (n0 + ROW_BLOCK).min(n);
        for ti in 0..t {
            let xr = &x[ti * k..(ti + 1) * k];
            let or = &mut out[ti * n..(ti + 1) * n];
            for ni in n0..n1 {
                or[ni] = dot(xr, &w[ni * k..(ni + 1) * k]);
            }
        }
    }
}

/// `y = x / sqrt(mean(x^2) + eps) * w`. Zero-centred norms pass `w = 1 + weight`, folded at load.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == w.len() && x.len() == out.len(), "rms_norm: length mismatch");
    let inv = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * inv * wi;
    }
}

/// Gated RMSNorm of the DeltaNet output: `w * (x / rms(x)) * silu(gate)`, in place on `x`.
pub fn rms_norm_gated(x: &mut [f32], gate: &[f32], w: &[f32], eps: f32) {
    assert!(x.len() == w.len() && x.len() == gate.len(), "rms_norm_gated: length mismatch");
    let inv = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
    for ((xi, &wi), &gi) in x.iter_mut().zip(w).zip(gate) {
        *xi = wi * (*xi * inv) * silu(gi);
    }
}

/// `x * rsqrt(sum(x^2) + eps)` in place, the FLA-style L2 normalisation DeltaNet applies to q and k.
pub fn l2_normalize(x: &mut [f32], eps: f32) {
    let inv = 1.0 / (dot(x, x) + eps).sqrt();
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// PyTorch's `softplus` with its default `beta = 1, threshold = 20`: linear above the threshold.
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`, the SwiGLU activation.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: length mismatch");
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `acc[i] += a * x[i]`.
pub fn axpy(acc: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "axpy: length mismatch");
    for (o, &v) in acc.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// `acc[i] += x[i]`.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_assign: length mismatch");
    for (a, &b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// `x[i] = e^x[i]` with libm's `expf`, the reference for the vector exponentials.
pub fn exp_in_place(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = v.exp();
    }
}

/// `x[i] = silu(x[i])`.
pub fn silu_in_place(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = silu(*v);
    }
}

/// `x[i] *= a`.
pub fn scale(x: &mut [f32], a: f32) {
    for v in x.iter_mut() {
        *v *= a;
    }
}

/// Depthwise causal convolution with SiLU, DeltaNet's `F.silu(conv1d(...))` over
/// `[state ++ u]`:
///
/// `out[ti, ch] = silu(Σ_j weight_t[j, ch] · input(ti - (kernel - 1) + j, ch))`
///
/// for `u: [t, channels]` and taps `weight_t: [kernel, channels]` (the checkpoint's
/// `[channels, 1, kernel]` weight transposed), where inputs before `u` come from
/// `state: [kernel - 1, channels]` (oldest first). Leaves the last `kernel - 1` rows of
/// `[state ++ u]` in `state`, so a sequence may be fed in pieces of any length.
pub fn causal_conv(
    u: &[f32],
    t: usize,
    channels: usize,
    weight_t: &[f32],
    kernel: usize,
    state: &mut [f32],
    out: &mut [f32],
) {
    check_causal_conv(u, t, channels, weight_t, kernel, state, out);
    let hist = kernel - 1;
    for ti in 0..t {
        for ch in 0..channels {
            let mut acc = 0.0f32;
            for j in 0..kernel {
                // Tap j reads row ti + j of [state ++ u].
                let row = ti + j;
                let x = if row < hist { state[row * channels + ch] } else { u[(row - hist) * channels + ch] };
                acc += weight_t[j * channels + ch] * x;
            }
            out[ti * channels + ch] = silu(acc);
        }
    }
    shift_conv_state(u, t, channels, hist, state);
}

/// The shape checks of [`causal_conv`], shared with its twins.
pub(crate) fn check_causal_conv(
    u: &[f32],
    t: usize,
    channels: usize,
    weight_t: &[f32],
    kernel: usize,
    state: &[f32],
    out: &[f32],
) {
    assert!(kernel >= 1, "causal_conv: kernel must be at least 1");
    assert_eq!(u.len(), t * channels, "causal_conv: u is not [t, channels]");
    assert_eq!(out.len(), t * channels, "causal_conv: out is not [t, channels]");
    assert_eq!(weight_t.len(), kernel * channels, "causal_conv: weight_t is not [kernel, channels]");
    assert_eq!(state.len(), (kernel - 1) * channels, "causal_conv: state is not [kernel - 1, channels]");
}

/// Replaces `state` (`[hist, channels]`) by the last `hist` rows of `[state ++ u]`.
pub(crate) fn shift_conv_state(u: &[f32], t: usize, channels: usize, hist: usize, state: &mut [f32]) {
    if t >= hist {
        state.copy_from_slice(&u[(t - hist) * channels..t * channels]);
    } else {
        state.copy_within(t * channels.., 0);
        state[(hist - t) * channels..].copy_from_slice(&u[..t * channels]);
    }
}

/// One token of the gated delta rule for one head (`torch_recurrent_gated_delta_rule`), on the
/// state `S: [dk, dv]` (row `i` belongs to key dimension `i`):
///
/// ```text
/// S *= e^g;  delta = (v - Σ_i k_i S_i) · beta;  S_i += k_i · delta;  out = Σ_i q_i S_i
/// ```
///
/// `q` (`dk`) comes l2-normalised and scaled, `k` (`dk`) l2-normalised; `out` (`dv`) is
/// overwritten.
pub fn delta_rule_step(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: f32,
    beta: f32,
    state: &mut [f32],
    out: &mut [f32],
) {
    check_delta_rule(q, k, v, state, out);
    let (dk, dv) = (k.len(), v.len());
    let decay = g.exp();
    for s in state.iter_mut() {
        *s *= decay;
    }
    // `out` holds delta until the state has taken it in, so the reference needs no scratch.
    let delta = out;
    delta.copy_from_slice(v);
    for i in 0..dk {
        for j in 0..dv {
            delta[j] -= k[i] * state[i * dv + j];
        }
    }
    for d in delta.iter_mut() {
        *d *= beta;
    }
    for i in 0..dk {
        for j in 0..dv {
            state[i * dv + j] += k[i] * delta[j];
        }
    }
    let out = delta;
    out.fill(0.0);
    for i in 0..dk {
        for j in 0..dv {
            out[j] += q[i] * state[i * dv + j];
        }
    }
}

/// The shape checks of [`delta_rule_step`], shared with its twins.
pub(crate) fn check_delta_rule(q: &[f32], k: &[f32], v: &[f32], state: &[f32], out: &[f32]) {
    assert_eq!(q.len(), k.len(), "delta_rule_step: q and k differ in length");
    assert_eq!(out.len(), v.len(), "delta_rule_step: out and v differ in length");
    assert_eq!(state.len(), k.len() * v.len(), "delta_rule_step: state is not [dk, dv]");
}

/// Rotary embedding in the NeoX `rotate_half` form, `x·cos + rotate_half(x)·sin`, on the first
/// `2 * cos.len()` values of `head` (later values untouched): with `x1`, `x2` the two halves of
/// that part, `x1 ← x1·cos − x2·sin` and `x2 ← x2·cos + x1·sin`.
pub fn rope_rotate_half(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    check_rope(head, cos, sin);
    let half = cos.len();
    let (lo, hi) = head[..2 * half].split_at_mut(half);
    for i in 0..half {
        let (a, b) = (lo[i], hi[i]);
        lo[i] = a * cos[i] - b * sin[i];
        hi[i] = b * cos[i] + a * sin[i];
    }
}

/// The shape checks of [`rope_rotate_half`], shared with its twins.
pub(crate) fn check_rope(head: &[f32], cos: &[f32], sin: &[f32]) {
    assert_eq!(cos.len(), sin.len(), "rope_rotate_half: cos and sin differ in length");
    assert!(head.len() >= 2 * cos.len(), "rope_rotate_half: head shorter than the rotated part");
}

/// How a float weight matrix is stored, for [`matmul_float`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatFormat {
    F32,
    Bf16,
    F16,
}

impl FloatFormat {
    pub fn bytes(self) -> usize {
        match self {
            FloatFormat::F32 => 4,
            FloatFormat::Bf16 | FloatFormat::F16 => 2,
        }
    }

    /// Element `i` of little-endian storage `w`.
    #[inline]
    pub fn get(self, w: &[u8], i: usize) -> f32 {
        match self {
            FloatFormat::F32 => f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]),
            FloatFormat::Bf16 => half::bf16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32(),
            FloatFormat::F16 => half::f16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32(),
        }
    }
}

/// Rows `rows` of `out[t, n] = x[t, k] @ w.T` for float weights stored as bytes.
pub fn matmul_float(
    x: &[f32],
    w: &[u8],
    format: FloatFormat,
    out: &mut [f32],
    (t, k, n): (usize, usize, usize),
    rows: std::ops::Range<usize>,
) {
    for ti in 0..t {
        let xr = &x[ti * k..(ti + 1) * k];
        for r in rows.clone() {
            let mut acc = 0.0f32;
            for (i, &xi) in xr.iter().enumerate() {
                acc += format.get(w, r * k + i) * xi;
            }
            out[ti * n + r] = acc;
        }
    }
}

/// Integer dot product of one weight block with one activation block.
fn block_dot(w: &[i8; QK], x: &[i8; QK]) -> i32 {
    w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum()
}

fn q4_values(b: &BlockQ4) -> [i8; QK] {
    let mut v = [0i8; QK];
    for j in 0..QK / 2 {
        v[j] = (b.qs[j] & 0x0f) as i8 - 8;
        v[j + QK / 2] = (b.qs[j] >> 4) as i8 - 8;
    }
    v
}

/// Rows `rows` of `out[t, n] = x[t, k] @ w.T` for block-quantized weights and quantized
/// activations (`x`: `t` rows of `k / 32` blocks): per block, the integer dot product scaled by
/// both scales. `values` gives a weight block's scale and signed levels.
fn matmul_blocks<B>(
    x: &[BlockQ8Act],
    w: &[B],
    values: impl Fn(&B) -> (f32, [i8; QK]),
    out: &mut [f32],
    (t, k, n): (usize, usize, usize),
    rows: std::ops::Range<usize>,
) {
    let nb = k / QK;
    for ti in 0..t {
        for r in rows.clone() {
            let mut acc = 0.0f32;
            for (wb, xb) in w[r * nb..(r + 1) * nb].iter().zip(&x[ti * nb..(ti + 1) * nb]) {
                let (d, levels) = values(wb);
                acc += d * xb.d * block_dot(&levels, &xb.qs) as f32;
            }
            out[ti * n + r] = acc;
        }
    }
}

/// [`matmul_blocks`] for Q8 weights.
pub fn matmul_q8(
    x: &[BlockQ8Act],
    w: &[BlockQ8],
    out: &mut [f32],
    dims: (usize, usize, usize),
    rows: std::ops::Range<usize>,
) {
    matmul_blocks(x, w, |b| (b.d.to_f32(), b.qs), out, dims, rows)
}

/// [`matmul_blocks`] for Q4 weights.
pub fn matmul_q4(
    x: &[BlockQ8Act],
    w: &[BlockQ4],
    out: &mut [f32],
    dims: (usize, usize, usize),
    rows: std::ops::Range<usize>,
) {
    matmul_blocks(x, w, |b| (b.d.to_f32(), q4_values(b)), out, dims, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn dot_matches_f64_reference_on_odd_lengths() {
        for n in [0, 1, 7, 8, 9, 31, 100, 1027] {
            let a = pseudo_random(n, 1 + n as u32);
            let b = pseudo_random(n, 100 + n as u32);
            let got = dot(&a, &b) as f64;
            let want = naive_dot(&a, &b);
            assert!((got - want).abs() <= 1e-5 * (1.0 + n as f64).sqrt(), "n={n}: {got} vs {want}");
        }
    }

    #[test]
    fn matmul_matches_row_dots() {
        let (t, k, n) = (3, 13, 70);
        let x = pseudo_random(t * k, 1);
        let w = pseudo_random(n * k, 2);
        let mut out = vec![0.0; t * n];
        matmul_f32(&x, &w, &mut out, t, k, n);
        for ti in 0..t {
            for ni in 0..n {
                let want = naive_dot(&x[ti * k..(ti + 1) * k], &w[ni * k..(ni + 1) * k]);
                assert!((out[ti * n + ni] as f64 - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut x = vec![1.0, 3.0, -2.0, 3.5];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] > x[1] && x[1] > x[0] && x[0] > x[2]);
    }

    #[test]
    fn softplus_follows_torch_threshold() {
        assert_eq!(softplus(25.0), 25.0);
        assert!((softplus(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
        assert!((softplus(-30.0) - (-30.0f32).exp()).abs() < 1e-20);
    }

    #[test]
    fn rms_norm_normalises() {
        let x = [3.0, 4.0];
        let mut out = [0.0; 2];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut out);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 8.0 / rms).abs() < 1e-6);
    }
}
