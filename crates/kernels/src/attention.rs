//! Attention of one new position against a KV cache (decode), for one KV head and the query
//! heads that share it.
//!
//! Decode attention at long context is bound by reading the cache, like the matrix products
//! are by reading weights: at 8k tokens the six attention layers of Qwen3.5-0.8B read 192 MiB
//! of f32 keys and values per token, a quarter of what its int8 weights take. The kernel reads
//! every cached row once for the whole group of query heads, and the cache may be stored in
//! half precision, which halves those bytes.

use crate::scalar::{softmax, FloatFormat};
use crate::Isa;

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
    format: FloatFormat,
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
    format: FloatFormat,
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
    let needed = ((span - 1) * stride + hd) * format.bytes();
    assert!(keys.len() >= needed && values.len() >= needed, "attend_cached: cache too short");
    let scores = &mut scores[..group * span];
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() (or the caller's choice, which tests only make after detect()) found
        // AVX2+FMA+F16C; the asserts above bound every row read.
        Isa::Avx2 => unsafe {
            use crate::avx2::{attention as simd, Bf16, F16, F32};
            match format {
                FloatFormat::F32 => {
                    simd::attend_cached::<F32>(q, hd, keys, values, stride, span, scores, out)
                }
                FloatFormat::Bf16 => {
                    simd::attend_cached::<Bf16>(q, hd, keys, values, stride, span, scores, out)
                }
                FloatFormat::F16 => {
                    simd::attend_cached::<F16>(q, hd, keys, values, stride, span, scores, out)
                }
            }
        },
        _ => scalar_attend_cached(format, q, hd, keys, values, stride, span, scores, out),
    }
}

/// The specification: scores row by row, a softmax per query head, then the weighted sum.
#[allow(clippy::too_many_arguments)]
fn scalar_attend_cached(
    format: FloatFormat,
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
