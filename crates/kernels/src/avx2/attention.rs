//! AVX2 twin of [`crate::attention::attend_cached`].
//!
//! Up to four query heads go together, so each cached key or value row is loaded and converted
//! once for all of them. The weighted sum runs over blocks of rows small enough to stay in L2
//! while every 16-value column strip of the block is accumulated in registers; column strips
//! over the whole cache would read it from memory once per strip.
//!
//! # Safety
//! AVX2, FMA and F16C must be available, and the caller (which asserts the shapes) guarantees
//! that `span` rows of `hd` values at stride `stride` lie within `keys` and `values`.

use std::arch::x86_64::*;
use std::marker::PhantomData;

use super::{f16_to_f32, Lanes};
use crate::quant::{Q8_BLOCK_BYTES, QK};

/// How the rows of a cache are laid out and read, 8 values at a time.
pub trait Rows {
    /// Start of row `j` of `stride` values.
    unsafe fn row(base: *const u8, j: usize, stride: usize) -> *const u8;
    /// Values `d..d + 8` of a row (`d` a multiple of 8).
    unsafe fn load8(row: *const u8, d: usize) -> __m256;
    /// Bytes of a row of `hd` values.
    fn row_bytes(hd: usize) -> usize;
    /// Where in a row the bytes of value `d` lie (about: for prefetching).
    fn strip_offset(d: usize) -> usize;
    unsafe fn scalar(row: *const u8, d: usize) -> f32;

    /// The scores of `G` query heads against every row (see [`scores_for`]).
    #[inline(always)]
    unsafe fn scores<const G: usize>(
        q: *const f32,
        hd: usize,
        keys: *const u8,
        stride: usize,
        span: usize,
        scores: *mut f32,
    ) where
        Self: Sized,
    {
        scores_for::<Self, G>(q, hd, keys, stride, span, scores)
    }

    /// `out[g] += Σ_j scores[g * span + j] · value j` (see [`weighted_sum`]).
    #[inline(always)]
    unsafe fn weighted<const G: usize>(
        scores: *const f32,
        span: usize,
        values: *const u8,
        stride: usize,
        hd: usize,
        out: *mut f32,
    ) where
        Self: Sized,
    {
        weighted_sum::<Self, G>(scores, span, values, stride, hd, out)
    }
}

/// Rows of floats in the storage format `L`.
pub struct Float<L>(PhantomData<L>);

impl<L: Lanes> Rows for Float<L> {
    #[inline(always)]
    unsafe fn row(base: *const u8, j: usize, stride: usize) -> *const u8 {
        base.add(j * stride * L::BYTES)
    }
    #[inline(always)]
    unsafe fn load8(row: *const u8, d: usize) -> __m256 {
        L::load8(row.add(d * L::BYTES))
    }
    #[inline(always)]
    fn row_bytes(hd: usize) -> usize {
        hd * L::BYTES
    }
    #[inline(always)]
    fn strip_offset(d: usize) -> usize {
        d * L::BYTES
    }
    #[inline(always)]
    unsafe fn scalar(row: *const u8, d: usize) -> f32 {
        L::scalar(row.add(d * L::BYTES))
    }
}

/// Rows of Q8 blocks (whole blocks per row; 8 aligned values never straddle two blocks).
pub struct Q8Rows;

impl Q8Rows {
    #[inline(always)]
    unsafe fn block(row: *const u8, d: usize) -> (*const u8, f32) {
        let block = row.add(d / QK * Q8_BLOCK_BYTES);
        (block.add(2 + d % QK), f16_to_f32((block as *const u16).read_unaligned()))
    }
}

impl Rows for Q8Rows {
    #[inline(always)]
    unsafe fn row(base: *const u8, j: usize, stride: usize) -> *const u8 {
        base.add(j * stride / QK * Q8_BLOCK_BYTES)
    }
    #[inline(always)]
    fn row_bytes(hd: usize) -> usize {
        hd / QK * Q8_BLOCK_BYTES
    }
    #[inline(always)]
    fn strip_offset(d: usize) -> usize {
        d / QK * Q8_BLOCK_BYTES + d % QK
    }
    #[inline(always)]
    unsafe fn load8(row: *const u8, d: usize) -> __m256 {
        let (levels, scale) = Self::block(row, d);
        let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(levels as *const __m128i));
        _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(scale))
    }
    #[inline(always)]
    unsafe fn scalar(row: *const u8, d: usize) -> f32 {
        let (levels, scale) = Self::block(row, d);
        (*levels as i8) as f32 * scale
    }

    /// Widens each block's levels once, scales them once, and feeds them to every head: the
    /// same register budget as f16 rows (2 rows × `G` sums), with one scale per block and row.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `g` indexes both rows' sums and the query
    unsafe fn scores<const G: usize>(
        q: *const f32,
        hd: usize,
        keys: *const u8,
        stride: usize,
        span: usize,
        scores: *mut f32,
    ) {
        // Two rows per pass, as in `scores_for`.
        let mut j = 0;
        while j < span {
            let pair = (span - j).min(2);
            let rows = [Self::row(keys, j, stride), Self::row(keys, j + pair - 1, stride)];
            prefetch_rows::<Self>(keys, j + ROWS_AHEAD, 2, span, stride, hd);
            let mut acc = [[_mm256_setzero_ps(); G]; 2];
            for b in (0..hd).step_by(QK) {
                let blocks = [Self::block(rows[0], b), Self::block(rows[1], b)];
                let scales = [_mm256_set1_ps(blocks[0].1), _mm256_set1_ps(blocks[1].1)];
                for c in (0..QK).step_by(8) {
                    let widen = |levels: *const u8, scale: __m256| {
                        let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(levels.add(c) as *const __m128i));
                        _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale)
                    };
                    let k = [widen(blocks[0].0, scales[0]), widen(blocks[1].0, scales[1])];
                    for g in 0..G {
                        let x = _mm256_loadu_ps(q.add(g * hd + b + c));
                        acc[0][g] = _mm256_fmadd_ps(x, k[0], acc[0][g]);
                        acc[1][g] = _mm256_fmadd_ps(x, k[1], acc[1][g]);
                    }
                }
            }
            for (r, sums) in acc.iter().enumerate().take(pair) {
                for (g, a) in sums.iter().enumerate() {
                    *scores.add(g * span + j + r) = hsum(*a);
                }
            }
            j += pair;
        }
    }

    /// Folds each row's block scales into its probabilities first (per row block, in L1), so
    /// the inner loop only widens levels and multiplies-adds, as for f16 rows.
    #[inline(always)]
    unsafe fn weighted<const G: usize>(
        scores: *const f32,
        span: usize,
        values: *const u8,
        stride: usize,
        hd: usize,
        out: *mut f32,
    ) {
        let blocks = hd / QK;
        if blocks > MAX_BLOCKS {
            return weighted_sum::<Self, G>(scores, span, values, stride, hd, out);
        }
        // scaled[(b * ROW_BLOCK + j - j0) * G + g] = p[g][j] · scale of block b of row j: the
        // inner loop below reads it in order.
        let mut scaled = [0.0f32; HEADS * ROW_BLOCK * MAX_BLOCKS];
        for j0 in (0..span).step_by(ROW_BLOCK) {
            let j1 = (j0 + ROW_BLOCK).min(span);
            for j in j0..j1 {
                let row = Self::row(values, j, stride);
                for b in 0..blocks {
                    let scale = f16_to_f32((row.add(b * Q8_BLOCK_BYTES) as *const u16).read_unaligned());
                    for g in 0..G {
                        scaled[(b * ROW_BLOCK + j - j0) * G + g] = *scores.add(g * span + j) * scale;
                    }
                }
            }
            for d in (0..hd).step_by(16) {
                let b = d / QK;
                let mut acc = [[_mm256_setzero_ps(); 2]; G];
                for (g, a) in acc.iter_mut().enumerate() {
                    a[0] = _mm256_loadu_ps(out.add(g * hd + d));
                    a[1] = _mm256_loadu_ps(out.add(g * hd + d + 8));
                }
                let probabilities = scaled.as_ptr().add(b * ROW_BLOCK * G);
                let mut levels = Self::row(values, j0, stride).add(b * Q8_BLOCK_BYTES + 2 + d % QK);
                let row_bytes = stride / QK * Q8_BLOCK_BYTES;
                for jj in 0..j1 - j0 {
                    prefetch_next_block::<Self>(values, j0 + jj, span, stride, d);
                    let q = _mm_loadu_si128(levels as *const __m128i);
                    let v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                    let v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(q)));
                    for (g, a) in acc.iter_mut().enumerate() {
                        let p = _mm256_broadcast_ss(&*probabilities.add(jj * G + g));
                        a[0] = _mm256_fmadd_ps(p, v0, a[0]);
                        a[1] = _mm256_fmadd_ps(p, v1, a[1]);
                    }
                    levels = levels.add(row_bytes);
                }
                for (g, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out.add(g * hd + d), a[0]);
                    _mm256_storeu_ps(out.add(g * hd + d + 8), a[1]);
                }
            }
        }
    }
}

/// Most Q8 blocks per head that [`Q8Rows::weighted`]'s stack scratch covers (heads of 512).
const MAX_BLOCKS: usize = 16;

/// Query heads sharing one pass over the cache.
const HEADS: usize = 4;
/// Cached rows per block of the weighted sum (128 rows of 256 f32 values: 128 KiB).
const ROW_BLOCK: usize = 128;

/// How many rows ahead the scores pass asks for keys. A long cache is read from memory, where
/// waiting for each row as it comes costs more than the arithmetic on it.
const ROWS_AHEAD: usize = 16;

/// Asks for the cache lines of rows `first..first + count` (those below `span`).
#[inline(always)]
unsafe fn prefetch_rows<R: Rows>(
    base: *const u8,
    first: usize,
    count: usize,
    span: usize,
    stride: usize,
    hd: usize,
) {
    for j in first..(first + count).min(span) {
        let (start, end) = (R::row(base, j, stride), R::row(base, j, stride).add(R::row_bytes(hd)));
        let mut line = start;
        while line < end {
            _mm_prefetch::<_MM_HINT_T0>(line as *const i8);
            line = line.add(64);
        }
    }
}

/// The weighted sum walks a block of rows once per 16-value strip: while it reads strip `d` of
/// row `j`, it asks for the same strip of the row one block further on, so the next block is in
/// cache by the time it starts.
#[inline(always)]
unsafe fn prefetch_next_block<R: Rows>(values: *const u8, j: usize, span: usize, stride: usize, d: usize) {
    let ahead = j + ROW_BLOCK;
    if ahead < span {
        _mm_prefetch::<_MM_HINT_T0>(R::row(values, ahead, stride).add(R::strip_offset(d)) as *const i8);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend_cached<R: Rows>(
    q: &[f32],
    hd: usize,
    keys: &[u8],
    values: &[u8],
    stride: usize,
    span: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = q.len() / hd;
    let mut g0 = 0;
    while g0 < group {
        let heads = HEADS.min(group - g0);
        let (qs, ss) = (q.as_ptr().add(g0 * hd), scores.as_mut_ptr().add(g0 * span));
        match heads {
            4 => R::scores::<4>(qs, hd, keys.as_ptr(), stride, span, ss),
            3 => R::scores::<3>(qs, hd, keys.as_ptr(), stride, span, ss),
            2 => R::scores::<2>(qs, hd, keys.as_ptr(), stride, span, ss),
            _ => R::scores::<1>(qs, hd, keys.as_ptr(), stride, span, ss),
        }
        g0 += heads;
    }
    for s in scores.chunks_exact_mut(span) {
        crate::softmax(s);
    }
    out.fill(0.0);
    let mut g0 = 0;
    while g0 < group {
        let heads = HEADS.min(group - g0);
        let (ss, os) = (scores.as_ptr().add(g0 * span), out.as_mut_ptr().add(g0 * hd));
        match heads {
            4 => R::weighted::<4>(ss, span, values.as_ptr(), stride, hd, os),
            3 => R::weighted::<3>(ss, span, values.as_ptr(), stride, hd, os),
            2 => R::weighted::<2>(ss, span, values.as_ptr(), stride, hd, os),
            _ => R::weighted::<1>(ss, span, values.as_ptr(), stride, hd, os),
        }
        g0 += heads;
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `scores[g * span + j] = q[g] · key j` for `G` query heads (rows of `q`, `hd` apart).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `g` indexes both rows' sums and the query
unsafe fn scores_for<R: Rows, const G: usize>(
    q: *const f32,
    hd: usize,
    keys: *const u8,
    stride: usize,
    span: usize,
    scores: *mut f32,
) {
    let whole = hd / 8 * 8;
    // Two rows per pass: each query load feeds two multiply-adds, and 2·G independent sums
    // keep the multiply-add pipeline full (one row's G sums would wait on its latency).
    let mut j = 0;
    while j + 2 <= span {
        let rows = [R::row(keys, j, stride), R::row(keys, j + 1, stride)];
        prefetch_rows::<R>(keys, j + ROWS_AHEAD, 2, span, stride, hd);
        let mut acc = [[_mm256_setzero_ps(); G]; 2];
        for d in (0..whole).step_by(8) {
            let k = [R::load8(rows[0], d), R::load8(rows[1], d)];
            for g in 0..G {
                let x = _mm256_loadu_ps(q.add(g * hd + d));
                acc[0][g] = _mm256_fmadd_ps(x, k[0], acc[0][g]);
                acc[1][g] = _mm256_fmadd_ps(x, k[1], acc[1][g]);
            }
        }
        for (r, (row, sums)) in rows.iter().zip(&acc).enumerate() {
            store_scores::<R, G>(q, hd, whole, *row, sums, scores.add(j + r), span);
        }
        j += 2;
    }
    if j < span {
        let row = R::row(keys, j, stride);
        let mut acc = [_mm256_setzero_ps(); G];
        for d in (0..whole).step_by(8) {
            let k = R::load8(row, d);
            for (g, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(g * hd + d)), k, *a);
            }
        }
        store_scores::<R, G>(q, hd, whole, row, &acc, scores.add(j), span);
    }
}

/// Finishes one row's `G` scores (the values past the last whole vector one by one) and stores
/// them `span` apart.
#[inline(always)]
unsafe fn store_scores<R: Rows, const G: usize>(
    q: *const f32,
    hd: usize,
    whole: usize,
    row: *const u8,
    sums: &[__m256; G],
    out: *mut f32,
    span: usize,
) {
    for (g, a) in sums.iter().enumerate() {
        let mut s = hsum(*a);
        for d in whole..hd {
            s += *q.add(g * hd + d) * R::scalar(row, d);
        }
        *out.add(g * span) = s;
    }
}

/// `out[g] += Σ_j scores[g * span + j] · value j` for `G` query heads.
#[inline(always)]
unsafe fn weighted_sum<R: Rows, const G: usize>(
    scores: *const f32,
    span: usize,
    values: *const u8,
    stride: usize,
    hd: usize,
    out: *mut f32,
) {
    for j0 in (0..span).step_by(ROW_BLOCK) {
        let j1 = (j0 + ROW_BLOCK).min(span);
        let mut d = 0;
        while d + 16 <= hd {
            let mut acc = [[_mm256_setzero_ps(); 2]; G];
            for (g, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_loadu_ps(out.add(g * hd + d));
                a[1] = _mm256_loadu_ps(out.add(g * hd + d + 8));
            }
            for j in j0..j1 {
                let row = R::row(values, j, stride);
                prefetch_next_block::<R>(values, j, span, stride, d);
                let (v0, v1) = (R::load8(row, d), R::load8(row, d + 8));
                for (g, a) in acc.iter_mut().enumerate() {
                    let p = _mm256_broadcast_ss(&*scores.add(g * span + j));
                    a[0] = _mm256_fmadd_ps(p, v0, a[0]);
                    a[1] = _mm256_fmadd_ps(p, v1, a[1]);
                }
            }
            for (g, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(g * hd + d), a[0]);
                _mm256_storeu_ps(out.add(g * hd + d + 8), a[1]);
            }
            d += 16;
        }
        // Head sizes that are not a multiple of 16 (none of the Qwen models'): 8 lanes, then
        // single values.
        if d + 8 <= hd {
            let mut acc = [_mm256_setzero_ps(); G];
            for (g, a) in acc.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(out.add(g * hd + d));
            }
            for j in j0..j1 {
                let v = R::load8(R::row(values, j, stride), d);
                for (g, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*scores.add(g * span + j)), v, *a);
                }
            }
            for (g, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(g * hd + d), *a);
            }
            d += 8;
        }
        for dd in d..hd {
            for g in 0..G {
                let mut s = *out.add(g * hd + dd);
                for j in j0..j1 {
                    s += *scores.add(g * span + j) * R::scalar(R::row(values, j, stride), dd);
                }
                *out.add(g * hd + dd) = s;
            }
        }
    }
}
