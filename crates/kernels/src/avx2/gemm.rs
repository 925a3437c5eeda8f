//! Blocked matrix × matrix products for prefill (many tokens at once), AVX2 + FMA + F16C.
//!
//! The row kernels of the parent module compute one weight row against a few tokens with a
//! horizontal sum per output: right when the weights stream from memory once per token (decode),
//! but with a batch of tokens the product is bound by arithmetic, and what counts is keeping
//! every loaded value busy. Here a micro-kernel holds a tile of outputs — up to 6 tokens × 16
//! weight rows — in registers:
//!
//! * the 16 weight rows are repacked per call (a "strip") so that for every position along `k`
//!   their values are adjacent: two 8-lane vectors, one lane per output row, so accumulators need
//!   no horizontal sums and are stored as they lie in `out`;
//! * each token's value is broadcast and multiplied into both vectors; the tile's tokens are
//!   packed too, so these broadcasts read one contiguous stream.
//!
//! Weights are packed a block of rows × a `k` range at a time into a thread-local buffer sized
//! for a Zen 3 L2 (512 KiB); every token tile then streams the block's strips from L2 while its
//! own activations stay in L1 (BLIS's loop order, the weight matrix in the role of its packed
//! `A`). Packing costs one pass over the weights per call, small next to the `t` multiply-adds
//! each weight then takes part in.
//!
//! * Float weights (f32/bf16/f16) are converted to f32 while packing.
//! * Q8 weights and activations are widened to i16 and multiplied in pairs by `vpmaddwd`.
//! * Q4 weights keep their 4-bit levels as bytes for `vpmaddubsw`, twice the work per instruction.
//!
//! In both quantized kernels the integer dot product of each 32-value block is exact and is
//! scaled into f32 accumulators once per block, so results equal the scalar twins up to the
//! rounding of the float accumulation.
//!
//! # Safety
//!
//! Everything here runs AVX2, FMA and F16C instructions on raw pointers. The public entry points
//! require those features (found by [`crate::Isa::detect`]) and operands of the documented
//! lengths; from those lengths they size the packing buffers and derive every offset passed
//! down, so each private function's pointers stay within extents its caller computed.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use super::{f16_to_f32, Lanes};
use crate::quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};

/// Weight rows per micro-tile: two 8-lane vectors.
const STRIP_ROWS: usize = 16;

/// 32 bytes (one vector), aligned so that no packed load straddles cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Unit([u8; 32]);

const ZERO_UNIT: Unit = Unit([0; 32]);

thread_local! {
    /// The packed weight block of the product running on this thread, reused across calls.
    static PACKED: RefCell<Vec<Unit>> = const { RefCell::new(Vec::new()) };
}

/// This thread's packing buffer, grown to at least `units` vectors; hand it back with
/// [`return_packed`]. (Taken out of the thread-local meanwhile, so that a product nested inside
/// another on the same thread would allocate its own instead of finding it borrowed.)
fn take_packed(units: usize) -> Vec<Unit> {
    let mut buf = PACKED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if buf.len() < units {
        buf.resize(units, ZERO_UNIT);
    }
    buf
}

fn return_packed(buf: Vec<Unit>) {
    PACKED.with(|p| *p.borrow_mut() = buf);
}

/// Writes zeros to the columns `rows` of all `t` rows of `out` (stride `n`): the product over an
/// empty `k`, which the blocked loops, having no `k` range to run, would never write.
unsafe fn zero_columns(out: *mut f32, t: usize, n: usize, rows: Range<usize>) {
    for ti in 0..t {
        std::ptr::write_bytes(out.add(ti * n + rows.start), 0, rows.len());
    }
}

/// Transposes 8 vectors of 8 lanes in place: lane `j` of vector `i` moves to lane `i` of vector `j`.
#[inline(always)]
unsafe fn transpose8(v: &mut [__m256; 8]) {
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
    v[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
    v[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
    v[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
    v[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
    v[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
    v[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
    v[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
    v[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
}

/// Writes a tile's accumulators (`T` tokens × 16 rows) to `out` (row stride `n`), only its first
/// `valid` rows: the last strip of a matrix may be partly padding.
#[inline(always)]
unsafe fn store_tile<const T: usize>(acc: &[[__m256; 2]; T], out: *mut f32, n: usize, valid: usize) {
    for (i, a) in acc.iter().enumerate() {
        let o = out.add(i * n);
        if valid == STRIP_ROWS {
            _mm256_storeu_ps(o, a[0]);
            _mm256_storeu_ps(o.add(8), a[1]);
        } else {
            let mut lanes = [0.0f32; STRIP_ROWS];
            _mm256_storeu_ps(lanes.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), a[1]);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), o, valid);
        }
    }
}

/// The accumulators a tile starts from: zero, or what earlier `k` ranges left in `out`.
#[inline(always)]
unsafe fn load_tile<const T: usize>(
    out: *const f32,
    n: usize,
    valid: usize,
    resume: bool,
) -> [[__m256; 2]; T] {
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    if resume {
        for (i, a) in acc.iter_mut().enumerate() {
            let o = out.add(i * n);
            if valid == STRIP_ROWS {
                *a = [_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(8))];
            } else {
                let mut lanes = [0.0f32; STRIP_ROWS];
                std::ptr::copy_nonoverlapping(o, lanes.as_mut_ptr(), valid);
                *a = [_mm256_loadu_ps(lanes.as_ptr()), _mm256_loadu_ps(lanes.as_ptr().add(8))];
            }
        }
    }
    acc
}

// ---------------------------------------------------------------------------------------------
// Float weights

/// Tokens per float micro-tile: 6 × 2 accumulators + 2 weight vectors + 1 broadcast = 15 of the
/// 16 vector registers.
const FLOAT_TOKENS: usize = 6;
/// `k` values per packed block: a strip (16 × 256 f32 = 16 KiB) plus the tile's activations
/// (6 × 1 KiB) stay in a 32 KiB L1.
const FLOAT_KC: usize = 256;
/// Weight rows per packed block: 128 × 256 f32 = 128 KiB, a quarter of a Zen 3 L2.
const FLOAT_MC: usize = 128;

/// While alive, this thread's vector arithmetic treats subnormal operands and results as zero
/// (MXCSR's DAZ and FTZ bits); dropping it restores the previous mode.
///
/// x86 cores take a microcode assist of ~100 cycles for an operation with a subnormal operand or
/// result unless these bits are set. Prompts produce such values — DeltaNet's decays `exp(g)` over
/// a 64-token chunk underflow, and the chunk products multiply them into states — and with them
/// the products ran at 7 GFLOP/s instead of 55. What is lost is below 2^-126 per term.
struct FlushSubnormals {
    saved: u32,
}

impl FlushSubnormals {
    const DAZ: u32 = 1 << 6;
    const FTZ: u32 = 1 << 15;

    #[inline(always)]
    fn new() -> Self {
        // SAFETY: reading and writing MXCSR is always possible on x86-64 (SSE is baseline). The
        // deprecation warns that code compiled for the default mode may observe the change: the
        // only float arithmetic run under it is the kernel behind an `#[inline(never)]` call, on
        // run-time data, and flushing subnormals is exactly what it is meant to see.
        #[allow(deprecated)]
        let saved = unsafe { _mm_getcsr() };
        #[allow(deprecated)]
        unsafe {
            _mm_setcsr(saved | Self::DAZ | Self::FTZ)
        };
        FlushSubnormals { saved }
    }
}

impl Drop for FlushSubnormals {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: as in `new`; this restores the mode the caller had.
        #[allow(deprecated)]
        unsafe {
            _mm_setcsr(self.saved)
        };
    }
}

/// Packs rows `r0..r0 + valid` (at most 16), values `pc..pc + kc`, of the `[n, k]` matrix `w`
/// into `dst` as `kc` groups of 16 f32 (rows past `valid` are zero).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_float_strip<L: Lanes>(
    w: *const u8,
    k: usize,
    r0: usize,
    valid: usize,
    pc: usize,
    kc: usize,
    dst: *mut f32,
) {
    let at = |r: usize, c: usize| w.add(((r0 + r) * k + pc + c) * L::BYTES);
    for half in 0..2 {
        let rows = (half * 8)..(half * 8 + 8);
        let mut c = 0;
        while c + 8 <= kc {
            let mut v = [_mm256_setzero_ps(); 8];
            for (i, r) in rows.clone().enumerate() {
                if r < valid {
                    v[i] = L::load8(at(r, c));
                }
            }
            transpose8(&mut v);
            for (i, vi) in v.iter().enumerate() {
                _mm256_store_ps(dst.add((c + i) * STRIP_ROWS + half * 8), *vi);
            }
            c += 8;
        }
        while c < kc {
            for (i, r) in rows.clone().enumerate() {
                *dst.add(c * STRIP_ROWS + half * 8 + i) = if r < valid { L::scalar(at(r, c)) } else { 0.0 };
            }
            c += 1;
        }
    }
}

/// Packs `tokens` (at most 6) rows of `x` (stride `k`), values `pc..pc + kc`, into `dst` as `kc`
/// groups of 6 f32: the broadcasts of a tile then read one stream, whatever the row stride.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_float_tokens(x: *const f32, k: usize, tokens: usize, kc: usize, dst: *mut f32) {
    for i in 0..tokens {
        let row = x.add(i * k);
        for c in 0..kc {
            *dst.add(c * FLOAT_TOKENS + i) = *row.add(c);
        }
    }
}

/// One float micro-tile: `T` tokens (packed, `x`) × one packed strip over `kc` values,
/// accumulated into (or, unless `resume`, written to) `out`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn float_tile<const T: usize>(
    strip: *const f32,
    x: *const f32,
    kc: usize,
    out: *mut f32,
    n: usize,
    valid: usize,
    resume: bool,
) {
    let mut acc = load_tile::<T>(out, n, valid, resume);
    for c in 0..kc {
        let w0 = _mm256_load_ps(strip.add(c * STRIP_ROWS));
        let w1 = _mm256_load_ps(strip.add(c * STRIP_ROWS + 8));
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = _mm256_broadcast_ss(&*x.add(c * FLOAT_TOKENS + i));
            a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
            a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
        }
    }
    store_tile::<T>(&acc, out, n, valid);
}

/// All strips of a packed block against `T` packed tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn float_tiles<const T: usize>(
    packed: *const f32,
    block_rows: usize,
    x: *const f32,
    kc: usize,
    out: *mut f32,
    n: usize,
    resume: bool,
) {
    for s in 0..block_rows.div_ceil(STRIP_ROWS) {
        let valid = (block_rows - s * STRIP_ROWS).min(STRIP_ROWS);
        float_tile::<T>(packed.add(s * kc * STRIP_ROWS), x, kc, out.add(s * STRIP_ROWS), n, valid, resume);
    }
}

/// Rows `rows` of `out[t, n] = x[t, k] @ w.T` for float weights of storage `L`, blocked and packed
/// (see the module documentation). Same contract as [`super::matmul_float`], except that
/// subnormal values count as zero ([`FlushSubnormals`]).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w` holds `n * k` values, `x` `t * k`, and `out` points
/// to `t * n` floats of which this call writes only the columns in `rows`.
pub unsafe fn matmul_float<L: Lanes>(
    x: &[f32],
    w: &[u8],
    out: *mut f32,
    t: usize,
    k: usize,
    n: usize,
    rows: Range<usize>,
) {
    let _flush = FlushSubnormals::new();
    matmul_float_blocked::<L>(x, w, out, t, k, n, rows)
}

/// [`matmul_float`] under the flushing mode; never inlined, so that no float operation of the
/// caller can be moved into the mode or out of it.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matmul_float_blocked<L: Lanes>(
    x: &[f32],
    w: &[u8],
    out: *mut f32,
    t: usize,
    k: usize,
    n: usize,
    rows: Range<usize>,
) {
    if k == 0 {
        return zero_columns(out, t, n, rows);
    }
    let kc_max = FLOAT_KC.min(k);
    let mc_max = FLOAT_MC.min(rows.len()).next_multiple_of(STRIP_ROWS);
    // One buffer: the packed weight block, then the packed tokens of one tile.
    let weight_units = mc_max * kc_max / 8;
    let token_units = (FLOAT_TOKENS * kc_max).div_ceil(8);
    let mut buf = take_packed(weight_units + token_units);
    let packed = buf.as_mut_ptr() as *mut f32;
    let tokens_packed = buf.as_mut_ptr().add(weight_units) as *mut f32;
    for pc in (0..k).step_by(FLOAT_KC) {
        let kc = FLOAT_KC.min(k - pc);
        for r0 in rows.clone().step_by(FLOAT_MC) {
            let block_rows = FLOAT_MC.min(rows.end - r0);
            for s in 0..block_rows.div_ceil(STRIP_ROWS) {
                let valid = (block_rows - s * STRIP_ROWS).min(STRIP_ROWS);
                let dst = packed.add(s * kc * STRIP_ROWS);
                pack_float_strip::<L>(w.as_ptr(), k, r0 + s * STRIP_ROWS, valid, pc, kc, dst);
            }
            let resume = pc > 0;
            let mut ti = 0;
            while ti < t {
                let tokens = FLOAT_TOKENS.min(t - ti);
                pack_float_tokens(x.as_ptr().add(ti * k + pc), k, tokens, kc, tokens_packed);
                let (xs, o) = (tokens_packed as *const f32, out.add(ti * n + r0));
                match tokens {
                    6 => float_tiles::<6>(packed, block_rows, xs, kc, o, n, resume),
                    5 => float_tiles::<5>(packed, block_rows, xs, kc, o, n, resume),
                    4 => float_tiles::<4>(packed, block_rows, xs, kc, o, n, resume),
                    3 => float_tiles::<3>(packed, block_rows, xs, kc, o, n, resume),
                    2 => float_tiles::<2>(packed, block_rows, xs, kc, o, n, resume),
                    _ => float_tiles::<1>(packed, block_rows, xs, kc, o, n, resume),
                }
                ti += tokens;
            }
        }
    }
    return_packed(buf);
}

// ---------------------------------------------------------------------------------------------
// Quantized weights

/// Weight rows per packed block of the quantized products: 8 strips.
const QUANT_MC: usize = 128;
/// Quantization blocks (of 32 values) per packed `k` range: a strip is then 35 KiB (Q8) or
/// 18 KiB (Q4) and a packed block 280 / 144 KiB, within a 512 KiB L2; longer ranges mean fewer
/// passes that reload partial sums from `out` (8 blocks measured 10–30 % slower).
const QUANT_KB: usize = 32;
/// Most tokens per quantized micro-tile (the token tile buffer is sized for this many).
const QUANT_TOKENS_MAX: usize = 6;

/// The activations of one token tile over one packed `k` range, laid out for the micro-kernel:
/// per block, every token's values (`VALUE_BYTES` each) side by side; then per block and token
/// the activation scale, and a per-kernel integer (see [`Q4Kernel`]).
struct TokenTile {
    values: *mut u8,
    scales: *mut f32,
    sums: *mut i32,
}

impl TokenTile {
    /// Vectors of scratch a tile of `kb` blocks takes.
    const fn units(kb: usize, value_bytes: usize) -> usize {
        (kb * QUANT_TOKENS_MAX * (value_bytes + 8)).div_ceil(32)
    }

    /// Lays a tile out over `buf` (at least [`TokenTile::units`] vectors).
    unsafe fn new(buf: *mut Unit, kb: usize, value_bytes: usize) -> TokenTile {
        let values = buf as *mut u8;
        let scales = values.add(kb * QUANT_TOKENS_MAX * value_bytes) as *mut f32;
        let sums = scales.add(kb * QUANT_TOKENS_MAX) as *mut i32;
        TokenTile { values, scales, sums }
    }
}

/// A blocked kernel for one weight block format: how a weight strip and a token tile are packed,
/// and the micro-tile.
trait QuantKernel {
    type Block;
    /// Tokens per micro-tile.
    const TOKENS: usize;
    /// Packed vectors per block of 32 values of a weight strip.
    const UNITS_PER_BLOCK: usize;
    /// Bytes of a token's packed values per block.
    const VALUE_BYTES: usize;

    /// Packs rows `r0..r0 + valid` (at most 16), blocks `b0..b0 + kb`, of an `[n, nb]` block
    /// matrix into `dst` (rows past `valid` are zero).
    unsafe fn pack(
        w: &[Self::Block],
        nb: usize,
        r0: usize,
        valid: usize,
        b0: usize,
        kb: usize,
        dst: *mut Unit,
    );

    /// Packs `tokens` rows of activation blocks (`x`: the first token's first block, row stride
    /// `nb`), `kb` blocks each, into `tile`.
    unsafe fn pack_tokens(x: *const BlockQ8Act, nb: usize, tokens: usize, kb: usize, tile: &TokenTile);

    /// Accumulates a packed token tile of `tokens` rows times every strip of a packed block of
    /// `block_rows` weight rows into `out` (the tile's first token, the block's first row).
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles(
        packed: *const Unit,
        block_rows: usize,
        kb: usize,
        tile: &TokenTile,
        tokens: usize,
        out: *mut f32,
        n: usize,
        resume: bool,
    );
}

/// Adds one block's contribution to a tile row: the two halves' weight scales (vectors at
/// `scales`) times the token's scale, times the exact integer dots (i32 lanes, one per row).
#[inline(always)]
unsafe fn accumulate_block(acc: &mut [__m256; 2], scales: *const Unit, dx: f32, dots: [__m256i; 2]) {
    let dx = _mm256_set1_ps(dx);
    for h in 0..2 {
        let d = _mm256_mul_ps(_mm256_load_ps(scales.add(h) as *const f32), dx);
        acc[h] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dots[h]), acc[h]);
    }
}

/// Reads 4 bytes as the broadcast operand of a multiply.
#[inline(always)]
unsafe fn broadcast4(p: *const u8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// Q8 weights: values widened to i16 and multiplied in pairs by `vpmaddwd` (16 products into
/// 8 i32 lanes per instruction; i8 × i8 products need 16 bits, so no cheaper exact form exists
/// in AVX2). Per block a strip holds 16 pairs of vectors — lane `i` of half `h` of pair `p` is
/// values `2p, 2p + 1` of row `8h + i` — then the two halves' scales; a token tile holds each
/// token's 32 values as i16.
struct Q8Kernel;

impl Q8Kernel {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const T: usize>(
        strip: *const Unit,
        kb: usize,
        tile: &TokenTile,
        out: *mut f32,
        n: usize,
        valid: usize,
        resume: bool,
    ) {
        let mut acc = load_tile::<T>(out, n, valid, resume);
        for b in 0..kb {
            let w = strip.add(b * Self::UNITS_PER_BLOCK);
            let x = tile.values.add(b * QUANT_TOKENS_MAX * Self::VALUE_BYTES);
            let mut dots = [[_mm256_setzero_si256(); 2]; T];
            for p in 0..QK / 2 {
                let w0 = _mm256_load_si256(w.add(2 * p) as *const __m256i);
                let w1 = _mm256_load_si256(w.add(2 * p + 1) as *const __m256i);
                for (i, d) in dots.iter_mut().enumerate() {
                    let xv = broadcast4(x.add(i * Self::VALUE_BYTES + 4 * p));
                    d[0] = _mm256_add_epi32(d[0], _mm256_madd_epi16(w0, xv));
                    d[1] = _mm256_add_epi32(d[1], _mm256_madd_epi16(w1, xv));
                }
            }
            for (i, (a, d)) in acc.iter_mut().zip(dots).enumerate() {
                accumulate_block(a, w.add(QK), *tile.scales.add(b * QUANT_TOKENS_MAX + i), d);
            }
        }
        store_tile::<T>(&acc, out, n, valid);
    }
}

impl QuantKernel for Q8Kernel {
    type Block = BlockQ8;
    const TOKENS: usize = 6;
    const UNITS_PER_BLOCK: usize = QK + 2;
    const VALUE_BYTES: usize = 2 * QK;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack(w: &[BlockQ8], nb: usize, r0: usize, valid: usize, b0: usize, kb: usize, dst: *mut Unit) {
        for b in 0..kb {
            let unit = dst.add(b * Self::UNITS_PER_BLOCK);
            for half in 0..2 {
                let mut lo = [_mm256_setzero_ps(); 8];
                let mut hi = [_mm256_setzero_ps(); 8];
                let mut scales = [0.0f32; 8];
                for i in 0..8 {
                    let r = half * 8 + i;
                    if r < valid {
                        let block = w.get_unchecked((r0 + r) * nb + b0 + b);
                        let q = _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i);
                        // Each 32-bit lane of a widened half is one pair of consecutive values.
                        lo[i] = _mm256_castsi256_ps(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)));
                        hi[i] = _mm256_castsi256_ps(_mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(q)));
                        scales[i] = f16_to_f32(block.d.to_bits());
                    }
                }
                transpose8(&mut lo);
                transpose8(&mut hi);
                for p in 0..8 {
                    _mm256_store_ps(unit.add(2 * p + half) as *mut f32, lo[p]);
                    _mm256_store_ps(unit.add(2 * (p + 8) + half) as *mut f32, hi[p]);
                }
                _mm256_store_ps(unit.add(QK + half) as *mut f32, _mm256_loadu_ps(scales.as_ptr()));
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack_tokens(x: *const BlockQ8Act, nb: usize, tokens: usize, kb: usize, tile: &TokenTile) {
        for b in 0..kb {
            let values = tile.values.add(b * QUANT_TOKENS_MAX * Self::VALUE_BYTES);
            for i in 0..tokens {
                let block = &*x.add(i * nb + b);
                let q = _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i);
                let dst = values.add(i * Self::VALUE_BYTES) as *mut __m256i;
                _mm256_storeu_si256(dst, _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)));
                _mm256_storeu_si256(dst.add(1), _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(q)));
                *tile.scales.add(b * QUANT_TOKENS_MAX + i) = block.d;
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tiles(
        packed: *const Unit,
        block_rows: usize,
        kb: usize,
        tile: &TokenTile,
        tokens: usize,
        out: *mut f32,
        n: usize,
        resume: bool,
    ) {
        for s in 0..block_rows.div_ceil(STRIP_ROWS) {
            let valid = (block_rows - s * STRIP_ROWS).min(STRIP_ROWS);
            let (strip, o) = (packed.add(s * kb * Self::UNITS_PER_BLOCK), out.add(s * STRIP_ROWS));
            match tokens {
                6 => Self::tile::<6>(strip, kb, tile, o, n, valid, resume),
                5 => Self::tile::<5>(strip, kb, tile, o, n, valid, resume),
                4 => Self::tile::<4>(strip, kb, tile, o, n, valid, resume),
                3 => Self::tile::<3>(strip, kb, tile, o, n, valid, resume),
                2 => Self::tile::<2>(strip, kb, tile, o, n, valid, resume),
                _ => Self::tile::<1>(strip, kb, tile, o, n, valid, resume),
            }
        }
    }
}

/// Q4 weights: the stored nibbles `q = w + 8` (0..=15) are the unsigned operand of `vpmaddubsw`
/// and the activations the signed one, so one instruction makes 32 products summed in pairs
/// into i16 lanes; a pair is at most 2 · 15 · 127 = 3810 in magnitude, so the 8 steps of a block
/// add up in i16 without overflow (≤ 30480) before one `vpmaddwd` widens them. Then
/// `Σ w·x = Σ q·x − 8·Σ x`, the second term packed with the token tile.
/// Per block a strip holds 8 pairs of vectors — lane `i` of half `h` of pair `c` is the four
/// nibbles `4c..4c + 4` of row `8h + i`, one per byte — then the two halves' scales; a token tile
/// holds each token's 32 values as i8.
struct Q4Kernel;

impl Q4Kernel {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const T: usize>(
        strip: *const Unit,
        kb: usize,
        tile: &TokenTile,
        out: *mut f32,
        n: usize,
        valid: usize,
        resume: bool,
    ) {
        let mut acc = load_tile::<T>(out, n, valid, resume);
        let ones = _mm256_set1_epi16(1);
        for b in 0..kb {
            let w = strip.add(b * Self::UNITS_PER_BLOCK);
            let x = tile.values.add(b * QUANT_TOKENS_MAX * Self::VALUE_BYTES);
            let mut dots = [[_mm256_setzero_si256(); 2]; T];
            for c in 0..QK / 4 {
                let w0 = _mm256_load_si256(w.add(2 * c) as *const __m256i);
                let w1 = _mm256_load_si256(w.add(2 * c + 1) as *const __m256i);
                for (i, d) in dots.iter_mut().enumerate() {
                    let xv = broadcast4(x.add(i * Self::VALUE_BYTES + 4 * c));
                    d[0] = _mm256_add_epi16(d[0], _mm256_maddubs_epi16(w0, xv));
                    d[1] = _mm256_add_epi16(d[1], _mm256_maddubs_epi16(w1, xv));
                }
            }
            for (i, (a, d)) in acc.iter_mut().zip(dots).enumerate() {
                let at = b * QUANT_TOKENS_MAX + i;
                let offset = _mm256_set1_epi32(*tile.sums.add(at));
                let dots = [
                    _mm256_sub_epi32(_mm256_madd_epi16(d[0], ones), offset),
                    _mm256_sub_epi32(_mm256_madd_epi16(d[1], ones), offset),
                ];
                accumulate_block(a, w.add(QK / 2), *tile.scales.add(at), dots);
            }
        }
        store_tile::<T>(&acc, out, n, valid);
    }
}

impl QuantKernel for Q4Kernel {
    type Block = BlockQ4;
    const TOKENS: usize = 4;
    const UNITS_PER_BLOCK: usize = QK / 2 + 2;
    const VALUE_BYTES: usize = QK;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack(w: &[BlockQ4], nb: usize, r0: usize, valid: usize, b0: usize, kb: usize, dst: *mut Unit) {
        let low_nibbles = _mm_set1_epi8(0x0f);
        for b in 0..kb {
            let unit = dst.add(b * Self::UNITS_PER_BLOCK);
            for half in 0..2 {
                let mut quads = [_mm256_setzero_ps(); 8];
                let mut scales = [0.0f32; 8];
                for (i, q) in quads.iter_mut().enumerate() {
                    let r = half * 8 + i;
                    if r < valid {
                        let block = w.get_unchecked((r0 + r) * nb + b0 + b);
                        // Values 0..16 are the low nibbles, 16..32 the high ones (Q4_0 order).
                        let packed = _mm_loadu_si128(block.qs.as_ptr() as *const __m128i);
                        let lo = _mm_and_si128(packed, low_nibbles);
                        let hi = _mm_and_si128(_mm_srli_epi16::<4>(packed), low_nibbles);
                        *q = _mm256_castsi256_ps(_mm256_set_m128i(hi, lo));
                        scales[i] = f16_to_f32(block.d.to_bits());
                    }
                }
                transpose8(&mut quads);
                for (c, q) in quads.iter().enumerate() {
                    _mm256_store_ps(unit.add(2 * c + half) as *mut f32, *q);
                }
                _mm256_store_ps(unit.add(QK / 2 + half) as *mut f32, _mm256_loadu_ps(scales.as_ptr()));
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack_tokens(x: *const BlockQ8Act, nb: usize, tokens: usize, kb: usize, tile: &TokenTile) {
        let ones = _mm256_set1_epi8(1);
        for b in 0..kb {
            let values = tile.values.add(b * QUANT_TOKENS_MAX * Self::VALUE_BYTES);
            for i in 0..tokens {
                let block = &*x.add(i * nb + b);
                let q = _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i);
                _mm256_storeu_si256(values.add(i * Self::VALUE_BYTES) as *mut __m256i, q);
                // 8 · Σ q, the offset of the nibbles (exact: |Σ q| ≤ 32 · 127).
                let pairs = _mm256_madd_epi16(_mm256_maddubs_epi16(ones, q), _mm256_set1_epi16(1));
                let sum = _mm_add_epi32(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256::<1>(pairs));
                let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
                let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum));
                let at = b * QUANT_TOKENS_MAX + i;
                *tile.sums.add(at) = 8 * _mm_cvtsi128_si32(sum);
                *tile.scales.add(at) = block.d;
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tiles(
        packed: *const Unit,
        block_rows: usize,
        kb: usize,
        tile: &TokenTile,
        tokens: usize,
        out: *mut f32,
        n: usize,
        resume: bool,
    ) {
        for s in 0..block_rows.div_ceil(STRIP_ROWS) {
            let valid = (block_rows - s * STRIP_ROWS).min(STRIP_ROWS);
            let (strip, o) = (packed.add(s * kb * Self::UNITS_PER_BLOCK), out.add(s * STRIP_ROWS));
            match tokens {
                4 => Self::tile::<4>(strip, kb, tile, o, n, valid, resume),
                3 => Self::tile::<3>(strip, kb, tile, o, n, valid, resume),
                2 => Self::tile::<2>(strip, kb, tile, o, n, valid, resume),
                _ => Self::tile::<1>(strip, kb, tile, o, n, valid, resume),
            }
        }
    }
}

/// Rows `rows` of `out[t, n] = x[t, k] @ w.T` for block-quantized weights `K::Block`, blocked
/// and packed (see the module documentation).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_quant<K: QuantKernel>(
    x: &[BlockQ8Act],
    w: &[K::Block],
    out: *mut f32,
    t: usize,
    k: usize,
    n: usize,
    rows: Range<usize>,
) {
    let nb = k / QK;
    assert!(x.len() == t * nb && w.len() == n * nb, "matmul_quant: shapes");
    debug_assert!(K::TOKENS <= QUANT_TOKENS_MAX);
    if nb == 0 {
        return zero_columns(out, t, n, rows);
    }
    let kb_max = QUANT_KB.min(nb);
    let strips_max = QUANT_MC.min(rows.len()).div_ceil(STRIP_ROWS);
    // One buffer: the packed weight block, then the packed token tile.
    let weight_units = strips_max * kb_max * K::UNITS_PER_BLOCK;
    let mut buf = take_packed(weight_units + TokenTile::units(kb_max, K::VALUE_BYTES));
    let packed = buf.as_mut_ptr();
    let tile = TokenTile::new(packed.add(weight_units), kb_max, K::VALUE_BYTES);
    for b0 in (0..nb).step_by(QUANT_KB) {
        let kb = QUANT_KB.min(nb - b0);
        for r0 in rows.clone().step_by(QUANT_MC) {
            let block_rows = QUANT_MC.min(rows.end - r0);
            for s in 0..block_rows.div_ceil(STRIP_ROWS) {
                let valid = (block_rows - s * STRIP_ROWS).min(STRIP_ROWS);
                let dst = packed.add(s * kb * K::UNITS_PER_BLOCK);
                K::pack(w, nb, r0 + s * STRIP_ROWS, valid, b0, kb, dst);
            }
            let mut ti = 0;
            while ti < t {
                let tokens = K::TOKENS.min(t - ti);
                K::pack_tokens(x.as_ptr().add(ti * nb + b0), nb, tokens, kb, &tile);
                K::tiles(packed, block_rows, kb, &tile, tokens, out.add(ti * n + r0), n, b0 > 0);
                ti += tokens;
            }
        }
    }
    return_packed(buf);
}

/// Rows `rows` of `out[t, n] = x[t, k] @ w.T` for Q8 weights and activations quantized to Q8
/// blocks (`x`: `t` rows of `k / 32`); numerically the scalar [`crate::scalar::matmul_q8`] up to
/// the rounding of the float accumulation.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w` holds `n` rows of `k / 32` blocks, and `out` points
/// to `t * n` floats of which this call writes only the columns in `rows`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_q8(
    x: &[BlockQ8Act],
    w: &[BlockQ8],
    out: *mut f32,
    t: usize,
    k: usize,
    n: usize,
    rows: Range<usize>,
) {
    matmul_quant::<Q8Kernel>(x, w, out, t, k, n, rows)
}

/// [`matmul_q8`] for Q4 weights; numerically the scalar [`crate::scalar::matmul_q4`] up to the
/// rounding of the float accumulation.
///
/// # Safety
/// As [`matmul_q8`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_q4(
    x: &[BlockQ8Act],
    w: &[BlockQ4],
    out: *mut f32,
    t: usize,
    k: usize,
    n: usize,
    rows: Range<usize>,
) {
    matmul_quant::<Q4Kernel>(x, w, out, t, k, n, rows)
}
