//! AVX2 + FMA + F16C twins of the scalar matrix kernels. Every function here is `unsafe` and
//! must only be called after [`crate::Isa::detect`] found these features.
//!
//! The row kernels here compute the dot products of one weight row with `M` activation rows at
//! once (M = 1 for decode, up to 8 for small batches), so every weight load feeds `M`
//! multiply-adds; prompts (many tokens) go to the blocked kernels of [`gemm`].

pub mod attention;
pub mod convert;
pub mod elementwise;
pub mod gemm;

use std::arch::x86_64::*;

use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Dot product of two equal-length f32 slices.
///
/// # Safety
/// AVX2 and FMA must be available and `a.len() == b.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc =
                _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
        i += 8;
    }
    let mut sum = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        sum += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    sum
}

/// `acc[i] += a * x[i]`.
///
/// # Safety
/// AVX2 and FMA must be available and `acc.len() == x.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy(acc: &mut [f32], a: f32, x: &[f32]) {
    let n = acc.len();
    let (po, px) = (acc.as_mut_ptr(), x.as_ptr());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(
            po.add(i),
            _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(po.add(i))),
        );
        i += 8;
    }
    while i < n {
        *po.add(i) += a * *px.add(i);
        i += 1;
    }
}

/// Loads 8 weights of the given storage as f32.
pub trait Lanes {
    const BYTES: usize;
    unsafe fn load8(p: *const u8) -> __m256;
    unsafe fn scalar(p: *const u8) -> f32;
}

pub struct F32;
pub struct Bf16;
pub struct F16;

impl Lanes for F32 {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p as *const f32)
    }
    #[inline(always)]
    unsafe fn scalar(p: *const u8) -> f32 {
        (p as *const f32).read_unaligned()
    }
}

impl Lanes for Bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        // bf16 is the top half of an f32: widen to 32 bits and shift into place.
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }
    #[inline(always)]
    unsafe fn scalar(p: *const u8) -> f32 {
        f32::from_bits(((p as *const u16).read_unaligned() as u32) << 16)
    }
}

impl Lanes for F16 {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn scalar(p: *const u8) -> f32 {
        f16_to_f32((p as *const u16).read_unaligned())
    }
}

/// `out[m] = w · x[m]` for one weight row `w` (k values of storage `L`) and M f32 rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows<L: Lanes, const M: usize>(w: *const u8, xs: [*const f32; M], k: usize) -> [f32; M] {
    let mut acc0 = [_mm256_setzero_ps(); M];
    let mut acc1 = [_mm256_setzero_ps(); M];
    let mut i = 0;
    while i + 16 <= k {
        if M == 1 {
            _mm_prefetch::<_MM_HINT_T0>(w.add(i * L::BYTES + PREFETCH_BYTES) as *const i8);
        }
        let w0 = L::load8(w.add(i * L::BYTES));
        let w1 = L::load8(w.add((i + 8) * L::BYTES));
        for m in 0..M {
            acc0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[m].add(i)), acc0[m]);
            acc1[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xs[m].add(i + 8)), acc1[m]);
        }
        i += 16;
    }
    if i + 8 <= k {
        let w0 = L::load8(w.add(i * L::BYTES));
        for m in 0..M {
            acc0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[m].add(i)), acc0[m]);
        }
        i += 8;
    }
    let mut out = [0.0f32; M];
    for m in 0..M {
        out[m] = hsum(_mm256_add_ps(acc0[m], acc1[m]));
    }
    while i < k {
        let wv = L::scalar(w.add(i * L::BYTES));
        for m in 0..M {
            out[m] += wv * *xs[m].add(i);
        }
        i += 1;
    }
    out
}

/// Rows `rows` of `out[t, n] = x[t, k] @ w.T` for float weights of storage `L` (`w` as bytes).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w` holds `n * k` values, `x` `t * k`, and `out` points
/// to `t * n` floats of which this call writes only the columns in `rows`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_float<L: Lanes>(
    x: &[f32],
    w: &[u8],
    out: *mut f32,
    t: usize,
    k: usize,
    n: usize,
    rows: std::ops::Range<usize>,
) {
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    let block = row_block(k * L::BYTES);
    for r0 in rows.clone().step_by(block) {
        let rb = r0..(r0 + block).min(rows.end);
        let mut ti = 0;
        while ti + 4 <= t {
            let xs = [xp.add(ti * k), xp.add((ti + 1) * k), xp.add((ti + 2) * k), xp.add((ti + 3) * k)];
            for r in rb.clone() {
                let d = dot_rows::<L, 4>(wp.add(r * k * L::BYTES), xs, k);
                for (m, v) in d.iter().enumerate() {
                    *out.add((ti + m) * n + r) = *v;
                }
            }
            ti += 4;
        }
        while ti < t {
            let xs = [xp.add(ti * k)];
            for r in rb.clone() {
                *out.add(ti * n + r) = dot_rows::<L, 1>(wp.add(r * k * L::BYTES), xs, k)[0];
            }
            ti += 1;
        }
    }
}

/// Weight rows processed against every activation row before moving on, so that a prompt's
/// product reads the weights from memory once rather than once per group of 4 tokens: a block
/// of ~192 KiB stays in the 512 KiB L2 while the activations stream past it.
fn row_block(row_bytes: usize) -> usize {
    ((192 << 10) / row_bytes.max(1)).clamp(4, 1024)
}

/// Integer dot of 32 signed weights with 32 signed activations, as 8 i32 lanes → f32.
#[inline(always)]
unsafe fn dot32(abs_w: __m256i, w: __m256i, x: __m256i) -> __m256 {
    // maddubs needs one unsigned operand: |w| · (x · sign(w)) == w · x.
    let sx = _mm256_sign_epi8(x, w);
    let p16 = _mm256_maddubs_epi16(abs_w, sx);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// The 32 stored nibbles `q = w + 8` (0..=15) of a Q4 block, one per byte, in value order: the
/// 16 bytes go to both halves of a register and the upper half is shifted down a nibble.
#[inline(always)]
unsafe fn unpack_q4(b: &BlockQ4) -> __m256i {
    let both = _mm256_broadcastsi128_si256(_mm_loadu_si128(b.qs.as_ptr() as *const __m128i));
    let shifted = _mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
}

/// A weight block format of the row kernels: how a block loads, and its integer dot product
/// with a block of activation levels.
pub trait QuantRow {
    type Block;
    /// Whether [`dot`](Self::dot) needs [`offset`](Self::offset).
    const OFFSET: bool;
    /// The block's levels as the kernel multiplies them, and its scale.
    unsafe fn load(b: &Self::Block) -> (__m256i, f32);
    /// The f16 bits of a block's scale.
    fn scale_bits(b: &Self::Block) -> u16;
    /// The f16 bits of the scales of the 8 blocks from `b` on.
    #[inline(always)]
    unsafe fn scales8(b: *const Self::Block) -> __m128i {
        let d = |i: usize| Self::scale_bits(&*b.add(i)) as i16;
        _mm_setr_epi16(d(0), d(1), d(2), d(3), d(4), d(5), d(6), d(7))
    }
    /// What [`dot`](Self::dot) needs of an activation block besides its levels, computed once
    /// for all the weight rows that meet it.
    unsafe fn offset(x: __m256i) -> __m256i;
    /// `Σ w·x` of a loaded block and activation levels `x`, as 8 partial sums (f32 lanes).
    unsafe fn dot(w: __m256i, x: __m256i, offset: __m256i) -> __m256;
}

pub struct Q8;
pub struct Q4;

impl QuantRow for Q8 {
    type Block = BlockQ8;
    const OFFSET: bool = false;
    #[inline(always)]
    fn scale_bits(b: &BlockQ8) -> u16 {
        b.d.to_bits()
    }
    #[inline(always)]
    unsafe fn load(b: &BlockQ8) -> (__m256i, f32) {
        (_mm256_loadu_si256(b.qs.as_ptr() as *const __m256i), f16_to_f32(b.d.to_bits()))
    }
    #[inline(always)]
    unsafe fn offset(_: __m256i) -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn dot(w: __m256i, x: __m256i, _: __m256i) -> __m256 {
        dot32(_mm256_sign_epi8(w, w), w, x)
    }
}

/// The nibbles themselves are `vpmaddubsw`'s unsigned operand (no sign juggling per row):
/// `Σ (q − 8)·x = Σ q·x − Σ 8·x`, the second sum shared by every row that meets `x`. A product
/// pair is at most 2 · 15 · 127 in magnitude, far from i16 saturation.
impl QuantRow for Q4 {
    type Block = BlockQ4;
    const OFFSET: bool = true;
    #[inline(always)]
    fn scale_bits(b: &BlockQ4) -> u16 {
        b.d.to_bits()
    }
    #[inline(always)]
    unsafe fn load(b: &BlockQ4) -> (__m256i, f32) {
        (unpack_q4(b), f16_to_f32(b.d.to_bits()))
    }
    #[inline(always)]
    unsafe fn offset(x: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(8), x), _mm256_set1_epi16(1))
    }
    #[inline(always)]
    unsafe fn dot(q: __m256i, x: __m256i, offset: __m256i) -> __m256 {
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(_mm256_sub_epi32(sums, offset))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_quant<Q: QuantRow, const M: usize>(w: &[Q::Block], xs: [&[BlockQ8Act]; M]) -> [f32; M] {
    let mut acc = [_mm256_setzero_ps(); M];
    for (b, wb) in w.iter().enumerate() {
        let (wq, dw) = Q::load(wb);
        for m in 0..M {
            let xb = xs[m].get_unchecked(b);
            let xq = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let p = Q::dot(wq, xq, Q::offset(xq));
            acc[m] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb.d), p, acc[m]);
        }
    }
    let mut out = [0.0f32; M];
    for m in 0..M {
        out[m] = hsum(acc[m]);
    }
    out
}

/// How far ahead of the current block decode prefetches weights.
const PREFETCH_BYTES: usize = 1024;

/// [`dot_quant`] for two weight rows at once: each activation block loaded feeds both rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_quant2<Q: QuantRow, const M: usize>(
    w0: &[Q::Block],
    w1: &[Q::Block],
    xs: [&[BlockQ8Act]; M],
) -> ([f32; M], [f32; M]) {
    let mut acc0 = [_mm256_setzero_ps(); M];
    let mut acc1 = [_mm256_setzero_ps(); M];
    for b in 0..w0.len() {
        // Decode streams the weights once from memory: ask for them well ahead, as the
        // hardware prefetcher alone leaves a third of the bandwidth unused here.
        if M == 1 {
            _mm_prefetch::<_MM_HINT_T0>((w0.as_ptr().add(b) as *const i8).add(PREFETCH_BYTES));
            _mm_prefetch::<_MM_HINT_T0>((w1.as_ptr().add(b) as *const i8).add(PREFETCH_BYTES));
        }
        let (q0, d0) = Q::load(w0.get_unchecked(b));
        let (q1, d1) = Q::load(w1.get_unchecked(b));
        let (d0, d1) = (_mm256_set1_ps(d0), _mm256_set1_ps(d1));
        for m in 0..M {
            let xb = xs[m].get_unchecked(b);
            let xq = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            let (offset, dx) = (Q::offset(xq), _mm256_set1_ps(xb.d));
            acc0[m] = _mm256_fmadd_ps(_mm256_mul_ps(d0, dx), Q::dot(q0, xq, offset), acc0[m]);
            acc1[m] = _mm256_fmadd_ps(_mm256_mul_ps(d1, dx), Q::dot(q1, xq, offset), acc1[m]);
        }
    }
    let (mut out0, mut out1) = ([0.0f32; M], [0.0f32; M]);
    for m in 0..M {
        out0[m] = hsum(acc0[m]);
        out1[m] = hsum(acc1[m]);
    }
    (out0, out1)
}

/// Most blocks per row the decode kernel keeps per-activation tables for on the stack (k ≤ 8192);
/// longer rows take the general row kernel.
const MATVEC_MAX_BLOCKS: usize = 256;

/// One activation row: `out[r] = w[r] · x` for `rows`, `R` weight rows at a time.
///
/// Decode must stream weights at the memory's speed, and a 4-bit block is only 18 bytes, so the
/// instructions per block decide whether it can. What depends only on the activation (its block
/// scales and, for Q4, `Σ 8·x`) is computed once per call rather than once per row; the weight
/// scales are converted eight blocks at a time and their products with the activation scales
/// picked out by lane; each cache line of weights is prefetched once.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w` holds `rows.end` rows of `x.len()` blocks,
/// `x.len() <= MATVEC_MAX_BLOCKS`, and `out` has `rows.end` writable values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matvec_quant<Q: QuantRow, const R: usize>(
    x: &[BlockQ8Act],
    w: &[Q::Block],
    out: *mut f32,
    rows: std::ops::Range<usize>,
) {
    let nb = x.len();
    debug_assert!(nb <= MATVEC_MAX_BLOCKS);
    // Per activation block: its scale, and the Q4 correction `Σ 8·x` as a float, which every
    // row then subtracts once per 8 blocks (weighted by its scales) instead of once per block.
    let mut dx = [0.0f32; MATVEC_MAX_BLOCKS];
    let mut correction = [0.0f32; MATVEC_MAX_BLOCKS];
    for (b, xb) in x.iter().enumerate() {
        dx[b] = xb.d;
        if Q::OFFSET {
            let sums = Q::offset(_mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i));
            correction[b] = hsum(_mm256_cvtepi32_ps(sums));
        }
    }
    let no_offset = _mm256_setzero_si256();
    let line_bytes = 8 * std::mem::size_of::<Q::Block>();
    let mut r = rows.start;
    while r < rows.end {
        if r + R > rows.end {
            // The last rows of an odd count, one at a time.
            matvec_quant::<Q, 1>(x, w, out, r..rows.end);
            return;
        }
        let ws: [*const Q::Block; R] = std::array::from_fn(|i| w.as_ptr().add((r + i) * nb));
        // Two accumulators per row keep the multiply-add chains shorter than their latency.
        let (mut acc_even, mut acc_odd) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        let mut corrections = [_mm256_setzero_ps(); R];
        let mut b = 0;
        while b + 8 <= nb {
            for wr in ws {
                let ahead = (wr.add(b) as *const i8).add(PREFETCH_BYTES);
                let mut off = 0;
                while off < line_bytes {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(off));
                    off += 64;
                }
            }
            let dxs = _mm256_loadu_ps(dx.as_ptr().add(b));
            let scales: [__m256; R] =
                std::array::from_fn(|i| _mm256_mul_ps(_mm256_cvtph_ps(Q::scales8(ws[i].add(b))), dxs));
            if Q::OFFSET {
                let c = _mm256_loadu_ps(correction.as_ptr().add(b));
                for i in 0..R {
                    corrections[i] = _mm256_fmadd_ps(scales[i], c, corrections[i]);
                }
            }
            let block = |j: usize, acc: &mut [__m256; R]| {
                let xq = _mm256_loadu_si256(x.get_unchecked(b + j).qs.as_ptr() as *const __m256i);
                let lane = _mm256_set1_epi32(j as i32);
                for i in 0..R {
                    let (q, _) = Q::load(&*ws[i].add(b + j));
                    let d = _mm256_permutevar8x32_ps(scales[i], lane);
                    acc[i] = _mm256_fmadd_ps(d, Q::dot(q, xq, no_offset), acc[i]);
                }
            };
            for j in (0..8).step_by(2) {
                block(j, &mut acc_even);
                block(j + 1, &mut acc_odd);
            }
            b += 8;
        }
        while b < nb {
            let xq = _mm256_loadu_si256(x.get_unchecked(b).qs.as_ptr() as *const __m256i);
            for i in 0..R {
                let (q, dw) = Q::load(&*ws[i].add(b));
                let d = dw * dx[b];
                acc_even[i] = _mm256_fmadd_ps(_mm256_set1_ps(d), Q::dot(q, xq, no_offset), acc_even[i]);
                // One lane carries the whole correction of the block.
                corrections[i] = _mm256_fmadd_ps(
                    _mm256_set1_ps(d),
                    _mm256_setr_ps(correction[b], 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
                    corrections[i],
                );
            }
            b += 1;
        }
        for i in 0..R {
            let sum = _mm256_add_ps(acc_even[i], acc_odd[i]);
            // The correction sums 8 lanes per group; the products sum 8 lanes per block.
            *out.add(r + i) = hsum(sum) - hsum(corrections[i]);
        }
        r += R;
    }
}

/// Rows `rows` of `out[t, n] = x[t, k] @ w.T` for block-quantized weights, with the
/// activations already quantized (`x`: `t` rows of `k / 32` blocks).
///
/// # Safety
/// As [`matmul_float`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_quant<Q: QuantRow>(
    x: &[BlockQ8Act],
    w: &[Q::Block],
    out: *mut f32,
    t: usize,
    k: usize,
    n: usize,
    rows: std::ops::Range<usize>,
) {
    let nb = k / QK;
    let block = row_block(nb * std::mem::size_of::<Q::Block>());
    let row = |r: usize| &w[r * nb..(r + 1) * nb];
    for r0 in rows.clone().step_by(block) {
        let rb = r0..(r0 + block).min(rows.end);
        let mut ti = 0;
        while ti < t {
            let m = if t - ti >= 8 {
                8
            } else if t - ti >= 4 {
                4
            } else {
                1
            };
            let xr = |i: usize| &x[(ti + i) * nb..(ti + i + 1) * nb];
            let mut r = rb.start;
            if m == 1 && nb <= MATVEC_MAX_BLOCKS {
                matvec_quant::<Q, 2>(xr(0), w, out.add(ti * n), rb.clone());
                r = rb.end;
            }
            if m == 1 {
                while r + 2 <= rb.end {
                    let (a, b) = dot_quant2::<Q, 1>(row(r), row(r + 1), [xr(0)]);
                    *out.add(ti * n + r) = a[0];
                    *out.add(ti * n + r + 1) = b[0];
                    r += 2;
                }
            }
            while r < rb.end {
                if m == 8 {
                    let a =
                        dot_quant::<Q, 8>(row(r), [xr(0), xr(1), xr(2), xr(3), xr(4), xr(5), xr(6), xr(7)]);
                    for (i, v) in a.iter().enumerate() {
                        *out.add((ti + i) * n + r) = *v;
                    }
                } else if m == 4 {
                    let a = dot_quant::<Q, 4>(row(r), [xr(0), xr(1), xr(2), xr(3)]);
                    for (i, v) in a.iter().enumerate() {
                        *out.add((ti + i) * n + r) = *v;
                    }
                } else {
                    *out.add(ti * n + r) = dot_quant::<Q, 1>(row(r), [xr(0)])[0];
                }
                r += 1;
            }
            ti += m;
        }
    }
}

/// Quantizes activation rows to Q8 blocks (same rounding as the scalar version).
///
/// # Safety
/// AVX2 must be available; `x.len() == out.len() * 32`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_act(x: &[f32], out: &mut [BlockQ8Act]) {
    let sign_mask = _mm256_set1_ps(-0.0);
    for (c, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let p = c.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let mut amax = _mm256_setzero_ps();
        for vi in v {
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, vi));
        }
        let amax = {
            let m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 0x55)))
        };
        let d = amax / 127.0;
        let inv = _mm256_set1_ps(if d == 0.0 { 0.0 } else { 1.0 / d });
        b.d = d;
        let mut levels = [_mm256_setzero_si256(); 4];
        for (level, vi) in levels.iter_mut().zip(v) {
            // C's roundf (half away from zero), which the scalar twin uses: round to nearest
            // even, then move exact halves away from zero (s ± 0.5 is exact for |s| <= 127).
            let s = _mm256_mul_ps(vi, inv);
            let r = _mm256_round_ps(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            let is_half = _mm256_cmp_ps(
                _mm256_andnot_ps(sign_mask, _mm256_sub_ps(s, r)),
                _mm256_set1_ps(0.5),
                _CMP_EQ_OQ,
            );
            let away = _mm256_add_ps(s, _mm256_or_ps(_mm256_and_ps(s, sign_mask), _mm256_set1_ps(0.5)));
            *level = _mm256_cvtps_epi32(_mm256_blendv_ps(r, away, is_half));
        }
        // Narrow 4 × 8 i32 (all within ±127, so the saturating packs are exact) to 32 i8. The
        // packs work within 128-bit halves, leaving 4-value groups in the order 0, 2, 4, 6,
        // 1, 3, 5, 7 of the wanted one; a cross-lane permute puts them back.
        let words = [_mm256_packs_epi32(levels[0], levels[1]), _mm256_packs_epi32(levels[2], levels[3])];
        let bytes = _mm256_packs_epi16(words[0], words[1]);
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(b.qs.as_mut_ptr() as *mut __m256i, ordered);
    }
}
