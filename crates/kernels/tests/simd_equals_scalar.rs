//! Every SIMD kernel equals its scalar twin (to rounding) on odd shapes and tails.

use qwenrt_kernels::quant::{quantize_q4, quantize_q8, BlockQ8Act, QK};
use qwenrt_kernels::{matmul_with, quantize_act, FloatFormat, Isa, Weights};

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

#[test]
fn float_matmul_simd_equals_scalar() {
    let Some(isa) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    for format in [FloatFormat::F32, FloatFormat::Bf16, FloatFormat::F16] {
        for &(t, k, n) in &[
            (1, 1, 1),
            (1, 7, 5),
            (2, 8, 3),
            (3, 17, 13),
            (4, 33, 9),
            (5, 100, 7),
            (7, 257, 70),
            (9, 1024, 33),
        ] {
            let x = data(t * k, (t * 31 + k) as u64);
            let w = encode(&data(n * k, (n * 17 + k) as u64), format);
            // Misaligned storage, as a memory-mapped tensor may be.
            let mut shifted = vec![0u8; w.len() + 1];
            shifted[1..].copy_from_slice(&w);
            let w = &shifted[1..];
            let mut got = vec![0.0; t * n];
            let mut want = vec![0.0; t * n];
            matmul_with(isa, &x, Weights::Float(w, format), &mut got, t, k, n);
            matmul_with(Isa::Scalar, &x, Weights::Float(w, format), &mut want, t, k, n);
            assert_close(&got, &want, k, &format!("{format:?} t={t} k={k} n={n}"));
        }
    }
}

#[test]
fn quantized_matmul_simd_equals_scalar() {
    let Some(isa) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    for &(t, k, n) in &[(1, 32, 1), (1, 64, 5), (3, 96, 13), (4, 320, 9), (6, 1024, 37), (9, 128, 70)] {
        let x = data(t * k, (t * 7 + k) as u64);
        let wf = data(n * k, (n * 3 + k) as u64);
        let q8 = quantize_q8(&wf).unwrap();
        let q4 = quantize_q4(&wf).unwrap();
        for (name, w) in [("q8", Weights::Q8(&q8)), ("q4", Weights::Q4(&q4))] {
            let mut got = vec![0.0; t * n];
            let mut want = vec![0.0; t * n];
            matmul_with(isa, &x, w, &mut got, t, k, n);
            matmul_with(Isa::Scalar, &x, w, &mut want, t, k, n);
            assert_close(&got, &want, k, &format!("{name} t={t} k={k} n={n}"));
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
