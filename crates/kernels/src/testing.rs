//! Inputs for the kernels' tests and benchmarks (and the engine's): the same seeded values
//! everywhere, so a failure or a timing can be reproduced from its seed.

/// `n` values in [-1, 1) from an xorshift generator seeded with `seed`.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
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
