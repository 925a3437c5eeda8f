//! Decode attention over a cache: the SIMD twin equals the scalar specification for every cache
//! format, on head sizes with tails, groups that do not fill the 4-head passes, and spans that
//! cross the row blocks of the weighted sum.

use qwenrt_kernels::attention::attend_cached_with;
use qwenrt_kernels::{FloatFormat, Isa};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn encode(w: &[f32], format: FloatFormat) -> Vec<u8> {
    match format {
        FloatFormat::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        FloatFormat::Bf16 => w.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        FloatFormat::F16 => w.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
    }
}

#[test]
fn attend_cached_simd_equals_scalar() {
    if Isa::detect() == Isa::Scalar {
        return eprintln!("no SIMD on this CPU: nothing to compare");
    }
    // (query heads, head size, span, row stride in values)
    let shapes = [
        (1, 8, 1, 8),
        (4, 256, 300, 512),
        (3, 33, 129, 40),
        (5, 24, 257, 24),
        (8, 64, 17, 128),
        (2, 7, 5, 9),
    ];
    for format in [FloatFormat::F32, FloatFormat::Bf16, FloatFormat::F16] {
        for &(group, hd, span, stride) in &shapes {
            let q: Vec<f32> = data(group * hd, (group * 7 + hd) as u64).iter().map(|v| v * 3.0).collect();
            // The cache of one head inside rows of a wider cache: start at an offset of 1.
            let keys = encode(&data(span * stride + 1, span as u64), format);
            let values = encode(&data(span * stride + 1, span as u64 + 99), format);
            let at = format.bytes();
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

#[test]
fn attention_to_one_key_returns_its_value() {
    let (hd, stride) = (16, 16);
    let q = data(2 * hd, 1);
    let values = data(hd, 2);
    let bytes = encode(&values, FloatFormat::F32);
    let keys = encode(&data(hd, 3), FloatFormat::F32);
    let mut out = vec![0.0; 2 * hd];
    let mut scores = vec![0.0; 2];
    attend_cached_with(
        Isa::detect(),
        FloatFormat::F32,
        &q,
        hd,
        &keys,
        &bytes,
        stride,
        1,
        &mut scores,
        &mut out,
    );
    assert_eq!(&out[..hd], &values[..]);
    assert_eq!(&out[hd..], &values[..]);
}
