//! The Qwen3.5 vision tower (`Qwen3_5VisionModel`, tensors `model.visual.*`).
//!
//! ```python
//! x   = patch_embed.proj(pixel_values.view(-1, 3, 2, 16, 16)).view(-1, hidden)  # Conv3d == a matmul
//! x  += (pos_embed(interp_indices) * interp_weights[:, :, None]).sum(1)         # bilinear, align_corners
//! cos, sin = rotary_pos_emb(x, position_ids)                                    # 2-D (row, column)
//! for blk in blocks:                                                            # attention per frame
//!     x = x + attn.proj(softmax(rope(q) rope(k)^T / sqrt(d)) v)  with q, k, v = attn.qkv(norm1(x))
//!     x = x + mlp.linear_fc2(gelu_tanh(mlp.linear_fc1(norm2(x))))
//! y   = merger.linear_fc2(GELU(merger.linear_fc1(merger.norm(x).view(-1, 4 * hidden))))
//! ```
//!
//! Patches arrive in 2×2-merge block order (see [`super::preprocess`]), so the merger's
//! `view(-1, 4 * hidden)` joins the four patches of one block, and `y` holds one row per merged
//! token, in the order the `<|image_pad|>` / `<|video_pad|>` placeholders take them.
//!
//! Every projection is a [`Linear`], held at the precision the model is loaded with; the patch
//! embedding is stored 5-D (`[hidden, 3, 2, 16, 16]`) and so is kept as an f32 matrix.

use std::path::Path;

use qwenrt_kernels as k;
use qwenrt_kernels::pool;

use super::config::{VisionActivation, VisionConfig, VisionModelConfig};
use super::preprocess::GridThw;
use crate::error::{Error, Result};
use crate::linear::{load_vector, Linear, WeightDtype};
use crate::model::grow;
use crate::weights::WeightStore;

/// Tensor-name prefix of the tower in a `Qwen3_5ForConditionalGeneration` checkpoint.
pub const PREFIX: &str = "model.visual.";

/// `nn.LayerNorm(eps=1e-6)` of the vision tower.
const LAYER_NORM_EPS: f64 = 1e-6;

/// Query rows scored at once in attention: bounds the score buffer to `ROWS x frame_patches`.
const ATTENTION_ROWS: usize = 64;

/// A `nn.Linear` with its bias.
struct Affine {
    weight: Linear,
    bias: Vec<f32>,
}

impl Affine {
    fn load(store: &WeightStore, name: &str, out: usize, inp: usize, dtype: WeightDtype) -> Result<Self> {
        Ok(Affine {
            weight: Linear::load(store, &format!("{name}.weight"), out, inp, dtype)?,
            bias: load_vector(store, &format!("{name}.bias"), out)?,
        })
    }

    /// `out[t, :] = x[t, :] @ W.T + b`.
    fn forward(&self, x: &[f32], t: usize, out: &mut [f32]) {
        self.weight.forward(x, t, out);
        for row in out.chunks_exact_mut(self.bias.len()) {
            k::add_assign(row, &self.bias);
        }
    }

    fn bytes(&self) -> usize {
        self.weight.bytes() + 4 * self.bias.len()
    }
}

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl LayerNorm {
    fn load(store: &WeightStore, name: &str, len: usize) -> Result<Self> {
        Ok(LayerNorm {
            weight: load_vector(store, &format!("{name}.weight"), len)?,
            bias: load_vector(store, &format!("{name}.bias"), len)?,
        })
    }

    /// Normalises each row of `x` (biased variance, moments accumulated in f64).
    fn forward(&self, x: &[f32], out: &mut [f32]) {
        let n = self.weight.len();
        pool::for_each_chunk_mut(out, n, |row, y| {
            let x = &x[row * n..(row + 1) * n];
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            let inv = 1.0 / (var + LAYER_NORM_EPS).sqrt();
            for i in 0..n {
                y[i] = ((x[i] as f64 - mean) * inv) as f32 * self.weight[i] + self.bias[i];
            }
        });
    }
}

struct VisionBlock {
    norm1: LayerNorm,
    qkv: Affine,
    proj: Affine,
    norm2: LayerNorm,
    fc1: Affine,
    fc2: Affine,
}

/// The patch merger: LayerNorm per patch, four patches joined, `fc2(GELU(fc1(.)))`.
struct PatchMerger {
    norm: LayerNorm,
    fc1: Affine,
    fc2: Affine,
}

/// A loaded vision tower; immutable and shared by reference like [`crate::Model`].
pub struct VisionTower {
    config: VisionConfig,
    activation: VisionActivation,
    /// `patch_embed.proj` as `[hidden, 3 * 2 * 16 * 16]` (the Conv3d's kernel covers a whole patch).
    patch_embed: Affine,
    /// `pos_embed.weight`: `[side * side, hidden]` learned positions on a square grid.
    pos_embed: Vec<f32>,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    /// `1 / theta^(2j / (head_dim / 2))` for `j < head_dim / 4`: the frequencies of each axis.
    inv_freq: Vec<f32>,
}

/// Patches per task when adding the position embeddings: enough work to outweigh handing it out.
const POSITION_ROWS: usize = 64;
/// Values per task of the element-wise activations.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// Per-head buffers of the attention of one head over one frame.
#[derive(Default)]
struct HeadScratch {
    /// `[patches, head_dim]` each.
    q: Vec<f32>,
    k: Vec<f32>,
    /// `[head_dim, patches]`: values transposed, the weight layout of `matmul_f32_local`.
    v_t: Vec<f32>,
    /// `[ATTENTION_ROWS, patches]`.
    scores: Vec<f32>,
}

impl VisionTower {
    /// Loads the tower from a checkpoint. `dtype` applies to every projection as in the text model.
    pub fn load(store: &WeightStore, config: &VisionConfig, dtype: WeightDtype) -> Result<Self> {
        config.validate()?;
        let c = config;
        let (hidden, inter, heads) = (c.hidden_size, c.intermediate_size, c.num_heads);
        let p = |name: &str| format!("{PREFIX}{name}");

        let conv_name = p("patch_embed.proj.weight");
        let conv = store
            .get(&conv_name, &[hidden, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size])?;
        let patch_embed = Affine {
            weight: Linear::from_f32(conv.to_finite_f32()?, hidden, c.patch_row_len()),
            bias: load_vector(store, &p("patch_embed.proj.bias"), hidden)?,
        };
        let pos_embed =
            store.get(&p("pos_embed.weight"), &[c.num_position_embeddings, hidden])?.to_finite_f32()?;

        let blocks = (0..c.depth)
            .map(|i| {
                let b = |name: &str| p(&format!("blocks.{i}.{name}"));
                Ok(VisionBlock {
                    norm1: LayerNorm::load(store, &b("norm1"), hidden)?,
                    qkv: Affine::load(store, &b("attn.qkv"), 3 * hidden, hidden, dtype)?,
                    proj: Affine::load(store, &b("attn.proj"), hidden, hidden, dtype)?,
                    norm2: LayerNorm::load(store, &b("norm2"), hidden)?,
                    fc1: Affine::load(store, &b("mlp.linear_fc1"), inter, hidden, dtype)?,
                    fc2: Affine::load(store, &b("mlp.linear_fc2"), hidden, inter, dtype)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let merged = hidden * c.spatial_merge_size * c.spatial_merge_size;
        let merger = PatchMerger {
            norm: LayerNorm::load(store, &p("merger.norm"), hidden)?,
            fc1: Affine::load(store, &p("merger.linear_fc1"), merged, merged, dtype)?,
            fc2: Affine::load(store, &p("merger.linear_fc2"), c.out_hidden_size, merged, dtype)?,
        };

        // inv_freq = 1.0 / (base ** (torch.arange(0, dim // 2, 2, dtype=torch.float) / (dim // 2)))
        let spatial_dim = (hidden / heads / 2) as f32;
        let theta = c.rope_theta() as f32;
        let inv_freq =
            (0..hidden / heads / 4).map(|j| 1.0 / theta.powf((2 * j) as f32 / spatial_dim)).collect();

        Ok(VisionTower {
            config: config.clone(),
            activation: config.activation()?,
            patch_embed,
            pos_embed,
            blocks,
            merger,
            inv_freq,
        })
    }

    /// Loads the tower of a model folder (`config.json` + safetensors).
    pub fn load_dir(dir: &Path, dtype: WeightDtype) -> Result<Self> {
        let config = VisionModelConfig::from_file(&dir.join("config.json"))?;
        let store = WeightStore::open_dir(dir)?;
        Self::load(&store, &config.vision, dtype)
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// Width of each merged token (the text model's hidden size).
    pub fn out_hidden(&self) -> usize {
        self.config.out_hidden_size
    }

    /// Bytes of the weights as held.
    pub fn weight_bytes(&self) -> usize {
        let norm = |n: &LayerNorm| 4 * (n.weight.len() + n.bias.len());
        self.patch_embed.bytes()
            + 4 * self.pos_embed.len()
            + self
                .blocks
                .iter()
                .map(|b| {
                    norm(&b.norm1)
                        + norm(&b.norm2)
                        + b.qkv.bytes()
                        + b.proj.bytes()
                        + b.fc1.bytes()
                        + b.fc2.bytes()
                })
                .sum::<usize>()
            + norm(&self.merger.norm)
            + self.merger.fc1.bytes()
            + self.merger.fc2.bytes()
    }

    /// Embeds the patch rows of one or more images/videos (`pixel_rows`: `[patches, 1536]`, the
    /// grids' patches in order) into merged tokens `[patches / 4, out_hidden]`.
    pub fn encode(&self, pixel_rows: &[f32], grids: &[GridThw]) -> Result<Vec<f32>> {
        self.merge(&self.encode_patches(pixel_rows, grids)?)
    }

    /// The blocks' output before the merger: `[patches, hidden]` (transformers' `last_hidden_state`).
    pub fn encode_patches(&self, pixel_rows: &[f32], grids: &[GridThw]) -> Result<Vec<f32>> {
        let c = &self.config;
        let merge = c.spatial_merge_size;
        let mut patches = 0;
        for (i, &(t, h, w)) in grids.iter().enumerate() {
            if t == 0 || h == 0 || w == 0 || !h.is_multiple_of(merge) || !w.is_multiple_of(merge) {
                return Err(Error::InvalidInput(format!(
                    "vision grid {i} is ({t}, {h}, {w}): all sides must be positive and h, w multiples of {merge}"
                )));
            }
            patches += t * h * w;
        }
        let row_len = c.patch_row_len();
        if pixel_rows.len() != patches * row_len {
            return Err(Error::InvalidInput(format!(
                "{} pixel values do not make the {patches} patch rows of {row_len} values the grids describe",
                pixel_rows.len()
            )));
        }
        let dim = c.hidden_size;

        // Patch embedding, learned positions, and each patch's (row, column) inside its frame.
        let mut x = vec![0.0f32; patches * dim];
        self.patch_embed.forward(pixel_rows, patches, &mut x);
        let coords = patch_coordinates(grids, merge);
        self.add_position_embeddings(&mut x, grids, &coords);
        let (cos, sin) = self.rotary_tables(&coords);

        // One attention segment per frame (`cu_seqlens`): images have one, videos one per temporal patch.
        let segments: Vec<usize> =
            grids.iter().flat_map(|&(t, h, w)| std::iter::repeat_n(h * w, t)).collect();

        let mut normed = vec![0.0f32; patches * dim];
        let mut qkv = vec![0.0f32; patches * 3 * dim];
        let mut attn = vec![0.0f32; patches * dim];
        let mut projected = vec![0.0f32; patches * dim];
        let mut mlp = vec![0.0f32; patches * c.intermediate_size];
        for block in &self.blocks {
            block.norm1.forward(&x, &mut normed);
            block.qkv.forward(&normed, patches, &mut qkv);
            self.attention(&qkv, &segments, &cos, &sin, &mut attn);
            block.proj.forward(&attn, patches, &mut projected);
            k::add_assign(&mut x, &projected);

            block.norm2.forward(&x, &mut normed);
            block.fc1.forward(&normed, patches, &mut mlp);
            activate(self.activation, &mut mlp);
            block.fc2.forward(&mlp, patches, &mut projected);
            k::add_assign(&mut x, &projected);
        }
        Ok(x)
    }

    /// The patch merger on blocks output `[patches, hidden]` -> `[patches / 4, out_hidden]`.
    pub fn merge(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let merged = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
        if !hidden.len().is_multiple_of(merged) {
            return Err(Error::InvalidInput(format!(
                "{} values are not whole groups of {} patches of {} values",
                hidden.len(),
                c.spatial_merge_size * c.spatial_merge_size,
                c.hidden_size
            )));
        }
        let tokens = hidden.len() / merged;
        let mut normed = vec![0.0f32; hidden.len()];
        self.merger.norm.forward(hidden, &mut normed);
        let mut inner = vec![0.0f32; tokens * merged];
        self.merger.fc1.forward(&normed, tokens, &mut inner);
        activate(VisionActivation::GeluErf, &mut inner);
        let mut out = vec![0.0f32; tokens * c.out_hidden_size];
        self.merger.fc2.forward(&inner, tokens, &mut out);
        Ok(out)
    }

    /// `x += sum over the 4 bilinear taps of w * pos_embed[tap]`, the position table resampled
    /// to each frame's grid with `align_corners=True`, frame by frame.
    fn add_position_embeddings(&self, x: &mut [f32], grids: &[GridThw], coords: &[(usize, usize)]) {
        let dim = self.config.hidden_size;
        let side = self.config.position_grid_side();
        let sizes: Vec<(usize, usize)> =
            grids.iter().flat_map(|&(t, h, w)| std::iter::repeat_n((h, w), t * h * w)).collect();
        pool::for_each_chunk_mut(x, dim * POSITION_ROWS, |group, rows| {
            let mut sum = vec![0.0f32; dim];
            for (j, row) in rows.chunks_exact_mut(dim).enumerate() {
                let patch = group * POSITION_ROWS + j;
                let ((r, c), (h, w)) = (coords[patch], sizes[patch]);
                let (row_taps, row_weights) = bilinear_taps(r, h, side);
                let (col_taps, col_weights) = bilinear_taps(c, w, side);
                // (pos_embed(indices) * weights[:, :, None]).sum(1), taps in (row, column) order
                sum.fill(0.0);
                for (&rt, &rw) in row_taps.iter().zip(&row_weights) {
                    for (&ct, &cw) in col_taps.iter().zip(&col_weights) {
                        let entry = rt * side + ct;
                        k::axpy(&mut sum, rw * cw, &self.pos_embed[entry * dim..(entry + 1) * dim]);
                    }
                }
                k::add_assign(row, &sum);
            }
        });
    }

    /// cos and sin of each patch's rotary angles, `[patches, head_dim / 2]`: the row angles then
    /// the column angles (the second half of a head uses the same values).
    fn rotary_tables(&self, coords: &[(usize, usize)]) -> (Vec<f32>, Vec<f32>) {
        let quarter = self.inv_freq.len();
        let mut cos = vec![0.0f32; coords.len() * 2 * quarter];
        let mut sin = vec![0.0f32; coords.len() * 2 * quarter];
        for (i, &(r, c)) in coords.iter().enumerate() {
            for (j, &f) in self.inv_freq.iter().enumerate() {
                for (slot, pos) in [(j, r), (quarter + j, c)] {
                    // freqs = position_ids[..., None].float() * inv_freq
                    let angle = pos as f32 * f;
                    cos[i * 2 * quarter + slot] = angle.cos();
                    sin[i * 2 * quarter + slot] = angle.sin();
                }
            }
        }
        (cos, sin)
    }

    /// Bidirectional attention within each segment (frame) of `segments` patches, one task per
    /// head; `qkv` rows are `[q heads | k heads | v heads]`. Writes `[patches, hidden]`.
    fn attention(&self, qkv: &[f32], segments: &[usize], cos: &[f32], sin: &[f32], out: &mut [f32]) {
        let c = &self.config;
        let (dim, heads) = (c.hidden_size, c.num_heads);
        let head_dim = dim / heads;
        let half = head_dim / 2;
        let scale = (head_dim as f32).powf(-0.5);
        let mut start = 0;
        let mut heads_work: Vec<(Vec<f32>, HeadScratch)> = (0..heads).map(|_| Default::default()).collect();
        for &len in segments {
            let rows = start..start + len;
            pool::for_each_mut(&mut heads_work, |head, (o, s)| {
                let q = grow(&mut s.q, len * head_dim);
                let keys = grow(&mut s.k, len * head_dim);
                let v_t = grow(&mut s.v_t, head_dim * len);
                for (i, p) in rows.clone().enumerate() {
                    let row = &qkv[p * 3 * dim..(p + 1) * 3 * dim];
                    let (cos, sin) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
                    let at = head * head_dim;
                    rotate(&row[at..at + head_dim], cos, sin, &mut q[i * head_dim..(i + 1) * head_dim]);
                    rotate(
                        &row[dim + at..dim + at + head_dim],
                        cos,
                        sin,
                        &mut keys[i * head_dim..(i + 1) * head_dim],
                    );
                    for (d, &v) in row[2 * dim + at..2 * dim + at + head_dim].iter().enumerate() {
                        v_t[d * len + i] = v;
                    }
                }
                let o = grow(o, len * head_dim);
                for r0 in (0..len).step_by(ATTENTION_ROWS) {
                    let n = ATTENTION_ROWS.min(len - r0);
                    let scores = grow(&mut s.scores, n * len);
                    // attn_weights = softmax(q @ k.T * scaling) in f32, then @ v
                    k::matmul_f32_local(
                        &q[r0 * head_dim..(r0 + n) * head_dim],
                        keys,
                        scores,
                        n,
                        head_dim,
                        len,
                    );
                    for row in scores.chunks_exact_mut(len) {
                        for v in row.iter_mut() {
                            *v *= scale;
                        }
                        k::softmax(row);
                    }
                    k::matmul_f32_local(
                        scores,
                        v_t,
                        &mut o[r0 * head_dim..(r0 + n) * head_dim],
                        n,
                        len,
                        head_dim,
                    );
                }
            });
            for (head, (o, _)) in heads_work.iter().enumerate() {
                for (i, p) in rows.clone().enumerate() {
                    out[p * dim + head * head_dim..p * dim + (head + 1) * head_dim]
                        .copy_from_slice(&o[i * head_dim..(i + 1) * head_dim]);
                }
            }
            start += len;
        }
    }
}

/// `x * cos + rotate_half(x) * sin` over a whole head (NeoX halves), into `out`.
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[half + i]);
        out[i] = a * cos[i] - b * sin[i];
        out[half + i] = b * cos[i] + a * sin[i];
    }
}

/// Each patch's (row, column) inside its frame, in the 2×2-merge block order of the rows
/// (`get_vision_position_ids`); frames of a video repeat the same coordinates.
fn patch_coordinates(grids: &[GridThw], merge: usize) -> Vec<(usize, usize)> {
    let mut coords = Vec::new();
    for &(t, h, w) in grids {
        for _ in 0..t {
            for block_row in 0..h / merge {
                for block_col in 0..w / merge {
                    for in_row in 0..merge {
                        for in_col in 0..merge {
                            coords.push((block_row * merge + in_row, block_col * merge + in_col));
                        }
                    }
                }
            }
        }
    }
    coords
}

/// `_interpolation_axis_taps_weights(mode="bilinear", align_corners=True)` for one index of an
/// axis of `size` patches resampling a table of `side` entries, in f32 as transformers computes it.
fn bilinear_taps(index: usize, size: usize, side: usize) -> ([usize; 2], [f32; 2]) {
    // src = index * (side - 1) / clamp(size - 1, min=1)
    let src = index as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
    let floor = src.floor();
    let mut taps = [0; 2];
    let mut weights = [0.0; 2];
    for offset in 0..2 {
        taps[offset] = (floor as usize + offset).min(side - 1);
        let distance = (src - floor - offset as f32).abs();
        weights[offset] = (1.0 - distance).max(0.0);
    }
    (taps, weights)
}

/// The MLP activations, in place.
fn activate(activation: VisionActivation, x: &mut [f32]) {
    match activation {
        VisionActivation::GeluTanh => pool::for_each_chunk_mut(x, ELEMENTWISE_CHUNK, |_, c| {
            c.iter_mut().for_each(|v| *v = gelu_tanh(*v))
        }),
        VisionActivation::GeluErf => pool::for_each_chunk_mut(x, ELEMENTWISE_CHUNK, |_, c| {
            c.iter_mut().for_each(|v| *v = gelu_erf(*v))
        }),
    }
}

/// `gelu(x, approximate="tanh")`.
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// `gelu(x)`: `0.5 x (1 + erf(x / sqrt 2))`, evaluated in f64.
fn gelu_erf(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
}

/// The error function to f64 precision (the standard library has none).
///
/// `|z| < 3`: `erf z = 2/sqrt(pi) e^{-z^2} sum_n (2z^2)^n z / (1*3*...*(2n+1))`, a series of
/// positive terms (no cancellation). Beyond: `erfc z = e^{-z^2}/sqrt(pi) / (z + 1/2 / (z + 1 /
/// (z + 3/2 / (z + ...))))`, a continued fraction that converges quickly for large `z`.
pub(crate) fn erf(z: f64) -> f64 {
    let a = z.abs();
    let value = if a < 3.0 {
        let two_z2 = 2.0 * a * a;
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term > 1e-17 * sum {
            n += 1.0;
            term *= two_z2 / (2.0 * n + 1.0);
            sum += term;
        }
        std::f64::consts::FRAC_2_SQRT_PI * (-a * a).exp() * sum
    } else if a < 27.0 {
        let mut fraction = a;
        for level in (1..=60).rev() {
            fraction = a + (level as f64 / 2.0) / fraction;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / fraction
    } else {
        1.0
    };
    value.copysign(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_reference_values() {
        // math.erf in Python
        let cases = [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (-0.3, -0.328_626_759_459_127_4),
            (2.0, 0.995_322_265_018_952_7),
            (2.999, 0.999_977_769_831_400_2),
            (3.0, 0.999_977_909_503_001_4),
            (4.0, 0.999_999_984_582_742_1),
            (-6.5, -1.0),
        ];
        for (z, want) in cases {
            let got = erf(z);
            assert!((got - want).abs() < 1e-15, "erf({z}) = {got}, want {want}");
        }
    }

    #[test]
    fn bilinear_taps_align_corners() {
        // 14 rows onto 48: row 13 lands on 47 exactly, row 1 on 47/13.
        assert_eq!(bilinear_taps(13, 14, 48), ([47, 47], [1.0, 0.0]));
        let (taps, w) = bilinear_taps(1, 14, 48);
        assert_eq!(taps, [3, 4]);
        assert!((w[0] + w[1] - 1.0).abs() < 1e-6 && (w[1] - (47.0 / 13.0 - 3.0)).abs() < 1e-6);
        // a side of one patch reads entry 0
        assert_eq!(bilinear_taps(0, 1, 48), ([0, 1], [1.0, 0.0]));
    }

    #[test]
    fn coordinates_follow_block_order() {
        let coords = patch_coordinates(&[(1, 2, 4)], 2);
        assert_eq!(coords, vec![(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]);
    }
}
