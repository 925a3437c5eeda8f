//! Every SIMD element-wise kernel equals its scalar twin on odd lengths and tails, and the vector
//! exponential stays within 2 ulp of libm over the whole float range.

use qwenrt_kernels::testing::data;
use qwenrt_kernels::{scalar, Isa};

const LENGTHS: &[usize] = &[1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 128, 1000, 1001];

fn scaled(n: usize, seed: u64, range: f32) -> Vec<f32> {
    data(n, seed).into_iter().map(|v| v * range).collect()
}

fn simd() -> Option<Isa> {
    let isa = Isa::detect();
    (isa != Isa::Scalar).then_some(isa)
}

/// Distance in representable floats between two non-negative values (infinity counts as the
/// float after `f32::MAX`).
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

/// Elementwise `|simd - scalar| <= rel * |scalar| + abs`; NaN must meet NaN.
fn assert_rel(simd: &[f32], scalar: &[f32], rel: f32, abs: f32, what: &str) {
    assert_eq!(simd.len(), scalar.len());
    for (i, (&x, &y)) in simd.iter().zip(scalar).enumerate() {
        if y.is_nan() || x.is_nan() {
            assert!(x.is_nan() && y.is_nan(), "{what}: element {i}: simd {x} vs scalar {y}");
            continue;
        }
        if y.is_infinite() || x.is_infinite() {
            assert_eq!(x, y, "{what}: element {i}");
            continue;
        }
        assert!((x - y).abs() <= rel * y.abs() + abs, "{what}: element {i}: simd {x} vs scalar {y}");
    }
}

/// Sums over `k` terms in a different order: a few ulps of the magnitude of the terms.
fn assert_sum_close(simd: &[f32], scalar: &[f32], k: usize, what: &str) {
    for (i, (&x, &y)) in simd.iter().zip(scalar).enumerate() {
        let tol = 2e-6 * (k as f32).sqrt().max(1.0) * (1.0 + y.abs());
        assert!((x - y).abs() <= tol, "{what}: element {i}: simd {x} vs scalar {y}");
    }
}

/// Relative tolerance for results that went through one vector exponential: its 2 ulp, the
/// libm reference's half ulp and a few roundings around them.
const EXP_REL: f32 = 1e-6;
/// Absolute slack below the normal range, where a flush of `e^x` to zero on one side and a tiny
/// subnormal on the other are both right.
const TINY: f32 = f32::MIN_POSITIVE;

fn exp_simd(x: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    qwenrt_kernels::exp_in_place(&mut y);
    y
}

fn check_exp_against_libm(x: &[f32]) {
    let got = exp_simd(x);
    for (&xi, &gi) in x.iter().zip(&got) {
        let want = xi.exp();
        if want.is_nan() {
            assert!(gi.is_nan(), "exp({xi}) = {gi}, libm NaN");
        } else {
            assert!(!gi.is_nan() && ulps(gi, want) <= 2, "exp({xi}) = {gi:e}, libm {want:e}");
        }
    }
}

#[test]
fn exp_matches_libm_at_special_points() {
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-45,
        0.0,
        -0.0,
        1.0,
        -1.0,
        -104.0,
        -103.97,
        -103.9,
        -100.0,
        -88.0,
        -87.4,
        -87.3,
        88.0,
        88.72,
        88.7228,
        88.723,
        89.0,
        133.0,
        -133.0,
        200.0,
        -200.0,
        1e10,
        -1e10,
        1e30,
        -1e30,
    ];
    check_exp_against_libm(&specials);
    let e = |x: f32| exp_simd(&[x])[0];
    assert!(e(f32::NAN).is_nan() && e(-f32::NAN).is_nan());
    assert_eq!([e(f32::INFINITY), e(f32::NEG_INFINITY)], [f32::INFINITY, 0.0]);
    assert_eq!([e(f32::MAX), e(f32::MIN)], [f32::INFINITY, 0.0]);
    assert_eq!([e(0.0), e(-0.0)], [1.0, 1.0]);
    assert_eq!(e(-104.0), 0.0, "e^-104 is below half the smallest subnormal");
    assert!(e(-88.0) > 0.0 && e(-88.0) < f32::MIN_POSITIVE, "e^-88 is subnormal");
    assert_eq!(e(89.0), f32::INFINITY, "e^89 overflows");
}

#[test]
fn exp_is_within_2_ulp_of_libm_over_the_float_range() {
    // Every 251st bit pattern: all signs, exponents (incl. subnormal inputs, huge magnitudes,
    // infinities and NaNs) and a spread of mantissas, about 17 million values.
    let xs: Vec<f32> = (0..=u32::MAX / 251).map(|i| f32::from_bits(i * 251)).collect();
    for chunk in xs.chunks(4099) {
        check_exp_against_libm(chunk);
    }
}

#[test]
fn exp_is_within_2_ulp_of_libm_around_the_range_ends() {
    // Consecutive floats where 2^n stops being a normal number (|n| = 126), the results become
    // subnormal, the last subnormal rounds to zero, and the result overflows.
    for centre in [-104.0f32, -103.972, -88.0, -87.34, -87.0, -0.35, 0.0, 0.35, 87.34, 88.0, 88.7228] {
        let bits = centre.to_bits() as i64;
        let xs: Vec<f32> = (-20000i64..20000).map(|d| f32::from_bits((bits + d) as u32)).collect();
        check_exp_against_libm(&xs);
    }
}

#[test]
fn exp_simd_equals_scalar_on_odd_lengths() {
    let Some(_) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    for &n in LENGTHS {
        let x = scaled(n, n as u64, 90.0);
        let mut want = x.clone();
        scalar::exp_in_place(&mut want);
        assert_rel(&exp_simd(&x), &want, EXP_REL, TINY, &format!("exp n={n}"));
    }
}

#[test]
fn silu_simd_equals_scalar() {
    let Some(_) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    for &n in LENGTHS {
        // Mostly the range activations live in, some far into saturation on both sides.
        let mut x = scaled(n, n as u64 + 1, 12.0);
        for (i, v) in x.iter_mut().enumerate().filter(|(i, _)| i % 5 == 3) {
            *v *= if i % 2 == 0 { 9.0 } else { 0.01 };
        }
        let mut got = x.clone();
        let mut want = x.clone();
        qwenrt_kernels::silu_in_place(&mut got);
        scalar::silu_in_place(&mut want);
        assert_rel(&got, &want, EXP_REL, TINY, &format!("silu_in_place n={n}"));

        let up = scaled(n, n as u64 + 2, 3.0);
        let mut got = x.clone();
        let mut want = x.clone();
        qwenrt_kernels::silu_mul(&mut got, &up);
        scalar::silu_mul(&mut want, &up);
        assert_rel(&got, &want, EXP_REL, TINY, &format!("silu_mul n={n}"));
    }
    let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -89.0, -100.0, 89.0, 100.0, 0.0, -0.0];
    let mut got = special.to_vec();
    let mut want = special.to_vec();
    qwenrt_kernels::silu_in_place(&mut got);
    scalar::silu_in_place(&mut want);
    assert_rel(&got, &want, 0.0, 0.0, "silu of special values");
}

#[test]
fn kernels_leave_memory_past_their_slices_alone() {
    const GUARD: f32 = 7.5;
    for n in 1..=17 {
        // Every kernel writes the first n values of a buffer whose remaining 8 must survive.
        let fresh = || {
            let mut b = data(n + 8, n as u64);
            b[n..].fill(GUARD);
            b
        };
        let other = data(n, 99);
        let mut runs: Vec<(&str, Vec<f32>)> = Vec::new();
        let mut b = fresh();
        qwenrt_kernels::exp_in_place(&mut b[..n]);
        runs.push(("exp_in_place", b));
        let mut b = fresh();
        qwenrt_kernels::silu_in_place(&mut b[..n]);
        runs.push(("silu_in_place", b));
        let mut b = fresh();
        qwenrt_kernels::silu_mul(&mut b[..n], &other);
        runs.push(("silu_mul", b));
        let mut b = fresh();
        qwenrt_kernels::scale(&mut b[..n], 3.0);
        runs.push(("scale", b));
        let mut b = fresh();
        qwenrt_kernels::add_assign(&mut b[..n], &other);
        runs.push(("add_assign", b));
        let mut b = fresh();
        qwenrt_kernels::softmax(&mut b[..n]);
        runs.push(("softmax", b));
        let mut b = fresh();
        qwenrt_kernels::l2_normalize(&mut b[..n], 0.0);
        runs.push(("l2_normalize", b));
        let mut b = fresh();
        let x = data(n, 5);
        qwenrt_kernels::rms_norm(&x, &other, 1e-6, &mut b[..n]);
        runs.push(("rms_norm", b));
        let mut b = fresh();
        qwenrt_kernels::rms_norm_gated(&mut b[..n], &x, &other, 1e-6);
        runs.push(("rms_norm_gated", b));
        let mut b = fresh();
        let half = n / 2;
        qwenrt_kernels::rope_rotate_half(&mut b[..2 * half], &other[..half], &x[..half]);
        runs.push(("rope_rotate_half", b));
        for (name, b) in runs {
            assert!(b[n..].iter().all(|&v| v == GUARD), "{name} n={n}: {:?}", &b[n..]);
        }
        // Convolution rows and delta-rule columns end in the same partial vectors.
        let w = data(4 * n, 6);
        let mut out = fresh();
        let mut state = vec![0.5; 3 * n + 8];
        state[3 * n..].fill(GUARD);
        qwenrt_kernels::causal_conv(&x, 1, n, &w, 4, &mut state[..3 * n], &mut out[..n]);
        assert!(out[n..].iter().all(|&v| v == GUARD), "causal_conv n={n}: out");
        assert!(state[3 * n..].iter().all(|&v| v == GUARD), "causal_conv n={n}: state");
        let dk = 3;
        let mut s = vec![0.25; dk * n + 8];
        s[dk * n..].fill(GUARD);
        let mut out = fresh();
        let (q, k) = (data(dk, 7), data(dk, 8));
        qwenrt_kernels::delta_rule_step(&q, &k, &x, -0.1, 0.5, &mut s[..dk * n], &mut out[..n]);
        assert!(out[n..].iter().all(|&v| v == GUARD), "delta_rule_step n={n}: out");
        assert!(s[dk * n..].iter().all(|&v| v == GUARD), "delta_rule_step n={n}: state");
    }
}

#[test]
fn softmax_simd_equals_scalar() {
    let Some(_) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    for &n in LENGTHS {
        for range in [1.0, 30.0] {
            let mut x = scaled(n, n as u64 + 3, range);
            // Masked positions, as attention scores have them; never all of them.
            for v in x.iter_mut().skip(1).step_by(4) {
                *v = f32::NEG_INFINITY;
            }
            // All values negative: the maximum must not come from the absent tail lanes.
            x.iter_mut().for_each(|v| *v -= 2.0 * range);
            let mut got = x.clone();
            let mut want = x.clone();
            qwenrt_kernels::softmax(&mut got);
            scalar::softmax(&mut want);
            // The sum differs in order: a few ulps per sqrt of the terms.
            let rel = EXP_REL + 1e-7 * (n as f32).sqrt();
            assert_rel(&got, &want, rel, TINY, &format!("softmax n={n} range={range}"));
            assert!((got.iter().sum::<f32>() - 1.0).abs() < 1e-5, "softmax n={n} sums to 1");
        }
    }
}

#[test]
fn norms_simd_equal_scalar() {
    let Some(_) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    for &n in LENGTHS {
        let x = scaled(n, n as u64 + 4, 5.0);
        let w = scaled(n, n as u64 + 5, 2.0);
        let gate = scaled(n, n as u64 + 6, 8.0);
        let (eps, ulp) = (1e-6, f32::EPSILON);
        // Without exp, only the sum of squares differs in order: a few ulps of rounding.
        let mut got = vec![f32::NAN; n];
        let mut want = vec![0.0; n];
        qwenrt_kernels::rms_norm(&x, &w, eps, &mut got);
        scalar::rms_norm(&x, &w, eps, &mut want);
        assert_rel(&got, &want, 4.0 * ulp, 0.0, &format!("rms_norm n={n}"));

        let mut got = x.clone();
        let mut want = x.clone();
        qwenrt_kernels::l2_normalize(&mut got, eps);
        scalar::l2_normalize(&mut want, eps);
        assert_rel(&got, &want, 4.0 * ulp, 0.0, &format!("l2_normalize n={n}"));

        let mut got = x.clone();
        let mut want = x.clone();
        qwenrt_kernels::rms_norm_gated(&mut got, &gate, &w, eps);
        scalar::rms_norm_gated(&mut want, &gate, &w, eps);
        assert_rel(&got, &want, EXP_REL, TINY, &format!("rms_norm_gated n={n}"));
    }
}

#[test]
fn scale_add_and_rope_simd_are_bit_exact() {
    for &n in LENGTHS {
        let x = scaled(n, n as u64 + 7, 3.0);
        let y = scaled(n, n as u64 + 8, 3.0);
        let mut got = x.clone();
        let mut want = x.clone();
        qwenrt_kernels::scale(&mut got, 0.37);
        scalar::scale(&mut want, 0.37);
        assert_eq!(got, want, "scale n={n}");

        let mut got = x.clone();
        let mut want = x.clone();
        qwenrt_kernels::add_assign(&mut got, &y);
        scalar::add_assign(&mut want, &y);
        assert_eq!(got, want, "add_assign n={n}");

        // A head of 2·n + 3 values, of which the first 2·n rotate.
        let head = scaled(2 * n + 3, n as u64 + 9, 4.0);
        let angles = scaled(n, n as u64 + 10, 50.0);
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let mut got = head.clone();
        let mut want = head.clone();
        qwenrt_kernels::rope_rotate_half(&mut got, &cos, &sin);
        scalar::rope_rotate_half(&mut want, &cos, &sin);
        assert_eq!(got, want, "rope_rotate_half n={n}");
        assert_eq!(&got[2 * n..], &head[2 * n..], "values after the rotated part stay");
    }
}

#[test]
fn rope_rotates_the_two_halves() {
    // Quarter turn: (x1, x2) -> (-x2, x1) for each pair i, i + half.
    let mut head = [1.0, 2.0, 3.0, 4.0, 9.0];
    let (cos, sin) = ([0.0, 0.0], [1.0, 1.0]);
    qwenrt_kernels::rope_rotate_half(&mut head, &cos, &sin);
    assert_eq!(head, [-3.0, -4.0, 1.0, 2.0, 9.0]);
    // Every pair keeps its length under any angle.
    let mut head = [3.0, 0.0, 4.0, 1.0];
    let a = 0.7f32;
    qwenrt_kernels::rope_rotate_half(&mut head, &[a.cos(), 1.0], &[a.sin(), 0.0]);
    assert!((head[0].hypot(head[2]) - 5.0).abs() < 1e-6);
    assert_eq!([head[1], head[3]], [0.0, 1.0]);
}

/// The convolution over the whole sequence straight from the definition, in f64.
fn conv_reference(u: &[f32], t: usize, c: usize, w: &[f32], kernel: usize, state: &[f32]) -> Vec<f32> {
    let seq: Vec<f32> = state.iter().chain(u).copied().collect();
    let mut out = vec![0.0; t * c];
    for ti in 0..t {
        for ch in 0..c {
            let acc: f64 = (0..kernel).map(|j| w[j * c + ch] as f64 * seq[(ti + j) * c + ch] as f64).sum();
            out[ti * c + ch] = (acc / (1.0 + (-acc).exp())) as f32;
        }
    }
    out
}

#[test]
fn causal_conv_simd_equals_scalar() {
    let Some(_) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    for (t, c, kernel) in [(1, 33, 4), (2, 17, 4), (37, 40, 4), (5, 1, 4), (3, 9, 1), (4, 64, 2), (6, 7, 5)] {
        let u = scaled(t * c, (t * 100 + c) as u64, 2.0);
        let w = scaled(kernel * c, (kernel * 7 + c) as u64, 1.0);
        let state0 = scaled((kernel - 1) * c, c as u64 + 11, 2.0);
        let (mut s_got, mut s_want) = (state0.clone(), state0.clone());
        let mut got = vec![f32::NAN; t * c];
        let mut want = vec![f32::NAN; t * c];
        qwenrt_kernels::causal_conv(&u, t, c, &w, kernel, &mut s_got, &mut got);
        scalar::causal_conv(&u, t, c, &w, kernel, &mut s_want, &mut want);
        let what = format!("causal_conv t={t} c={c} kernel={kernel}");
        assert_rel(&got, &want, EXP_REL, 1e-6, &what);
        assert_eq!(s_got, s_want, "{what}: state");
        let reference = conv_reference(&u, t, c, &w, kernel, &state0);
        assert_rel(&want, &reference, 1e-5, 1e-6, &format!("{what}: scalar vs definition"));
        // The new state is the last kernel - 1 rows of [state ++ u].
        let seq: Vec<f32> = state0.iter().chain(&u).copied().collect();
        assert_eq!(s_want, seq[seq.len() - (kernel - 1) * c..], "{what}: state contents");
    }
}

type Conv = fn(&[f32], usize, usize, &[f32], usize, &mut [f32], &mut [f32]);

#[test]
fn causal_conv_in_pieces_equals_one_call() {
    let (t, c, kernel) = (37, 21, 4);
    let u = scaled(t * c, 1, 2.0);
    let w = scaled(kernel * c, 2, 1.0);
    let state0 = scaled((kernel - 1) * c, 3, 2.0);
    for (name, conv) in [("dispatch", qwenrt_kernels::causal_conv as Conv), ("scalar", scalar::causal_conv)] {
        let mut whole_state = state0.clone();
        let mut whole = vec![0.0; t * c];
        conv(&u, t, c, &w, kernel, &mut whole_state, &mut whole);
        // Pieces shorter than the history (1, 2), as long, and longer; pairs; single steps.
        let pairs: Vec<usize> = [2; 18].into_iter().chain([1]).collect();
        for pieces in [vec![1, 2, 3, 10, 1, 1, 19], pairs, vec![1; 37]] {
            assert_eq!(pieces.iter().sum::<usize>(), t);
            let mut state = state0.clone();
            let mut out = vec![0.0; t * c];
            let mut t0 = 0;
            for len in pieces {
                let rows = t0 * c..(t0 + len) * c;
                conv(&u[rows.clone()], len, c, &w, kernel, &mut state, &mut out[rows]);
                t0 += len;
            }
            assert_eq!(out, whole, "{name}: outputs");
            assert_eq!(state, whole_state, "{name}: state");
        }
    }
}

/// l2-normalised vector of `n`, times `s`.
fn unit(n: usize, seed: u64, s: f32) -> Vec<f32> {
    let v = data(n, seed);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm * s).collect()
}

#[test]
fn delta_rule_step_simd_equals_scalar() {
    let Some(_) = simd() else { return eprintln!("no SIMD on this CPU: nothing to compare") };
    for (dk, dv) in [(128, 128), (33, 17), (1, 1), (8, 7), (16, 40), (64, 72), (5, 33)] {
        let mut s_got = scaled(dk * dv, (dk * 3 + dv) as u64, 1.0);
        let mut s_want = s_got.clone();
        let mut got = vec![f32::NAN; dv];
        let mut want = vec![f32::NAN; dv];
        // A few tokens in a row, so that the state carries what earlier steps did.
        for step in 0..4u64 {
            let q = unit(dk, step * 10 + 1, (dk as f32).powf(-0.5));
            let k = unit(dk, step * 10 + 2, 1.0);
            let v = scaled(dv, step * 10 + 3, 1.5);
            let (g, beta) = (-0.05 - 0.3 * step as f32, 0.2 + 0.2 * step as f32);
            qwenrt_kernels::delta_rule_step(&q, &k, &v, g, beta, &mut s_got, &mut got);
            scalar::delta_rule_step(&q, &k, &v, g, beta, &mut s_want, &mut want);
            let what = format!("delta rule {dk}x{dv} step {step}");
            assert_sum_close(&got, &want, dk, &format!("{what}: out"));
            assert_sum_close(&s_got, &s_want, dk, &format!("{what}: state"));
        }
    }
}

#[test]
fn delta_rule_step_matches_its_definition() {
    let (dk, dv) = (6, 5);
    let q = unit(dk, 1, 0.5);
    let k = unit(dk, 2, 1.0);
    let v = data(dv, 3);
    let (g, beta) = (-0.4f32, 0.7f32);
    let state0 = data(dk * dv, 4);
    let mut state = state0.clone();
    let mut out = vec![0.0; dv];
    qwenrt_kernels::delta_rule_step(&q, &k, &v, g, beta, &mut state, &mut out);
    // S' = e^g S + k (beta (v - e^g S^T k))^T;  out = S'^T q, in f64.
    let decay = (g as f64).exp();
    for j in 0..dv {
        let kv: f64 = (0..dk).map(|i| k[i] as f64 * decay * state0[i * dv + j] as f64).sum();
        let delta = (v[j] as f64 - kv) * beta as f64;
        let mut o = 0.0;
        for i in 0..dk {
            let s = decay * state0[i * dv + j] as f64 + k[i] as f64 * delta;
            assert!((state[i * dv + j] as f64 - s).abs() < 1e-6, "state[{i}, {j}]");
            o += q[i] as f64 * s;
        }
        assert!((out[j] as f64 - o).abs() < 1e-6, "out[{j}]: {} vs {o}", out[j]);
    }
}
