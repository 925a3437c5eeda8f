//! AVX2 + FMA twins of the scalar element-wise kernels (norms, activations, softmax, DeltaNet's
//! causal convolution and recurrence, rotary embedding) and the vector `exp` they share.
//!
//! The scalar twins call libm's `expf` once per element, which the compiler cannot vectorise and
//! which made the activations a visible part of prompt processing; [`exp8`] computes eight lanes
//! with a handful of multiply-adds and no branch for ordinary arguments.
//!
//! Lengths need not be multiples of 8: the last partial vector is read and written through a lane
//! mask rather than by a scalar loop, so every element goes through the same arithmetic wherever
//! it sits in the slice, and results do not depend on how a caller splits its work.
//!
//! # Safety
//!
//! Every function requires AVX2 and FMA (found by [`crate::Isa::detect`]) and the slice lengths
//! its documentation states; the dispatching functions at the crate root check those lengths.

use std::arch::x86_64::*;

use super::{dot, hsum};

/// `1.5 · 2^23`: adding it rounds a float of magnitude below 2^22 to an integer, which then sits
/// in the low mantissa bits (and subtracting it gives that integer back as a float).
const SHIFT: f32 = f32::from_bits(0x4b40_0000);
/// `ln 2` split so that `n · LN2_HI` is exact for the `n` that matter and `LN2_HI + LN2_LO`
/// carries `ln 2` to well beyond f32 precision (Cody–Waite reduction).
const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
/// Minimax polynomial `p(r) ≈ e^r − 1` on `|r| <= ln2 / 2` (`r·C4 + r²·(C3 + r·C2 + r²·(C1 +
/// r·C0))`); these are the coefficients of Arm's optimized-routines vector `expf`, whose total
/// error stays below 2 ulp.
const C0: f32 = f32::from_bits(0x3c07_2010);
const C1: f32 = f32::from_bits(0x3d2b_9f17);
const C2: f32 = f32::from_bits(0x3e2a_af33);
const C3: f32 = f32::from_bits(0x3eff_fedb);
const C4: f32 = f32::from_bits(0x3f7f_fff6);

/// `e^x` per lane: `x = n·ln2 + r` with integer `n` and `|r| <= ln2/2`, then
/// `e^x = 2^n · (1 + p(r))` with `2^n` built in the exponent bits.
///
/// Results below the smallest subnormal are 0, above `f32::MAX` infinite, NaN stays NaN.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp8(x: __m256) -> __m256 {
    let z = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(SHIFT));
    let n = _mm256_sub_ps(z, _mm256_set1_ps(SHIFT));
    // The low 9 bits of z's mantissa hold n (two's complement): shifted into the exponent field
    // they give 2^n's bits for any |n| < 256, which covers every n that reaches the result.
    let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
    let scale = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_set1_epi32(0x3f80_0000)));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let r2 = _mm256_mul_ps(r, r);
    let p = _mm256_fmadd_ps(_mm256_set1_ps(C0), r, _mm256_set1_ps(C1));
    let q = _mm256_fmadd_ps(_mm256_set1_ps(C2), r, _mm256_set1_ps(C3));
    let q = _mm256_fmadd_ps(p, r2, q);
    let poly = _mm256_fmadd_ps(q, r2, _mm256_mul_ps(_mm256_set1_ps(C4), r));
    let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
    // 2^n is a normal float for |n| <= 126; NaN compares false and propagates through `poly`.
    let extreme = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
    if _mm256_movemask_ps(extreme) == 0 {
        return _mm256_fmadd_ps(poly, scale, scale);
    }
    exp8_extreme(poly, n, e, abs_n, extreme, scale)
}

/// [`exp8`] when some lane's `2^n` is not a normal float: the result overflows, is subnormal, or
/// underflows to zero.
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8_extreme(
    poly: __m256,
    n: __m256,
    e: __m256i,
    abs_n: __m256,
    extreme: __m256,
    scale: __m256,
) -> __m256 {
    // 2^n = s1 · s2 with both factors normal: s1 = 2^127 for n > 0, 2^-125 otherwise. Applying
    // s1 last leaves the rounding to a subnormal (or to inf) to one final product.
    let b = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
        _mm256_set1_epi32(0x8200_0000u32 as i32),
    );
    let s1 = _mm256_castsi256_ps(_mm256_add_epi32(b, _mm256_set1_epi32(0x7f00_0000)));
    let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, b));
    let split = _mm256_mul_ps(_mm256_fmadd_ps(poly, s2, s2), s1);
    // Beyond |n| = 192 (this includes ±inf, and |x| too large for the SHIFT rounding, where e is
    // meaningless) the result is 0 or inf: s1² is exactly that.
    let saturated = _mm256_mul_ps(s1, s1);
    let huge = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
    let normal = _mm256_fmadd_ps(poly, scale, scale);
    _mm256_blendv_ps(_mm256_blendv_ps(normal, split, extreme), saturated, huge)
}

/// `x / (1 + e^-x)`, SiLU per lane (one division instead of the scalar twin's reciprocal and
/// product: a rounding less).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu8(x: __m256) -> __m256 {
    let e = exp8(_mm256_xor_ps(x, _mm256_set1_ps(-0.0)));
    _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
}

/// Lanes `0..lanes` set, for `1 <= lanes <= 8`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn lane_mask(lanes: usize) -> __m256i {
    _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// The `lanes` (1..=8) floats at `p`; the lanes beyond read as zero without touching memory.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load(p: *const f32, lanes: usize) -> __m256 {
    if lanes == 8 {
        _mm256_loadu_ps(p)
    } else {
        _mm256_maskload_ps(p, lane_mask(lanes))
    }
}

/// Stores the first `lanes` (1..=8) lanes of `v` at `p`, leaving the memory beyond untouched.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store(p: *mut f32, lanes: usize, v: __m256) {
    if lanes == 8 {
        _mm256_storeu_ps(p, v)
    } else {
        _mm256_maskstore_ps(p, lane_mask(lanes), v)
    }
}

/// Lanes in the vector starting at element `i` of a slice of `n`.
#[inline(always)]
fn lanes_at(i: usize, n: usize) -> usize {
    (n - i).min(8)
}

/// `x[i] = e^x[i]`.
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_in_place(x: &mut [f32]) {
    let (n, p) = (x.len(), x.as_mut_ptr());
    for i in (0..n).step_by(8) {
        let m = lanes_at(i, n);
        store(p.add(i), m, exp8(load(p.add(i), m)));
    }
}

/// `x[i] = silu(x[i])`.
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_in_place(x: &mut [f32]) {
    let (n, p) = (x.len(), x.as_mut_ptr());
    for i in (0..n).step_by(8) {
        let m = lanes_at(i, n);
        store(p.add(i), m, silu8(load(p.add(i), m)));
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`.
///
/// # Safety
/// AVX2 and FMA must be available and `gate.len() == up.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let (n, pg, pu) = (gate.len(), gate.as_mut_ptr(), up.as_ptr());
    for i in (0..n).step_by(8) {
        let m = lanes_at(i, n);
        store(pg.add(i), m, _mm256_mul_ps(silu8(load(pg.add(i), m)), load(pu.add(i), m)));
    }
}

/// `x[i] *= a`.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn scale(x: &mut [f32], a: f32) {
    let (n, p) = (x.len(), x.as_mut_ptr());
    let av = _mm256_set1_ps(a);
    for i in (0..n).step_by(8) {
        let m = lanes_at(i, n);
        store(p.add(i), m, _mm256_mul_ps(load(p.add(i), m), av));
    }
}

/// `acc[i] += x[i]`.
///
/// # Safety
/// AVX2 must be available and `acc.len() == x.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn add_assign(acc: &mut [f32], x: &[f32]) {
    let (n, pa, px) = (acc.len(), acc.as_mut_ptr(), x.as_ptr());
    for i in (0..n).step_by(8) {
        let m = lanes_at(i, n);
        store(pa.add(i), m, _mm256_add_ps(load(pa.add(i), m), load(px.add(i), m)));
    }
}

/// `out = x / sqrt(mean(x^2) + eps) * w`.
///
/// # Safety
/// AVX2 and FMA must be available and `x`, `w`, `out` equally long.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    let inv = _mm256_set1_ps(1.0 / (dot(x, x) / n as f32 + eps).sqrt());
    let (px, pw, po) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
    for i in (0..n).step_by(8) {
        let m = lanes_at(i, n);
        store(po.add(i), m, _mm256_mul_ps(_mm256_mul_ps(load(px.add(i), m), inv), load(pw.add(i), m)));
    }
}

/// `x = w * (x / rms(x)) * silu(gate)` in place.
///
/// # Safety
/// AVX2 and FMA must be available and `x`, `gate`, `w` equally long.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn rms_norm_gated(x: &mut [f32], gate: &[f32], w: &[f32], eps: f32) {
    let n = x.len();
    let inv = _mm256_set1_ps(1.0 / (dot(x, x) / n as f32 + eps).sqrt());
    let (px, pg, pw) = (x.as_mut_ptr(), gate.as_ptr(), w.as_ptr());
    for i in (0..n).step_by(8) {
        let m = lanes_at(i, n);
        let normed = _mm256_mul_ps(load(pw.add(i), m), _mm256_mul_ps(load(px.add(i), m), inv));
        store(px.add(i), m, _mm256_mul_ps(normed, silu8(load(pg.add(i), m))));
    }
}

/// `x *= 1 / sqrt(sum(x^2) + eps)` in place.
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn l2_normalize(x: &mut [f32], eps: f32) {
    let inv = 1.0 / (dot(x, x) + eps).sqrt();
    scale(x, inv);
}

/// Numerically stable softmax in place.
///
/// # Safety
/// AVX2 and FMA must be available.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax(x: &mut [f32]) {
    let (n, p) = (x.len(), x.as_mut_ptr());
    let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut max = neg_inf;
    for i in (0..n).step_by(8) {
        let m = lanes_at(i, n);
        // Absent lanes must not raise the maximum, as the zeros `load` gives them would.
        let v = _mm256_blendv_ps(neg_inf, load(p.add(i), m), _mm256_castsi256_ps(lane_mask(m)));
        max = _mm256_max_ps(max, v);
    }
    let max = {
        let h = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps::<1>(max));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps::<0x55>(h, h)))
    };
    let maxv = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    for i in (0..n).step_by(8) {
        let m = lanes_at(i, n);
        let e = exp8(_mm256_sub_ps(load(p.add(i), m), maxv));
        // Absent lanes hold e^(0 - max), which must not enter the sum.
        sum = _mm256_add_ps(sum, _mm256_and_ps(e, _mm256_castsi256_ps(lane_mask(m))));
        store(p.add(i), m, e);
    }
    scale(x, 1.0 / hsum(sum));
}

/// Depthwise causal convolution + SiLU of `u: [t, channels]` with taps `weight_t: [kernel,
/// channels]`, continuing from and updating the `kernel - 1` inputs in `state` as
/// [`crate::scalar::causal_conv`] does.
///
/// # Safety
/// AVX2 and FMA must be available, `kernel >= 1`, and the slices must have the shapes above
/// (`state: [kernel - 1, channels]`, `out: [t, channels]`).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn causal_conv(
    u: &[f32],
    t: usize,
    channels: usize,
    weight_t: &[f32],
    kernel: usize,
    state: &mut [f32],
    out: &mut [f32],
) {
    let hist = kernel - 1;
    let (pu, pw, ps, po) = (u.as_ptr(), weight_t.as_ptr(), state.as_ptr(), out.as_mut_ptr());
    for ti in 0..t {
        for c in (0..channels).step_by(8) {
            let m = lanes_at(c, channels);
            let mut acc = _mm256_setzero_ps();
            for j in 0..kernel {
                // Tap j reads row ti + j of [state ++ u].
                let row = ti + j;
                let input = if row < hist { ps.add(row * channels) } else { pu.add((row - hist) * channels) };
                acc = _mm256_fmadd_ps(load(pw.add(j * channels + c), m), load(input.add(c), m), acc);
            }
            store(po.add(ti * channels + c), m, silu8(acc));
        }
    }
    crate::scalar::shift_conv_state(u, t, channels, hist, state);
}

/// One token of the gated delta rule for one head (see [`crate::scalar::delta_rule_step`]).
///
/// Column `j` of the state meets only `v[j]`, `out[j]` and column `j` of itself, so the state is
/// swept in blocks of up to 32 columns: the first pass over a block's rows accumulates `k · S`
/// in registers, the second updates the rows and accumulates `q · S`. A block (16 KiB at
/// dk = 128) is read from memory once and is still cached for its second pass, and no scratch
/// vector of `dv` values goes through memory between the passes.
///
/// # Safety
/// AVX2 and FMA must be available; `q` and `k` hold `dk` values, `v` and `out` `dv`, and `state`
/// `dk * dv`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn delta_rule_step(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: f32,
    beta: f32,
    state: &mut [f32],
    out: &mut [f32],
) {
    let rule = DeltaRule {
        q: q.as_ptr(),
        k: k.as_ptr(),
        v: v.as_ptr(),
        decay: g.exp(),
        beta,
        state: state.as_mut_ptr(),
        out: out.as_mut_ptr(),
        dk: k.len(),
        dv: v.len(),
    };
    let mut j = 0;
    while j + 32 <= rule.dv {
        rule.columns::<4>(j, 8);
        j += 32;
    }
    while j < rule.dv {
        rule.columns::<1>(j, lanes_at(j, rule.dv));
        j += 8;
    }
}

/// The operands of [`delta_rule_step`].
struct DeltaRule {
    q: *const f32,
    k: *const f32,
    v: *const f32,
    decay: f32,
    beta: f32,
    state: *mut f32,
    out: *mut f32,
    dk: usize,
    dv: usize,
}

impl DeltaRule {
    /// Columns `j0 .. j0 + 8·(V-1) + last_lanes`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn columns<const V: usize>(&self, j0: usize, last_lanes: usize) {
        let lanes = |c: usize| if c + 1 == V { last_lanes } else { 8 };
        let decay = _mm256_set1_ps(self.decay);
        // Σ_i k_i · (decay · S_i) = decay · Σ_i k_i · S_i: one product per column, not per element.
        let mut kv = [_mm256_setzero_ps(); V];
        for i in 0..self.dk {
            let ki = _mm256_set1_ps(*self.k.add(i));
            let row = self.state.add(i * self.dv + j0);
            for (c, kv) in kv.iter_mut().enumerate() {
                *kv = _mm256_fmadd_ps(ki, load(row.add(8 * c), lanes(c)), *kv);
            }
        }
        let mut delta = [_mm256_setzero_ps(); V];
        for (c, d) in delta.iter_mut().enumerate() {
            let v = load(self.v.add(j0 + 8 * c), lanes(c));
            *d = _mm256_mul_ps(_mm256_fnmadd_ps(decay, kv[c], v), _mm256_set1_ps(self.beta));
        }
        let mut o = [_mm256_setzero_ps(); V];
        for i in 0..self.dk {
            let (ki, qi) = (_mm256_set1_ps(*self.k.add(i)), _mm256_set1_ps(*self.q.add(i)));
            let row = self.state.add(i * self.dv + j0);
            for c in 0..V {
                let s = _mm256_mul_ps(decay, load(row.add(8 * c), lanes(c)));
                let s = _mm256_fmadd_ps(ki, delta[c], s);
                store(row.add(8 * c), lanes(c), s);
                o[c] = _mm256_fmadd_ps(qi, s, o[c]);
            }
        }
        for (c, o) in o.iter().enumerate() {
            store(self.out.add(j0 + 8 * c), lanes(c), *o);
        }
    }
}

/// Rotary embedding in the NeoX `rotate_half` form on the first `2 * cos.len()` values of `head`,
/// bit-identical to the scalar twin (separate products, no fused multiply-add).
///
/// # Safety
/// AVX2 must be available, `sin.len() == cos.len()` and `head.len() >= 2 * cos.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn rope_rotate_half(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let (lo, hi) = (head.as_mut_ptr(), head.as_mut_ptr().add(half));
    let (pc, ps) = (cos.as_ptr(), sin.as_ptr());
    for i in (0..half).step_by(8) {
        let m = lanes_at(i, half);
        let (a, b) = (load(lo.add(i), m), load(hi.add(i), m));
        let (c, s) = (load(pc.add(i), m), load(ps.add(i), m));
        store(lo.add(i), m, _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
        store(hi.add(i), m, _mm256_add_ps(_mm256_mul_ps(b, c), _mm256_mul_ps(a, s)));
    }
}
