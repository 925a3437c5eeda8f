//! AVX2 + F16C twins of [`crate::convert`].
//!
//! # Safety
//! F16C (and AVX2 for the loads) must be available; callers check that the lengths match.

use std::arch::x86_64::*;

use super::Lanes;

/// f32 → f16 (round to nearest even, as `half::f16::from_f32`), 8 values per instruction.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn encode_f16(values: &[f32], out: &mut [u8]) {
    let whole = values.len() / 8 * 8;
    for i in (0..whole).step_by(8) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(values.as_ptr().add(i)));
        _mm_storeu_si128(out.as_mut_ptr().add(2 * i) as *mut __m128i, h);
    }
    for i in whole..values.len() {
        out[2 * i..2 * i + 2].copy_from_slice(&half::f16::from_f32(values[i]).to_le_bytes());
    }
}

/// Stored values → f32.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn decode<L: Lanes>(bytes: &[u8], out: &mut [f32]) {
    let whole = out.len() / 8 * 8;
    for i in (0..whole).step_by(8) {
        _mm256_storeu_ps(out.as_mut_ptr().add(i), L::load8(bytes.as_ptr().add(i * L::BYTES)));
    }
    for (i, o) in out.iter_mut().enumerate().skip(whole) {
        *o = L::scalar(bytes.as_ptr().add(i * L::BYTES));
    }
}
