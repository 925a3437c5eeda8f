//! Numeric kernels for qwenrt.
//!
//! Every kernel has a plain scalar implementation ([`scalar`]) that serves as its specification;
//! SIMD twins (today AVX2 + FMA + F16C on x86-64) are chosen once at run time by [`Isa::detect`]
//! and must agree with the scalar version to rounding. Callers use the dispatching functions at
//! the crate root. All `unsafe` code of the project lives in this crate.
//!
//! Conventions: matrices are row-major slices; a weight matrix `w` of shape `[n, k]` is stored
//! exactly as in a safetensors checkpoint (`out_features` rows of `in_features` values), and
//! `x @ w.T` is what PyTorch's `nn.Linear` computes.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
use avx2::gemm as avx2_gemm;
pub mod attention;
pub mod convert;
pub mod pool;
pub mod quant;
pub mod scalar;
pub mod testing;

use std::cell::RefCell;
use std::sync::OnceLock;

pub use convert::{decode_floats, encode_floats};
use quant::{BlockQ4, BlockQ8, BlockQ8Act, QK};
pub use scalar::{matmul_f32, sigmoid, silu, softplus, FloatFormat};

/// Sum of `a[i] * b[i]` with the best instruction set.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features; the lengths are equal.
        Isa::Avx2 => unsafe { avx2::dot(a, b) },
        _ => scalar::dot(a, b),
    }
}

/// `acc[i] += a * x[i]` with the best instruction set.
#[inline]
pub fn axpy(acc: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "axpy: length mismatch");
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in dot.
        Isa::Avx2 => unsafe { avx2::axpy(acc, a, x) },
        _ => scalar::axpy(acc, a, x),
    }
}

/// `x[i] = e^x[i]`, within 2 ulp of libm's `expf` (0 below the subnormal range, infinite above
/// `f32::MAX`, NaN for NaN).
pub fn exp_in_place(x: &mut [f32]) {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features.
        Isa::Avx2 => unsafe { avx2::elementwise::exp_in_place(x) },
        _ => scalar::exp_in_place(x),
    }
}

/// `x[i] = silu(x[i]) = x[i] · sigmoid(x[i])`.
pub fn silu_in_place(x: &mut [f32]) {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features.
        Isa::Avx2 => unsafe { avx2::elementwise::silu_in_place(x) },
        _ => scalar::silu_in_place(x),
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`, the SwiGLU activation.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: length mismatch");
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features; the lengths are equal.
        Isa::Avx2 => unsafe { avx2::elementwise::silu_mul(gate, up) },
        _ => scalar::silu_mul(gate, up),
    }
}

/// `x[i] *= a`.
#[inline]
pub fn scale(x: &mut [f32], a: f32) {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features.
        Isa::Avx2 => unsafe { avx2::elementwise::scale(x, a) },
        _ => scalar::scale(x, a),
    }
}

/// `acc[i] += x[i]`.
#[inline]
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_assign: length mismatch");
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features; the lengths are equal.
        Isa::Avx2 => unsafe { avx2::elementwise::add_assign(acc, x) },
        _ => scalar::add_assign(acc, x),
    }
}

/// `out = x / sqrt(mean(x^2) + eps) * w`. Zero-centred norms pass `w = 1 + weight`, folded at load.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == w.len() && x.len() == out.len(), "rms_norm: length mismatch");
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features; the lengths are equal.
        Isa::Avx2 => unsafe { avx2::elementwise::rms_norm(x, w, eps, out) },
        _ => scalar::rms_norm(x, w, eps, out),
    }
}

/// Gated RMSNorm of the DeltaNet output: `w * (x / rms(x)) * silu(gate)`, in place on `x`.
pub fn rms_norm_gated(x: &mut [f32], gate: &[f32], w: &[f32], eps: f32) {
    assert!(x.len() == w.len() && x.len() == gate.len(), "rms_norm_gated: length mismatch");
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features; the lengths are equal.
        Isa::Avx2 => unsafe { avx2::elementwise::rms_norm_gated(x, gate, w, eps) },
        _ => scalar::rms_norm_gated(x, gate, w, eps),
    }
}

/// `x * rsqrt(sum(x^2) + eps)` in place, the FLA-style L2 normalisation DeltaNet applies to q and k.
pub fn l2_normalize(x: &mut [f32], eps: f32) {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features.
        Isa::Avx2 => unsafe { avx2::elementwise::l2_normalize(x, eps) },
        _ => scalar::l2_normalize(x, eps),
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features.
        Isa::Avx2 => unsafe { avx2::elementwise::softmax(x) },
        _ => scalar::softmax(x),
    }
}

/// Depthwise causal convolution + SiLU of `u: [t, channels]` with taps `weight_t: [kernel,
/// channels]`, continuing from (and updating) the `kernel - 1` previous inputs in `state`; see
/// [`scalar::causal_conv`].
pub fn causal_conv(
    u: &[f32],
    t: usize,
    channels: usize,
    weight_t: &[f32],
    kernel: usize,
    state: &mut [f32],
    out: &mut [f32],
) {
    scalar::check_causal_conv(u, t, channels, weight_t, kernel, state, out);
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features; the shapes are checked above.
        Isa::Avx2 => unsafe { avx2::elementwise::causal_conv(u, t, channels, weight_t, kernel, state, out) },
        _ => scalar::causal_conv(u, t, channels, weight_t, kernel, state, out),
    }
}

/// One token of the gated delta rule for one head on its state `[dk, dv]`; see
/// [`scalar::delta_rule_step`].
pub fn delta_rule_step(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: f32,
    beta: f32,
    state: &mut [f32],
    out: &mut [f32],
) {
    scalar::check_delta_rule(q, k, v, state, out);
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features; the shapes are checked above.
        Isa::Avx2 => unsafe { avx2::elementwise::delta_rule_step(q, k, v, g, beta, state, out) },
        _ => scalar::delta_rule_step(q, k, v, g, beta, state, out),
    }
}

/// Rotary embedding in the NeoX `rotate_half` form on the first `2 * cos.len()` values of
/// `head`; see [`scalar::rope_rotate_half`].
#[inline]
pub fn rope_rotate_half(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    scalar::check_rope(head, cos, sin);
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: detect() checked the features; the lengths are checked above.
        Isa::Avx2 => unsafe { avx2::elementwise::rope_rotate_half(head, cos, sin) },
        _ => scalar::rope_rotate_half(head, cos, sin),
    }
}

/// The instruction set the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C (x86-64).
    Avx2,
}

impl Isa {
    /// The best instruction set of this CPU, detected once. `QWENRT_ISA=scalar` forces the
    /// reference kernels (for debugging and comparison).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var("QWENRT_ISA").is_ok_and(|v| v == "scalar") {
                return Isa::Scalar;
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
            Isa::Scalar
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma+f16c",
        }
    }
}

/// A weight matrix `[n, k]` in one of the supported storages.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    /// Little-endian f32, bf16 or f16 values (possibly unaligned, e.g. memory-mapped).
    Float(&'a [u8], FloatFormat),
    /// Rows of `k / 32` Q8 blocks.
    Q8(&'a [BlockQ8]),
    /// Rows of `k / 32` Q4 blocks.
    Q4(&'a [BlockQ4]),
}

impl Weights<'_> {
    fn check(&self, k: usize, n: usize) {
        match self {
            Weights::Float(w, f) => assert_eq!(w.len(), n * k * f.bytes(), "weights are not [n, k]"),
            Weights::Q8(w) => {
                assert!(k.is_multiple_of(QK) && w.len() == n * k / QK, "Q8 weights are not [n, k]")
            }
            Weights::Q4(w) => {
                assert!(k.is_multiple_of(QK) && w.len() == n * k / QK, "Q4 weights are not [n, k]")
            }
        }
    }
}

/// Sets the number of threads of the parallel kernels (the [`pool`]) and of the bulk work
/// around them (loading, quantizing, image preprocessing: rayon's pool). Call once, before the
/// first product; returns an error message if a pool was already started.
pub fn set_threads(threads: usize) -> Result<(), String> {
    pool::set_threads(threads)?;
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().map_err(|e| e.to_string())
}

pub fn threads() -> usize {
    pool::threads_in_use()
}

/// `*mut f32` that may cross threads: each task writes a disjoint set of output columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    static ACT: RefCell<Vec<BlockQ8Act>> = const { RefCell::new(Vec::new()) };
}

/// Products over at least this many tokens (prefill) run the blocked, packed kernels of
/// `avx2::gemm`; fewer tokens (decode, small batches) are bound by reading the weights, which
/// the row kernels of `avx2` do without a packing pass. Where the two cross over depends on how
/// much the blocked kernel gains per token (measured with the `gemm_bench` example at k = 1024,
/// n = 3584): for Q4 it is already ahead at 4 tokens, for Q8 at 8, for float weights at 16.
fn gemm_min_tokens(w: &Weights) -> usize {
    match w {
        Weights::Float(..) => 16,
        Weights::Q8(_) => 8,
        Weights::Q4(_) => 4,
    }
}

/// `out[t, n] = x[t, k] @ w.T`, on all threads, with the best instruction set.
pub fn matmul(x: &[f32], w: Weights, out: &mut [f32], t: usize, k: usize, n: usize) {
    matmul_with(Isa::detect(), x, w, out, t, k, n)
}

/// [`matmul`] on a given instruction set (tests compare them).
pub fn matmul_with(isa: Isa, x: &[f32], w: Weights, out: &mut [f32], t: usize, k: usize, n: usize) {
    assert_eq!(x.len(), t * k, "matmul: x is not [t, k]");
    assert_eq!(out.len(), t * n, "matmul: out is not [t, n]");
    w.check(k, n);
    match w {
        Weights::Float(..) => run_rows(isa, x, &[], w, out, t, k, n),
        Weights::Q8(_) | Weights::Q4(_) => {
            // Take the buffer out of the thread-local so a nested call cannot find it borrowed.
            let mut act = ACT.with(|a| std::mem::take(&mut *a.borrow_mut()));
            act.resize(t * k / QK, BlockQ8Act::default());
            quantize_act(isa, x, &mut act);
            run_rows(isa, x, &act, w, out, t, k, n);
            ACT.with(|a| *a.borrow_mut() = act);
        }
    }
}

/// `out[t, n] = x[t, k] @ w.T` for f32 weights on the calling thread only: for small products
/// inside code that is already parallel (one task per attention or DeltaNet head).
pub fn matmul_f32_local(x: &[f32], w: &[f32], out: &mut [f32], t: usize, k: usize, n: usize) {
    assert_eq!(x.len(), t * k, "matmul: x is not [t, k]");
    assert_eq!(w.len(), n * k, "matmul: w is not [n, k]");
    assert_eq!(out.len(), t * n, "matmul: out is not [t, n]");
    // SAFETY: f32 has no invalid bit patterns and u8 no alignment requirement.
    let bytes = unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, std::mem::size_of_val(w)) };
    let isa = Isa::detect();
    // SAFETY: this call writes all rows of `out`, on this thread.
    unsafe {
        rows_kernel(
            isa,
            x,
            &[],
            Weights::Float(bytes, FloatFormat::F32),
            OutPtr(out.as_mut_ptr()),
            t,
            k,
            n,
            0..n,
        )
    }
}

/// Writes the transpose of `src` (`[rows, cols]`) into `dst` (`[cols, rows]`).
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() == rows * cols && dst.len() == rows * cols, "transpose: size mismatch");
    for r in 0..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// Quantizes activation rows (length a multiple of 32) to Q8 blocks.
pub fn quantize_act(isa: Isa, x: &[f32], out: &mut [BlockQ8Act]) {
    assert_eq!(x.len(), out.len() * QK, "quantize_act: length mismatch");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::quantize_act(x, out) },
        _ => quant::quantize_act(x, out),
    }
}

/// Splits the output rows across threads; small products stay on the calling thread.
#[allow(clippy::too_many_arguments)]
fn run_rows(
    isa: Isa,
    x: &[f32],
    act: &[BlockQ8Act],
    w: Weights,
    out: &mut [f32],
    t: usize,
    k: usize,
    n: usize,
) {
    const MIN_WORK_PER_TASK: usize = 1 << 16;
    let threads = pool::threads_in_use();
    let work = t * k * n;
    let tasks = if threads > 1 && work >= 2 * MIN_WORK_PER_TASK {
        (work / MIN_WORK_PER_TASK).min(threads * 4).max(2)
    } else {
        1
    };
    // Whole micro-tiles of the blocked kernels (16 rows), or of the row kernels (4).
    let granule = if t >= gemm_min_tokens(&w) { 16 } else { 4 };
    let rows_per_task = n.div_ceil(tasks).next_multiple_of(granule).max(granule);
    let ptr = OutPtr(out.as_mut_ptr());
    let job = |r0: usize| {
        let rows = r0..(r0 + rows_per_task).min(n);
        // SAFETY: each task writes only the output columns of its own rows.
        unsafe { rows_kernel(isa, x, act, w, ptr, t, k, n, rows) }
    };
    let task_count = n.div_ceil(rows_per_task);
    pool::for_each_task(task_count, |i| job(i * rows_per_task));
}

#[allow(clippy::too_many_arguments)]
unsafe fn rows_kernel(
    isa: Isa,
    x: &[f32],
    act: &[BlockQ8Act],
    w: Weights,
    out: OutPtr,
    t: usize,
    k: usize,
    n: usize,
    rows: std::ops::Range<usize>,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if t >= gemm_min_tokens(&w) => match w {
            Weights::Float(bytes, FloatFormat::F32) => {
                avx2_gemm::matmul_float::<avx2::F32>(x, bytes, out.0, t, k, n, rows)
            }
            Weights::Float(bytes, FloatFormat::Bf16) => {
                avx2_gemm::matmul_float::<avx2::Bf16>(x, bytes, out.0, t, k, n, rows)
            }
            Weights::Float(bytes, FloatFormat::F16) => {
                avx2_gemm::matmul_float::<avx2::F16>(x, bytes, out.0, t, k, n, rows)
            }
            Weights::Q8(blocks) => avx2_gemm::matmul_q8(act, blocks, out.0, t, k, n, rows),
            Weights::Q4(blocks) => avx2_gemm::matmul_q4(act, blocks, out.0, t, k, n, rows),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match w {
            Weights::Float(bytes, FloatFormat::F32) => {
                avx2::matmul_float::<avx2::F32>(x, bytes, out.0, t, k, n, rows)
            }
            Weights::Float(bytes, FloatFormat::Bf16) => {
                avx2::matmul_float::<avx2::Bf16>(x, bytes, out.0, t, k, n, rows)
            }
            Weights::Float(bytes, FloatFormat::F16) => {
                avx2::matmul_float::<avx2::F16>(x, bytes, out.0, t, k, n, rows)
            }
            Weights::Q8(blocks) => avx2::matmul_quant::<avx2::Q8>(act, blocks, out.0, t, k, n, rows),
            Weights::Q4(blocks) => avx2::matmul_quant::<avx2::Q4>(act, blocks, out.0, t, k, n, rows),
        },
        _ => {
            // The scalar kernels take a slice; rebuild it over the whole output, which is sound
            // because tasks only write their own columns and nobody reads until all finish.
            let out = std::slice::from_raw_parts_mut(out.0, t * n);
            match w {
                Weights::Float(bytes, format) => scalar::matmul_float(x, bytes, format, out, (t, k, n), rows),
                Weights::Q8(blocks) => scalar::matmul_q8(act, blocks, out, (t, k, n), rows),
                Weights::Q4(blocks) => scalar::matmul_q4(act, blocks, out, (t, k, n), rows),
            }
        }
    }
}
