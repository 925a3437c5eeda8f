//! Per-session state: what a conversation has accumulated (KV caches, DeltaNet conv and
//! recurrent states) plus reusable scratch memory. The model itself stays immutable.

use qwenrt_kernels::attention::{decode_cache, encode_cache, CacheFormat};

use super::deltanet::LayerRollback;
use super::mtp::MtpCache;
use crate::config::{LayerType, ModelConfig};

/// The cache of one decoder layer.
#[derive(Clone, Debug)]
pub(crate) enum LayerCache {
    /// Gated DeltaNet: the last `K - 1` pre-convolution inputs, `[K-1, conv_dim]` (oldest first),
    /// and the recurrent state `S`, `[Hv, dk, dv]`, kept in f32.
    DeltaNet { conv: Vec<f32>, ssm: Vec<f32> },
    /// Full attention: keys and values of every past position, `[nKV][len, head_dim]` (keys
    /// after q/k-norm and RoPE).
    Attention { keys: KvRows, values: KvRows },
}

/// The keys or the values of one attention layer, stored in `format`: half precision unless the
/// model runs in f32, whose point is matching the reference. Decode at long context is bound by
/// reading this cache, so each KV head keeps its rows (`[len, head_dim]`) in a buffer of its own:
/// the task attending with a head streams contiguous memory, and the prefetchers do not pull in
/// the other heads' rows, which another core reads.
#[derive(Clone, Debug)]
pub(crate) struct KvRows {
    format: CacheFormat,
    head_dim: usize,
    heads: Vec<Vec<u8>>,
}

impl KvRows {
    pub(crate) fn new(format: CacheFormat, kv_heads: usize, head_dim: usize) -> Self {
        KvRows { format, head_dim, heads: vec![Vec::new(); kv_heads] }
    }

    pub(crate) fn format(&self) -> CacheFormat {
        self.format
    }

    /// The rows of KV head `h`, in [`format`](Self::format).
    pub(crate) fn head(&self, h: usize) -> &[u8] {
        &self.heads[h]
    }

    /// Positions held.
    pub(crate) fn rows(&self) -> usize {
        self.heads.first().map_or(0, |b| b.len() / self.format.bytes_for(self.head_dim))
    }

    pub(crate) fn clear(&mut self) {
        self.heads.iter_mut().for_each(Vec::clear);
    }

    /// Keeps the first `rows` positions.
    pub(crate) fn truncate(&mut self, rows: usize) {
        let bytes = rows * self.format.bytes_for(self.head_dim);
        self.heads.iter_mut().for_each(|b| b.truncate(bytes));
    }

    /// Frees the memory (the layer-at-a-time embedding pass drops each layer's cache after use).
    pub(crate) fn release(&mut self) {
        self.heads.iter_mut().for_each(|b| *b = Vec::new());
    }

    /// Appends rows `[t, kv_heads, head_dim]`, rounded to the storage format.
    pub(crate) fn extend(&mut self, rows: &[f32]) {
        let row_bytes = self.format.bytes_for(self.head_dim);
        let kv_heads = self.heads.len();
        let t = rows.len() / (self.head_dim * kv_heads);
        for (h, buffer) in self.heads.iter_mut().enumerate() {
            let start = buffer.len();
            buffer.resize(start + t * row_bytes, 0);
            let per_position = rows.chunks_exact(self.head_dim).skip(h).step_by(kv_heads);
            for (row, out) in per_position.zip(buffer[start..].chunks_exact_mut(row_bytes)) {
                encode_cache(self.format, row, out);
            }
        }
    }

    /// Rows `row..` of KV head `h` as f32, as many as `out` holds.
    pub(crate) fn read(&self, h: usize, row: usize, out: &mut [f32]) {
        let row_bytes = self.format.bytes_for(self.head_dim);
        let from = row * row_bytes;
        decode_cache(self.format, &self.heads[h][from..from + out.len() / self.head_dim * row_bytes], out);
    }

    pub(crate) fn byte_len(&self) -> usize {
        self.heads.iter().map(Vec::len).sum()
    }

    /// Every head's rows as f32, head after head.
    #[cfg(test)]
    pub(crate) fn values(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows() * self.head_dim * self.heads.len()];
        for (h, head) in out.chunks_exact_mut(self.rows() * self.head_dim).enumerate() {
            self.read(h, 0, head);
        }
        out
    }
}

/// Everything a conversation carries between calls to the model.
pub struct SessionState {
    pub(crate) layers: Vec<LayerCache>,
    /// Tokens consumed so far.
    pub(crate) len: usize,
    /// M-RoPE offset of the next text token: it sits at position `len + rope_delta` on all three
    /// axes. 0 for text; after an image, negative (a merged image of `n` tokens spans fewer
    /// positions than tokens, see `vision::rope_index`).
    pub(crate) rope_delta: i64,
    pub(crate) max_len: usize,
    pub(crate) scratch: super::Scratch,
    /// [`layout_fingerprint`] of the model the state was made for.
    pub(crate) layout: u64,
    /// What the MTP head needs, once drafting is enabled (`Model::enable_drafting`).
    pub(crate) mtp: Option<MtpCache>,
    /// The record of the last verification pass (`Model::verify`), while it can be rolled back.
    pub(crate) rollback: Rollback,
    kv_shape: (CacheFormat, usize, usize),
}

/// What a verification pass keeps to return to any prefix of its tokens.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rollback {
    /// During the pass.
    pub recording: bool,
    /// After the pass, until anything else is fed.
    pub held: bool,
    /// The state's length before the pass, and the tokens fed by it.
    pub start: usize,
    pub rows: usize,
    /// By layer index; attention layers' entries stay empty (their caches are cut instead).
    pub layers: Vec<LayerRollback>,
}

impl Rollback {
    pub(crate) fn layer(&mut self, l: usize) -> &mut LayerRollback {
        if self.layers.len() <= l {
            self.layers.resize_with(l + 1, Default::default);
        }
        &mut self.layers[l]
    }
}

/// A copy of a [`SessionState`]'s caches (no scratch), to restore later.
#[derive(Clone, Debug)]
pub struct Snapshot {
    layers: Vec<LayerCache>,
    len: usize,
    rope_delta: i64,
    layout: u64,
    mtp: Option<MtpCache>,
}

/// What a state's caches look like for a model: layer kinds and cache sizes, KV heads, head size
/// and cache format, hidden and vocabulary sizes, hashed. A state (or snapshot) is only ever
/// handed to a model whose fingerprint it carries: another model's would index past its buffers.
pub(crate) fn layout_fingerprint(config: &ModelConfig, kv_format: CacheFormat) -> u64 {
    use std::hash::{Hash, Hasher};
    let t = &config.text;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for kind in &config.layer_types {
        matches!(kind, LayerType::LinearAttention).hash(&mut h);
    }
    (t.linear_conv_kernel_dim, config.linear_conv_dim(), t.linear_num_value_heads).hash(&mut h);
    (t.linear_key_head_dim, t.linear_value_head_dim, t.num_key_value_heads, config.head_dim).hash(&mut h);
    (t.hidden_size, t.vocab_size).hash(&mut h);
    format!("{kv_format:?}").hash(&mut h);
    h.finish()
}

impl SessionState {
    pub(crate) fn new(config: &ModelConfig, max_len: usize, kv_format: CacheFormat) -> Self {
        let t = &config.text;
        let layers = config
            .layer_types
            .iter()
            .map(|kind| match kind {
                LayerType::LinearAttention => LayerCache::DeltaNet {
                    conv: vec![0.0; (t.linear_conv_kernel_dim - 1) * config.linear_conv_dim()],
                    ssm: vec![
                        0.0;
                        t.linear_num_value_heads * t.linear_key_head_dim * t.linear_value_head_dim
                    ],
                },
                LayerType::FullAttention => {
                    let rows = || KvRows::new(kv_format, t.num_key_value_heads, config.head_dim);
                    LayerCache::Attention { keys: rows(), values: rows() }
                }
            })
            .collect();
        let layout = layout_fingerprint(config, kv_format);
        SessionState {
            layers,
            len: 0,
            rope_delta: 0,
            max_len,
            scratch: Default::default(),
            layout,
            mtp: None,
            rollback: Rollback::default(),
            kv_shape: (kv_format, t.num_key_value_heads, config.head_dim),
        }
    }

    /// An empty key or value cache shaped like the attention layers'.
    pub(crate) fn new_kv_rows(&self) -> KvRows {
        let (format, heads, head_dim) = self.kv_shape;
        KvRows::new(format, heads, head_dim)
    }

    /// Number of tokens the state has consumed.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The M-RoPE offset of the next token: a text token fed now takes position
    /// `len() + rope_delta()` on every axis (0 unless the state has seen an image or video).
    pub fn rope_delta(&self) -> i64 {
        self.rope_delta
    }

    /// The most tokens this state accepts (the model's context unless limited at creation).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets the conversation, keeping allocated memory.
    pub fn reset(&mut self) {
        self.len = 0;
        self.rope_delta = 0;
        self.rollback.held = false;
        if let Some(mtp) = &mut self.mtp {
            mtp.clear();
        }
        for layer in &mut self.layers {
            match layer {
                LayerCache::DeltaNet { conv, ssm } => {
                    conv.fill(0.0);
                    ssm.fill(0.0);
                }
                LayerCache::Attention { keys, values } => {
                    keys.clear();
                    values.clear();
                }
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            layers: self.layers.clone(),
            len: self.len,
            rope_delta: self.rope_delta,
            layout: self.layout,
            mtp: self.mtp.clone(),
        }
    }

    /// Returns to a snapshot taken from a state of the same model; a snapshot of another model
    /// is an error and leaves the state untouched.
    pub fn restore(&mut self, snapshot: &Snapshot) -> crate::Result<()> {
        if snapshot.layout != self.layout || snapshot.len > self.max_len {
            return Err(crate::Error::InvalidInput(
                "the snapshot was taken from another model (or exceeds this state's context)".into(),
            ));
        }
        self.layers.clone_from(&snapshot.layers);
        self.len = snapshot.len;
        self.rope_delta = snapshot.rope_delta;
        self.mtp.clone_from(&snapshot.mtp);
        self.rollback.held = false;
        Ok(())
    }

    /// Bytes held by the caches (not counting scratch).
    pub fn cache_bytes(&self) -> usize {
        caches_bytes(&self.layers) + self.mtp.as_ref().map_or(0, MtpCache::bytes)
    }

    #[cfg(test)]
    pub(crate) fn layer_caches(&self) -> &[LayerCache] {
        &self.layers
    }
}

impl Snapshot {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The state's [`SessionState::rope_delta`] when the snapshot was taken.
    pub fn rope_delta(&self) -> i64 {
        self.rope_delta
    }

    /// Bytes the snapshot holds.
    pub fn bytes(&self) -> usize {
        caches_bytes(&self.layers) + self.mtp.as_ref().map_or(0, MtpCache::bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn caches_bytes(layers: &[LayerCache]) -> usize {
    layers
        .iter()
        .map(|l| match l {
            LayerCache::DeltaNet { conv, ssm } => (conv.len() + ssm.len()) * 4,
            LayerCache::Attention { keys, values } => keys.byte_len() + values.byte_len(),
        })
        .sum()
}
