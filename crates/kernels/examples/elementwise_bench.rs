//! Scalar reference against the dispatched (SIMD) element-wise kernels, one thread, data in L2.
//! `cargo run --release -p qwenrt-kernels --example elementwise_bench`
//!
//! Each line shows the best of several timed runs per call and the speed-up; `QWENRT_ISA=scalar`
//! makes both columns the reference.

use std::hint::black_box;
use std::time::Instant;

use qwenrt_kernels::{scalar, Isa};

/// Values in [-4, 4), so that exp and SiLU see both tails.
fn data(n: usize, seed: u64) -> Vec<f32> {
    qwenrt_kernels::testing::data(n, seed).into_iter().map(|v| v * 4.0).collect()
}

/// Best wall-clock seconds of `reps` runs of `f` (after one warm-up run).
fn best_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// Times `run(false)` (the scalar reference) against `run(true)` (the dispatched kernel).
fn report(name: &str, reps: usize, mut run: impl FnMut(bool)) {
    let a = best_secs(reps, || run(false));
    let b = best_secs(reps, || run(true));
    println!("{name:<30} scalar {:>9.1} µs   simd {:>8.1} µs   ×{:.1}", a * 1e6, b * 1e6, a / b);
}

fn main() {
    println!("instruction set: {}", Isa::detect().name());
    let n = 1 << 16;
    let (x, y) = (data(n, 1), data(n, 2));
    let mut buf = x.clone();
    let reps = 30;

    report(&format!("exp_in_place n={n}"), reps, |simd| {
        buf.copy_from_slice(&x);
        let b = black_box(&mut buf[..]);
        if simd {
            qwenrt_kernels::exp_in_place(b)
        } else {
            scalar::exp_in_place(b)
        }
    });
    report(&format!("silu_mul n={n}"), reps, |simd| {
        buf.copy_from_slice(&x);
        let b = black_box(&mut buf[..]);
        if simd {
            qwenrt_kernels::silu_mul(b, &y)
        } else {
            scalar::silu_mul(b, &y)
        }
    });
    report(&format!("softmax n={n}"), reps, |simd| {
        buf.copy_from_slice(&x);
        let b = black_box(&mut buf[..]);
        if simd {
            qwenrt_kernels::softmax(b)
        } else {
            scalar::softmax(b)
        }
    });
    let w = data(128, 3);
    report(&format!("rms_norm_gated 128 × {}", n / 128), reps, |simd| {
        buf.copy_from_slice(&x);
        for (row, gate) in buf.chunks_exact_mut(128).zip(y.chunks_exact(128)) {
            if simd {
                qwenrt_kernels::rms_norm_gated(black_box(row), gate, &w, 1e-6)
            } else {
                scalar::rms_norm_gated(black_box(row), gate, &w, 1e-6)
            }
        }
    });

    // DeltaNet shapes of a small model: conv over 6144 channels, a 128 × 128 state per head.
    let (channels, kernel, t) = (6144, 4, 8);
    let (u, wt) = (data(t * channels, 4), data(kernel * channels, 5));
    let mut state = data((kernel - 1) * channels, 6);
    let mut out = vec![0.0; t * channels];
    report(&format!("causal_conv t={t} c={channels}"), reps, |simd| {
        let s = black_box(&mut state[..]);
        if simd {
            qwenrt_kernels::causal_conv(&u, t, channels, &wt, kernel, s, &mut out)
        } else {
            scalar::causal_conv(&u, t, channels, &wt, kernel, s, &mut out)
        }
    });
    let (q, k, v) = (data(128, 7), data(128, 8), data(128, 9));
    let mut s = vec![0.0; 128 * 128];
    let mut o = vec![0.0; 128];
    report("delta_rule_step 128 × 128", reps * 10, |simd| {
        let s = black_box(&mut s[..]);
        if simd {
            qwenrt_kernels::delta_rule_step(&q, &k, &v, -0.01, 0.01, s, &mut o)
        } else {
            scalar::delta_rule_step(&q, &k, &v, -0.01, 0.01, s, &mut o)
        }
    });
}
