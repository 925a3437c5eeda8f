//! Conversions between f32 and the stored float formats, for caches kept in half precision.

use crate::scalar::FloatFormat;
use crate::Isa;

/// Writes `values` to `out` in `format` (little-endian; half formats round to nearest even).
pub fn encode_floats(format: FloatFormat, values: &[f32], out: &mut [u8]) {
    assert_eq!(out.len(), values.len() * format.bytes(), "encode_floats: length mismatch");
    match (Isa::detect(), format) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() found F16C; the lengths match.
        (Isa::Avx2, FloatFormat::F16) => unsafe { crate::avx2::convert::encode_f16(values, out) },
        _ => scalar_encode(format, values, out),
    }
}

/// Reads `bytes` (values in `format`) into `out`.
pub fn decode_floats(format: FloatFormat, bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), out.len() * format.bytes(), "decode_floats: length mismatch");
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() found AVX2 and F16C; the lengths match.
        Isa::Avx2 => unsafe {
            use crate::avx2::{Bf16, F16, F32};
            match format {
                FloatFormat::F32 => crate::avx2::convert::decode::<F32>(bytes, out),
                FloatFormat::Bf16 => crate::avx2::convert::decode::<Bf16>(bytes, out),
                FloatFormat::F16 => crate::avx2::convert::decode::<F16>(bytes, out),
            }
        },
        _ => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = format.get(bytes, i);
            }
        }
    }
}

/// The specification of [`encode_floats`].
pub fn scalar_encode(format: FloatFormat, values: &[f32], out: &mut [u8]) {
    match format {
        FloatFormat::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(values) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        FloatFormat::Bf16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes());
            }
        }
        FloatFormat::F16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
    }
}
