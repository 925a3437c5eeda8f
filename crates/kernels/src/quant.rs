//! Quantized weight blocks: plain, checked data.
//!
//! Both formats cover 32 consecutive weights of one matrix row with one f16 scale, the layout of
//! llama.cpp's Q8_0 and Q4_0 (so bytes per weight are the same and comparisons are fair):
//!
//! * [`BlockQ8`]: `w = d · q`, `q ∈ [-127, 127]` — 34 bytes per 32 weights (8.5 bits).
//! * [`BlockQ4`]: `w = d · (n − 8)`, `n ∈ [0, 15]` — 18 bytes per 32 weights (4.5 bits). Byte `j` of
//!   `qs` holds weight `j` in its low nibble and weight `j + 16` in its high nibble.
//!
//! Activations are quantized on the fly to [`BlockQ8Act`] (f32 scale) so that products become
//! integer dot products.

use half::f16;

/// Weights per block.
pub const QK: usize = 32;

/// Bytes of one Q8_0 block (an f16 scale, then 32 signed levels), as the Q8 KV cache
/// ([`crate::attention::CacheFormat::Q8`]) stores it.
pub const Q8_BLOCK_BYTES: usize = 2 + QK;

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f16,
    pub qs: [i8; QK],
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ4 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// An activation block: `x ≈ d · q`.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[repr(C)]
pub struct BlockQ8Act {
    pub d: f32,
    pub qs: [i8; QK],
}

impl Default for BlockQ8 {
    fn default() -> Self {
        BlockQ8 { d: f16::ZERO, qs: [0; QK] }
    }
}

impl Default for BlockQ4 {
    fn default() -> Self {
        BlockQ4 { d: f16::ZERO, qs: [0; QK / 2] }
    }
}

/// Why a vector cannot be cut into blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotBlockAligned {
    pub len: usize,
}

impl std::fmt::Display for NotBlockAligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "length {} is not a multiple of the {QK}-value quantization block", self.len)
    }
}

impl std::error::Error for NotBlockAligned {}

fn check(len: usize) -> Result<(), NotBlockAligned> {
    if len.is_multiple_of(QK) {
        Ok(())
    } else {
        Err(NotBlockAligned { len })
    }
}

/// Round half away from zero, as C's `roundf` (what llama.cpp uses). Written with a truncating
/// conversion because `f32::round` is a library call on baseline x86-64, and quantizing a model
/// at load time rounds billions of values; the step is computed without branches, which on
/// random fractions would mispredict half the time. Exact for |x| < 2^31.
#[inline]
pub fn round(x: f32) -> f32 {
    let t = (x as i32) as f32;
    let frac = x - t;
    t + ((frac >= 0.5) as i32 - (frac <= -0.5) as i32) as f32
}

pub fn quantize_q8(x: &[f32]) -> Result<Vec<BlockQ8>, NotBlockAligned> {
    let mut out = vec![BlockQ8::default(); x.len() / QK];
    quantize_q8_into(x, &mut out)?;
    Ok(out)
}

/// [`quantize_q8`] into an existing slice of `x.len() / 32` blocks.
pub fn quantize_q8_into(x: &[f32], out: &mut [BlockQ8]) -> Result<(), NotBlockAligned> {
    check(x.len())?;
    assert_eq!(out.len(), x.len() / QK, "quantize_q8_into: wrong number of blocks");
    for (o, c) in out.iter_mut().zip(x.chunks_exact(QK)) {
        *o = {
            let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            let mut qs = [0i8; QK];
            for (q, &v) in qs.iter_mut().zip(c) {
                *q = round(v * inv) as i8;
            }
            BlockQ8 { d: f16::from_f32(d), qs }
        };
    }
    Ok(())
}

pub fn dequantize_q8(blocks: &[BlockQ8], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (v, &q) in o.iter_mut().zip(&b.qs) {
            *v = d * q as f32;
        }
    }
}

/// Quantizes to 4 bits. Like Q4_0 the scale first maps the signed value of largest magnitude to
/// −8; then one least-squares step refits the scale to the chosen levels (`d = Σ v·q / Σ q²`) and
/// the result is kept if its squared error is lower, so the error is never worse than Q4_0's.
pub fn quantize_q4(x: &[f32]) -> Result<Vec<BlockQ4>, NotBlockAligned> {
    let mut out = vec![BlockQ4::default(); x.len() / QK];
    quantize_q4_into(x, &mut out)?;
    Ok(out)
}

/// [`quantize_q4`] into an existing slice of `x.len() / 32` blocks.
pub fn quantize_q4_into(x: &[f32], out: &mut [BlockQ4]) -> Result<(), NotBlockAligned> {
    check(x.len())?;
    assert_eq!(out.len(), x.len() / QK, "quantize_q4_into: wrong number of blocks");
    for (o, c) in out.iter_mut().zip(x.chunks_exact(QK)) {
        *o = quantize_q4_block(c);
    }
    Ok(())
}

fn quantize_q4_block(c: &[f32]) -> BlockQ4 {
    let mut max = 0.0f32;
    for &v in c {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    if max == 0.0 {
        return BlockQ4::default();
    }
    // Levels for scale `d` and the squared error of the stored (f16) scale.
    let encode = |d: f32| -> ([u8; QK], f32, f32) {
        let d = f16::from_f32(d).to_f32();
        let inv = 1.0 / d;
        let mut n = [0u8; QK];
        let (mut err, mut vq, mut qq) = (0.0f32, 0.0f32, 0.0f32);
        for (ni, &v) in n.iter_mut().zip(c) {
            let q = (round(v * inv) + 8.0).clamp(0.0, 15.0);
            *ni = q as u8;
            let level = q - 8.0;
            let e = v - d * level;
            err += e * e;
            vq += v * level;
            qq += level * level;
        }
        (n, err, if qq > 0.0 { vq / qq } else { d })
    };
    let d0 = max / -8.0;
    let (mut best_n, first_err, refit) = encode(d0);
    let mut best_d = f16::from_f32(d0).to_f32();
    if refit.is_finite() && refit != 0.0 {
        let (n, err, _) = encode(refit);
        if err < first_err {
            (best_n, best_d) = (n, f16::from_f32(refit).to_f32());
        }
    }
    let mut qs = [0u8; QK / 2];
    for j in 0..QK / 2 {
        qs[j] = best_n[j] | (best_n[j + QK / 2] << 4);
    }
    BlockQ4 { d: f16::from_f32(best_d), qs }
}

pub fn dequantize_q4(blocks: &[BlockQ4], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            o[j] = d * ((b.qs[j] & 0x0f) as f32 - 8.0);
            o[j + QK / 2] = d * ((b.qs[j] >> 4) as f32 - 8.0);
        }
    }
}

/// Quantizes one activation row (length a multiple of 32) into `out`.
pub fn quantize_act(x: &[f32], out: &mut [BlockQ8Act]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (c, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        b.d = d;
        for (q, &v) in b.qs.iter_mut().zip(c) {
            *q = round(v * inv) as i8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        let mut s = 12345u32;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                let u = (s >> 8) as f32 / (1 << 24) as f32 - 0.5;
                // Mostly small values with an occasional outlier, like real weights.
                if i % 97 == 0 {
                    u * 8.0
                } else {
                    u
                }
            })
            .collect()
    }

    #[test]
    fn q8_round_trip_error_is_within_half_a_step() {
        let x = data(32 * 40);
        let q = quantize_q8(&x).unwrap();
        let mut y = vec![0.0; x.len()];
        dequantize_q8(&q, &mut y);
        for (c, (xb, yb)) in q.iter().zip(x.chunks(QK).zip(y.chunks(QK))) {
            let step = c.d.to_f32();
            for (a, b) in xb.iter().zip(yb) {
                // Half a step from rounding, plus the f16 rounding of the scale (≤ 2^-11 relative).
                assert!((a - b).abs() <= 0.5 * step + a.abs() * 1e-3 + 1e-7, "{a} vs {b} (step {step})");
            }
        }
    }

    #[test]
    fn q4_round_trip_error_is_bounded_and_no_worse_than_plain_q4_0() {
        let x = data(32 * 64);
        let q = quantize_q4(&x).unwrap();
        let mut y = vec![0.0; x.len()];
        dequantize_q4(&q, &mut y);
        let mut err = 0.0f64;
        let mut err_q4_0 = 0.0f64;
        for (xb, yb) in x.chunks(QK).zip(y.chunks(QK)) {
            let max = xb.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d0 = f16::from_f32(max / -8.0).to_f32();
            let amax = max.abs();
            for (&a, &b) in xb.iter().zip(yb) {
                assert!((a - b).abs() <= amax / 8.0 + 1e-6, "{a} vs {b}");
                err += ((a - b) as f64).powi(2);
                let q0 = ((a / d0).round() + 8.0).clamp(0.0, 15.0);
                err_q4_0 += ((a - d0 * (q0 - 8.0)) as f64).powi(2);
            }
        }
        assert!(err <= err_q4_0, "{err} > {err_q4_0}");
    }

    #[test]
    fn nibble_layout_matches_q4_0() {
        let mut x = vec![0.0f32; QK];
        x[0] = -8.0; // the extreme: nibble 0
        x[16] = 7.0; // high nibble of byte 0
        let q = quantize_q4(&x).unwrap();
        assert_eq!(q[0].d.to_f32(), 1.0);
        assert_eq!(q[0].qs[0], 0x0f << 4);
    }

    #[test]
    fn round_is_c_roundf() {
        for x in [0.0f32, 0.49999997, 0.5, 1.5, 2.5, -0.5, -1.5, -2.4999998, 126.5, -127.0, 3.7, -3.7] {
            assert_eq!(round(x), x.round(), "{x}");
        }
    }

    #[test]
    fn unaligned_lengths_are_rejected() {
        assert_eq!(quantize_q8(&[0.0; 33]).unwrap_err(), NotBlockAligned { len: 33 });
        assert!(quantize_q4(&[0.0; 31]).is_err());
        assert_eq!(std::mem::size_of::<BlockQ8>(), 34);
        assert_eq!(std::mem::size_of::<BlockQ4>(), 18);
    }
}
