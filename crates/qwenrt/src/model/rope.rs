//! Partial, interleaved multimodal rotary embedding (M-RoPE) of Qwen3.5's attention layers.
//!
//! Only the first `rotary_dim` dimensions of each head rotate, in the NeoX "half" layout. Each
//! frequency index follows one of three position axes (time, height, width), interleaved as
//! T H W T H W …; for text all three axes carry the same position (the token index, shifted by
//! the state's rope delta after an image), which reduces this to ordinary RoPE.

use crate::config::ModelConfig;

/// A token's position on the temporal, height and width axes.
pub type Position3 = [i64; 3];

pub struct MRope {
    /// `theta^(-2i/R)` for `i < R/2`.
    inv_freq: Vec<f32>,
    /// Which axis of [`Position3`] frequency `i` reads.
    axis: Vec<usize>,
    rotary_dim: usize,
}

impl MRope {
    pub fn new(config: &ModelConfig) -> Self {
        let r = config.rotary_dim;
        let theta = config.rope.rope_theta;
        let section = &config.rope.mrope_section;
        // inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        let inv_freq = (0..r / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / r as f32;
                1.0 / (theta as f32).powf(exponent)
            })
            .collect();
        // recomposition_frequencies: H takes indices 1, 4, … below 3*section[1]; W 2, 5, … below
        // 3*section[2]; everything else stays T.
        let axis = (0..r / 2)
            .map(|i| {
                if i % 3 == 1 && i < 3 * section[1] {
                    1
                } else if i % 3 == 2 && i < 3 * section[2] {
                    2
                } else {
                    0
                }
            })
            .collect();
        MRope { inv_freq, axis, rotary_dim: r }
    }

    /// Fills `cos` and `sin` (each `rotary_dim / 2` long) for one position.
    pub fn tables(&self, pos: Position3, cos: &mut [f32], sin: &mut [f32]) {
        for (i, (&f, &axis)) in self.inv_freq.iter().zip(&self.axis).enumerate() {
            let angle = pos[axis] as f32 * f;
            cos[i] = angle.cos();
            sin[i] = angle.sin();
        }
    }

    /// Rotates the leading `rotary_dim` values of one head in place:
    /// `x_rot * cos + rotate_half(x_rot) * sin`.
    pub fn rotate(&self, head: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.rotary_dim / 2;
        qwenrt_kernels::rope_rotate_half(head, &cos[..half], &sin[..half]);
    }

    pub fn half_dim(&self) -> usize {
        self.rotary_dim / 2
    }
}
