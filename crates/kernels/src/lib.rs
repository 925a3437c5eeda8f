//! Numeric kernels for qwenrt.
//!
//! Every kernel here has a plain scalar implementation that serves as its specification. Faster
//! (SIMD, threaded) twins are added beside them and must agree with the scalar version to
//! rounding; callers only ever see the dispatching functions at the crate root.
//!
//! Conventions: matrices are row-major slices; a weight matrix `w` of shape `[n, k]` is stored
//! exactly as in a safetensors checkpoint (`out_features` rows of `in_features` values), and
//! `x @ w.T` is what PyTorch's `nn.Linear` computes.

pub mod scalar;

pub use scalar::{
    add_assign, dot, l2_normalize, matmul_f32, rms_norm, rms_norm_gated, sigmoid, silu, silu_mul, softmax,
    softplus,
};
