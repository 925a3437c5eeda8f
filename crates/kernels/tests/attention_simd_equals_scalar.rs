//! Decode attention over a cache: the SIMD twin equals the scalar specification for every cache
//! format, on head sizes with tails, groups that do not fill the 4-head passes, and spans that
//! cross the row blocks of the weighted sum.

use qwenrt_kernels::attention::{attend_cached_with, decode_cache, encode_cache, CacheFormat};
use qwenrt_kernels::testing::data;
use qwenrt_kernels::{FloatFormat, Isa};

fn encode(w: &[f32], format: CacheFormat) -> Vec<u8> {
    let mut out = vec![0; format.bytes_for(w.len())];
    encode_cache(format, w, &mut out);
    out
}

const FORMATS: [CacheFormat; 4] = [
    CacheFormat::Float(FloatFormat::F32),
    CacheFormat::Float(FloatFormat::Bf16),
    CacheFormat::Float(FloatFormat::F16),
    CacheFormat::Q8,
];

#[test]
fn attend_cached_simd_equals_scalar() {
    if Isa::detect() == Isa::Scalar {
        return eprintln!("no SIMD on this CPU: nothing to compare");
    }
    // (query heads, head size, span, row stride in values): tails after whole vectors, groups
    // that do not fill the 4-head passes, spans across the value row blocks; Q8 takes the shapes
    // of whole blocks.
    let shapes = [
        (1, 8, 1, 8),
        (4, 256, 300, 512),
        (3, 33, 129, 40),
        (5, 24, 257, 24),
        (8, 64, 17, 128),
        (2, 7, 5, 9),
    ];
    for format in FORMATS {
        for &(group, hd, span, stride) in &shapes {
            if !format.fits(hd) || !format.fits(stride) {
                continue;
            }
            let q: Vec<f32> = data(group * hd, (group * 7 + hd) as u64).iter().map(|v| v * 3.0).collect();
            // The cache of one head inside rows of a wider cache: start one head-size in.
            let (keys, values) = (
                encode(&data((span + 1) * stride, span as u64), format),
                encode(&data((span + 1) * stride, span as u64 + 99), format),
            );
            let at = format.bytes_for(stride - hd);
            let (mut got, mut want) = (vec![f32::NAN; group * hd], vec![f32::NAN; group * hd]);
            let mut scores = vec![0.0; group * span];
            attend_cached_with(
                Isa::detect(),
                format,
                &q,
                hd,
                &keys[at..],
                &values[at..],
                stride,
                span,
                &mut scores,
                &mut got,
            );
            attend_cached_with(
                Isa::Scalar,
                format,
                &q,
                hd,
                &keys[at..],
                &values[at..],
                stride,
                span,
                &mut scores,
                &mut want,
            );
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{format:?} group={group} hd={hd} span={span}: out[{i}] = {g}, want {w}"
                );
            }
        }
    }
}

/// The Q8 cache round-trips within half a level of each block, plus what the f16 rounding of the
/// block's scale moves its largest level (at most 127 · 2⁻¹¹ of a level).
#[test]
fn q8_cache_round_trip() {
    let values: Vec<f32> =
        data(32 * 9, 5).iter().enumerate().map(|(i, v)| v * (1.0 + i as f32 / 40.0)).collect();
    let bytes = encode(&values, CacheFormat::Q8);
    assert_eq!(bytes.len(), 9 * 34);
    let mut back = vec![0.0; values.len()];
    decode_cache(CacheFormat::Q8, &bytes, &mut back);
    for (block, (v, b)) in values.chunks(32).zip(back.chunks(32)).enumerate() {
        let step = v.iter().fold(0.0f32, |m, x| m.max(x.abs())) / 127.0;
        for (x, y) in v.iter().zip(b) {
            assert!((x - y).abs() <= (0.5 + 127.0 / 2048.0) * step, "block {block}: {x} read back as {y}");
        }
    }
}

#[test]
fn attention_to_one_key_returns_its_value() {
    let (hd, stride) = (16, 16);
    let q = data(2 * hd, 1);
    let values = data(hd, 2);
    let format = CacheFormat::Float(FloatFormat::F32);
    let bytes = encode(&values, format);
    let keys = encode(&data(hd, 3), format);
    let mut out = vec![0.0; 2 * hd];
    let mut scores = vec![0.0; 2];
    attend_cached_with(Isa::detect(), format, &q, hd, &keys, &bytes, stride, 1, &mut scores, &mut out);
    assert_eq!(&out[..hd], &values[..]);
    assert_eq!(&out[hd..], &values[..]);
}

/// The F16C conversions equal `half`'s round-to-nearest-even, tails included, and decoding
/// gives back exactly the rounded values.
#[test]
fn half_precision_conversions_equal_the_scalar_spec() {
    for n in [1, 7, 8, 9, 31, 1000] {
        let mut values: Vec<f32> = data(n, n as u64).iter().map(|v| v * 70000.0).collect();
        // Exact halfway cases between two f16 values, tiny and huge magnitudes.
        values[0] = 1.0 + 1.0 / 2048.0;
        if n > 3 {
            values[1] = 1e-8;
            values[2] = -1e6;
            values[3] = f32::NAN;
        }
        let mut simd = vec![0u8; 2 * n];
        let mut spec = vec![0u8; 2 * n];
        qwenrt_kernels::encode_floats(FloatFormat::F16, &values, &mut simd);
        qwenrt_kernels::convert::scalar_encode(FloatFormat::F16, &values, &mut spec);
        for (i, (a, b)) in simd.chunks(2).zip(spec.chunks(2)).enumerate() {
            let (a, b) = (half::f16::from_le_bytes([a[0], a[1]]), half::f16::from_le_bytes([b[0], b[1]]));
            assert!(a == b || (a.is_nan() && b.is_nan()), "n={n} value {i} ({}): {a} vs {b}", values[i]);
        }
        let mut back = vec![0.0; n];
        qwenrt_kernels::decode_floats(FloatFormat::F16, &simd, &mut back);
        for (i, (x, b)) in back.iter().zip(simd.chunks(2)).enumerate() {
            let want = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            assert!(x.to_bits() == want.to_bits() || (x.is_nan() && want.is_nan()), "n={n} value {i}");
        }
    }
}
