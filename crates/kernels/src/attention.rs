//! Attention of one new position against a KV cache (decode), for one KV head and the query
//! heads that share it.
//!
//! Decode attention at long context is bound by reading the cache, like the matrix products
//! are by reading weights: at 8k tokens the six attention layers of Qwen3.5-0.8B read 192 MiB
//! of f32 keys and values per token, a quarter of what its int8 weights take. The kernel reads
//! every cached row once for the whole group of query heads, and the cache may be stored in
//! half precision or in 8-bit blocks, which halve or nearly quarter those bytes.

use crate::quant::{quantize_q8_into, BlockQ8, QK};
use crate::scalar::{softmax, FloatFormat};
use crate::Isa;

/// How a cache stores its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheFormat {
    Float(FloatFormat),
    /// Blocks of 32 values, each an f16 scale then 32 signed levels (the Q8_0 layout, 34
    /// bytes): rows and the heads within them must be whole blocks.
    Q8,
}

pub use crate::quant::Q8_BLOCK_BYTES;

impl CacheFormat {
    /// Bytes that `values` values take (for Q8, a multiple of 32).
    pub fn bytes_for(self, values: usize) -> usize {
        match self {
            CacheFormat::Float(f) => values * f.bytes(),
            CacheFormat::Q8 => values / QK * Q8_BLOCK_BYTES,
        }
    }

    /// Whether rows or heads of `values` values can be stored in this format.
    pub fn fits(self, values: usize) -> bool {
        self != CacheFormat::Q8 || values.is_multiple_of(QK)
    }

    /// Value `i` of `bytes`.
    pub fn get(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            CacheFormat::Float(f) => f.get(bytes, i),
            CacheFormat::Q8 => {
                let block = &bytes[i / QK * Q8_BLOCK_BYTES..];
                half::f16::from_le_bytes([block[0], block[1]]).to_f32() * (block[2 + i % QK] as i8) as f32
            }
        }
    }
}

/// Writes `values` to `out` (`format.bytes_for(values.len())` bytes) in `format`.
pub fn encode_cache(format: CacheFormat, values: &[f32], out: &mut [u8]) {
    match format {
        CacheFormat::Float(f) => crate::encode_floats(f, values, out),
        CacheFormat::Q8 => {
            assert!(values.len().is_multiple_of(QK), "encode_cache: Q8 needs whole blocks");
            assert_eq!(out.len(), format.bytes_for(values.len()), "encode_cache: length mismatch");
            let mut block = [BlockQ8::default()];
            for (chunk, o) in values.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_BLOCK_BYTES)) {
                quantize_q8_into(chunk, &mut block).expect("a whole block");
                o[..2].copy_from_slice(&block[0].d.to_le_bytes());
                for (b, &q) in o[2..].iter_mut().zip(&block[0].qs) {
                    *b = q as u8;
                }
            }
        }
    }
}

/// Reads `out.len()` values from `bytes` (in `format`) into `out`.
pub fn decode_cache(format: CacheFormat, bytes: &[u8], out: &mut [f32]) {
    match format {
        CacheFormat::Float(f) => crate::decode_floats(f, bytes, out),
        CacheFormat::Q8 => {
            assert!(out.len().is_multiple_of(QK), "decode_cache: Q8 needs whole blocks");
            assert_eq!(bytes.len(), format.bytes_for(out.len()), "decode_cache: length mismatch");
            for (i, o) in out.iter_mut().enumerate() {
                *o = format.get(bytes, i);
            }
        }
    }
}

/// `out[g] = softmax(q[g] · K^T) V` for the `q.len() / hd` query heads of one KV head, over
/// `span` cached positions.
///
/// * `q`: the query heads' rows, `hd` values each, already multiplied by the softmax scale;
/// * `keys`, `values`: cache bytes in `format` whose row `j` (this head's `hd` values) starts at
///   element `j * stride` (callers slice the head's offset in);
/// * `scores`: scratch of at least `q.len() / hd * span` values;
/// * `out`: `q.len()` values, overwritten.
#[allow(clippy::too_many_arguments)]
pub fn attend_cached(
    format: CacheFormat,
    q: &[f32],
    hd: usize,
    keys: &[u8],
    values: &[u8],
    stride: usize,
    span: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_cached_with(Isa::detect(), format, q, hd, keys, values, stride, span, scores, out)
}

/// [`attend_cached`] on a chosen instruction set (tests compare the twins).
#[allow(clippy::too_many_arguments)]
pub fn attend_cached_with(
    isa: Isa,
    format: CacheFormat,
    q: &[f32],
    hd: usize,
    keys: &[u8],
    values: &[u8],
    stride: usize,
    span: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    assert!(hd > 0 && q.len().is_multiple_of(hd) && out.len() == q.len(), "attend_cached: query shapes");
    let group = q.len() / hd;
    assert!(span > 0 && stride >= hd && scores.len() >= group * span, "attend_cached: cache shapes");
    assert!(format.fits(hd) && format.fits(stride), "attend_cached: Q8 rows and heads must be whole blocks");
    let needed = format.bytes_for((span - 1) * stride + hd);
    assert!(keys.len() >= needed && values.len() >= needed, "attend_cached: cache too short");
    let scores = &mut scores[..group * span];
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() (or the caller's choice, which tests only make after detect()) found
        // AVX2+FMA+F16C; the asserts above bound every row read.
        Isa::Avx2 => unsafe {
            use crate::avx2::attention::{self as simd, Float, Q8Rows};
            use crate::avx2::{Bf16, F16, F32};
            match format {
                CacheFormat::Float(FloatFormat::F32) => {
                    simd::attend_cached::<Float<F32>>(q, hd, keys, values, stride, span, scores, out)
                }
                CacheFormat::Float(FloatFormat::Bf16) => {
                    simd::attend_cached::<Float<Bf16>>(q, hd, keys, values, stride, span, scores, out)
                }
                CacheFormat::Float(FloatFormat::F16) => {
                    simd::attend_cached::<Float<F16>>(q, hd, keys, values, stride, span, scores, out)
                }
                CacheFormat::Q8 => {
                    simd::attend_cached::<Q8Rows>(q, hd, keys, values, stride, span, scores, out)
                }
            }
        },
        _ => scalar_attend_cached(format, q, hd, keys, values, stride, span, scores, out),
    }
}

/// The specification: scores row by row, a softmax per query head, then the weighted sum.
#[allow(clippy::too_many_arguments)]
fn scalar_attend_cached(
    format: CacheFormat,
    q: &[f32],
    hd: usize,
    keys: &[u8],
    values: &[u8],
    stride: usize,
    span: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    for (qh, s) in q.chunks_exact(hd).zip(scores.chunks_exact_mut(span)) {
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = qh.iter().enumerate().map(|(d, &x)| x * format.get(keys, j * stride + d)).sum();
        }
        softmax(s);
    }
    for (oh, s) in out.chunks_exact_mut(hd).zip(scores.chunks_exact(span)) {
        oh.fill(0.0);
        for (j, &p) in s.iter().enumerate() {
            for (d, o) in oh.iter_mut().enumerate() {
                *o += p * format.get(values, j * stride + d);
            }
        }
    }
}
