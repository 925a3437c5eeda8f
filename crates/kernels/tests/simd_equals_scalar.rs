//! Every SIMD kernel equals its scalar twin (to rounding) on odd shapes and tails.

use qwenrt_kernels::quant::{quantize_q4, quantize_q8, BlockQ8Act, QK};
use qwenrt_kernels::testing::data;
use qwenrt_kernels::{matmul_f32_local, matmul_with, quantize_act, FloatFormat, Isa, Weights};

fn simd() -> Option<Isa> {
    let isa = Isa::detect();
    (isa != Isa::Scalar).then_some(isa)
}

fn assert_close(a: &[f32], b: &[f32], k: usize, what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        // Summation order differs: allow a few ulps of the magnitude of the sum of |terms|.
        let tol = 1e-5 * (k as f32).sqrt().max(1.0) * (1.0 + x.abs());
        assert!((x - y).abs() <= tol, "{what}: element {i}: simd {x} vs scalar {y}");
    }
}

fn encode(w: &[f32], format: FloatFormat) -> Vec<u8> {
    match format {
        FloatFormat::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        FloatFormat::Bf16 => w.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        FloatFormat::F16 => w.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
    }
}

/// Shapes for the row kernels (few tokens) and the blocked kernels (16 tokens or more): tokens
/// not a multiple of the micro-tile (6 float, 4 quantized), rows not a multiple of the 16-row
/// strip nor of the 128-row packed block, `k` with a tail after the last whole vector and
/// spanning several packed `k` ranges (256 floats, 8 quantization blocks).
const FLOAT_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 7, 5),
    (2, 8, 3),
    (3, 17, 13),
    (4, 33, 9),
    (5, 100, 7),
    (7, 257, 70),
    (9, 1024, 33),
    (15, 64, 40),
    (16, 0, 3),
    (16, 1, 1),
    (16, 9, 17),
    (17, 300, 129),
    (23, 513, 31),
    (37, 256, 16),
    (64, 64, 130),
    (101, 37, 300),
];

const QUANT_SHAPES: &[(usize, usize, usize)] = &[
    (1, 32, 1),
    (1, 64, 5),
    // Decode: whole groups of 8 blocks, a tail of blocks, an odd row.
    (1, 256, 6),
    (1, 288, 7),
    (1, 544, 31),
    (1, 1024, 37),
    (2, 352, 9),
    (3, 1056, 11),
    (1, 8224, 3),
    (3, 96, 13),
    (4, 320, 9),
    (6, 1024, 37),
    (9, 128, 70),
    (15, 64, 40),
    (16, 0, 3),
    (16, 32, 1),
    (17, 288, 129),
    (18, 544, 31),
    (23, 256, 16),
    (64, 96, 130),
    (101, 320, 300),
];

#[test]
fn float_matmul_simd_equals_scalar() {
    let Some(isa) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    for format in [FloatFormat::F32, FloatFormat::Bf16, FloatFormat::F16] {
        for &(t, k, n) in FLOAT_SHAPES {
            let x = data(t * k, (t * 31 + k) as u64);
            let w = encode(&data(n * k, (n * 17 + k) as u64), format);
            // Misaligned storage, as a memory-mapped tensor may be.
            let mut shifted = vec![0u8; w.len() + 1];
            shifted[1..].copy_from_slice(&w);
            let w = &shifted[1..];
            let mut got = vec![f32::NAN; t * n];
            let mut want = vec![0.0; t * n];
            matmul_with(isa, &x, Weights::Float(w, format), &mut got, t, k, n);
            matmul_with(Isa::Scalar, &x, Weights::Float(w, format), &mut want, t, k, n);
            assert_close(&got, &want, k, &format!("{format:?} t={t} k={k} n={n}"));
        }
    }
}

#[test]
fn local_f32_matmul_equals_scalar() {
    for &(t, k, n) in FLOAT_SHAPES {
        let x = data(t * k, (t * 5 + k) as u64);
        let w = data(n * k, (n * 11 + k) as u64);
        let mut got = vec![f32::NAN; t * n];
        let mut want = vec![0.0; t * n];
        matmul_f32_local(&x, &w, &mut got, t, k, n);
        qwenrt_kernels::matmul_f32(&x, &w, &mut want, t, k, n);
        assert_close(&got, &want, k, &format!("local t={t} k={k} n={n}"));
    }
}

#[test]
fn blocked_float_matmul_handles_subnormals_and_nan() {
    let Some(isa) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    let (t, k, n) = (20, 70, 24);
    let mut x = data(t * k, 5);
    let w = data(n * k, 6);
    // Row 0: subnormal activations (the blocked kernel counts them as zero; the products they
    // would add are below 1e-38). Row 1: tiny normals whose products underflow. Row 2: a NaN.
    for v in &mut x[..k] {
        *v *= 1e-39;
    }
    for v in &mut x[k..2 * k] {
        *v *= 1e-30;
    }
    x[2 * k + 3] = f32::NAN;
    let bytes = encode(&w, FloatFormat::F32);
    let mut got = vec![0.0; t * n];
    let mut want = vec![0.0; t * n];
    matmul_with(isa, &x, Weights::Float(&bytes, FloatFormat::F32), &mut got, t, k, n);
    matmul_with(Isa::Scalar, &x, Weights::Float(&bytes, FloatFormat::F32), &mut want, t, k, n);
    assert!(got[..2 * n].iter().all(|v| v.abs() < 1e-28), "tiny rows stay tiny");
    assert!(got[2 * n..3 * n].iter().all(|v| v.is_nan()), "NaN propagates");
    assert_close(&got[3 * n..], &want[3 * n..], k, "rows after the special ones");
    // The product ran on this thread (it is too small to split) and left its float mode as it was.
    let half_min = std::hint::black_box(f32::MIN_POSITIVE) / 2.0;
    assert!(half_min > 0.0, "subnormal results are flushed after the product");
}

#[test]
fn quantized_matmul_simd_equals_scalar() {
    let Some(isa) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    for &(t, k, n) in QUANT_SHAPES {
        let mut x = data(t * k, (t * 7 + k) as u64);
        // One activation block of exact extremes (±127 after quantization) in every row (`k` is
        // 0 or a multiple of the block).
        for row in x.chunks_exact_mut(k.max(QK)) {
            for (j, v) in row[..QK].iter_mut().enumerate() {
                *v = if j % 3 == 0 { -1.0 } else { 1.0 };
            }
        }
        let mut wf = data(n * k, (n * 3 + k) as u64);
        // And weight blocks at the extremes of both formats (Q8 ±127, Q4 nibbles 0 and 15).
        for row in wf.chunks_exact_mut(k.max(QK)) {
            for (j, v) in row[..QK].iter_mut().enumerate() {
                *v = if j % 2 == 0 { -1.0 } else { 1.0 };
            }
        }
        let q8 = quantize_q8(&wf).unwrap();
        let q4 = quantize_q4(&wf).unwrap();
        for (name, w) in [("q8", Weights::Q8(&q8)), ("q4", Weights::Q4(&q4))] {
            let mut got = vec![f32::NAN; t * n];
            let mut want = vec![0.0; t * n];
            matmul_with(isa, &x, w, &mut got, t, k, n);
            matmul_with(Isa::Scalar, &x, w, &mut want, t, k, n);
            assert_close(&got, &want, k, &format!("{name} t={t} k={k} n={n}"));
        }
    }
}

#[test]
fn quantized_matmul_at_the_integer_limits_equals_scalar() {
    let Some(isa) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    // Weight blocks whose levels are all at the top (Q4: one -8 sets the scale, the other 31
    // values sit at +7, nibble 15; Q8: ±127) against activations all at ±127: the largest
    // partial sums the kernels' 16-bit steps can meet.
    let (k, n) = (64, 19);
    let mut wf = vec![0.875f32; n * k];
    for block in wf.chunks_exact_mut(QK) {
        block[0] = -1.0;
    }
    for t in [4, 8, 21] {
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; t * k];
            let q8 = quantize_q8(&wf).unwrap();
            let q4 = quantize_q4(&wf).unwrap();
            for (name, w) in [("q8", Weights::Q8(&q8)), ("q4", Weights::Q4(&q4))] {
                let mut got = vec![f32::NAN; t * n];
                let mut want = vec![0.0; t * n];
                matmul_with(isa, &x, w, &mut got, t, k, n);
                matmul_with(Isa::Scalar, &x, w, &mut want, t, k, n);
                assert_close(&got, &want, k, &format!("{name} t={t} sign={sign}"));
            }
        }
    }
}

#[test]
fn quantized_products_approximate_the_float_product() {
    let (t, k, n) = (3, 512, 40);
    let x = data(t * k, 1);
    let wf = data(n * k, 2);
    let mut exact = vec![0.0; t * n];
    matmul_with(
        Isa::Scalar,
        &x,
        Weights::Float(&encode(&wf, FloatFormat::F32), FloatFormat::F32),
        &mut exact,
        t,
        k,
        n,
    );
    let q8 = quantize_q8(&wf).unwrap();
    let q4 = quantize_q4(&wf).unwrap();
    for (name, w, bound) in [("q8", Weights::Q8(&q8), 0.01), ("q4", Weights::Q4(&q4), 0.15)] {
        let mut got = vec![0.0; t * n];
        matmul_with(Isa::detect(), &x, w, &mut got, t, k, n);
        let num: f32 = got.iter().zip(&exact).map(|(a, b)| (a - b).powi(2)).sum();
        let den: f32 = exact.iter().map(|b| b * b).sum();
        let rel = (num / den).sqrt();
        assert!(rel < bound, "{name}: relative error {rel} >= {bound}");
    }
}

#[test]
fn activation_quantization_simd_is_bit_exact() {
    let Some(isa) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    let mut x = data(32 * 50, 9);
    // Exact halves after scaling: amax 127 makes the scale 1, so 2.5 and -0.5 sit on .5 ties.
    x[..8].copy_from_slice(&[127.0, 2.5, -2.5, 0.5, -0.5, 1.5, -126.5, 3.5]);
    x[32..64].fill(0.0);
    let mut a = vec![BlockQ8Act::default(); x.len() / QK];
    let mut b = a.clone();
    quantize_act(isa, &x, &mut a);
    quantize_act(Isa::Scalar, &x, &mut b);
    assert_eq!(a, b);
    assert_eq!(&b[0].qs[..8], &[127, 3, -3, 1, -1, 2, -127, 4], "round half away from zero");
}

#[test]
fn dot_and_axpy_simd_equal_scalar() {
    for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 100, 257] {
        let a = data(n, n as u64 + 1);
        let b = data(n, n as u64 + 100);
        let (d, s) = (qwenrt_kernels::dot(&a, &b), qwenrt_kernels::scalar::dot(&a, &b));
        assert!((d - s).abs() <= 1e-5 * (1.0 + n as f32).sqrt(), "dot n={n}: {d} vs {s}");
        let mut x = a.clone();
        let mut y = a.clone();
        qwenrt_kernels::axpy(&mut x, 0.37, &b);
        qwenrt_kernels::scalar::axpy(&mut y, 0.37, &b);
        assert_close(&x, &y, 1, &format!("axpy n={n}"));
    }
}
