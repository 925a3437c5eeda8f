//! Per-session state: what a conversation has accumulated (KV caches, DeltaNet conv and
//! recurrent states) plus reusable scratch memory. The model itself stays immutable.

use qwenrt_kernels::attention::{decode_cache, encode_cache, CacheFormat};

use crate::config::{LayerType, ModelConfig};

/// The cache of one decoder layer.
#[derive(Clone, Debug)]
pub(crate) enum LayerCache {
    /// Gated DeltaNet: the last `K - 1` pre-convolution inputs, `[K-1, conv_dim]` (oldest first),
    /// and the recurrent state `S`, `[Hv, dk, dv]`, kept in f32.
    DeltaNet { conv: Vec<f32>, ssm: Vec<f32> },
    /// Full attention: keys and values of every past position, `[len, nKV, head_dim]`
    /// (keys after q/k-norm and RoPE).
    Attention { keys: KvRows, values: KvRows },
}

/// The keys or the values of one attention layer, `[len, nKV, head_dim]`, stored in `format`:
/// half precision unless the model runs in f32, whose point is matching the reference. Decode at
/// long context is bound by reading this cache, and half precision halves those bytes.
#[derive(Clone, Debug)]
pub(crate) struct KvRows {
    format: CacheFormat,
    bytes: Vec<u8>,
}

impl KvRows {
    pub(crate) fn new(format: CacheFormat) -> Self {
        KvRows { format, bytes: Vec::new() }
    }

    pub(crate) fn format(&self) -> CacheFormat {
        self.format
    }

    /// The stored values, in [`format`](Self::format).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of values held.
    pub(crate) fn len(&self) -> usize {
        match self.format {
            CacheFormat::Float(f) => self.bytes.len() / f.bytes(),
            CacheFormat::Q8 => self.bytes.len() / self.format.bytes_for(32) * 32,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Frees the memory (the layer-at-a-time embedding pass drops each layer's cache after use).
    pub(crate) fn release(&mut self) {
        self.bytes = Vec::new();
    }

    /// Appends `values`, rounded to the storage format.
    pub(crate) fn extend(&mut self, values: &[f32]) {
        let start = self.bytes.len();
        self.bytes.resize(start + self.format.bytes_for(values.len()), 0);
        encode_cache(self.format, values, &mut self.bytes[start..]);
    }

    /// Values `start..start + out.len()` as f32 (for Q8, whole blocks).
    pub(crate) fn read(&self, start: usize, out: &mut [f32]) {
        let (from, to) = (self.format.bytes_for(start), self.format.bytes_for(start + out.len()));
        decode_cache(self.format, &self.bytes[from..to], out);
    }

    fn byte_len(&self) -> usize {
        self.bytes.len()
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
}

/// A copy of a [`SessionState`]'s caches (no scratch), to restore later.
#[derive(Clone, Debug)]
pub struct Snapshot {
    layers: Vec<LayerCache>,
    len: usize,
    rope_delta: i64,
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
                    LayerCache::Attention { keys: KvRows::new(kv_format), values: KvRows::new(kv_format) }
                }
            })
            .collect();
        SessionState { layers, len: 0, rope_delta: 0, max_len, scratch: Default::default() }
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
        Snapshot { layers: self.layers.clone(), len: self.len, rope_delta: self.rope_delta }
    }

    /// Returns to a snapshot taken from a state of the same model; a snapshot of another model
    /// is an error and leaves the state untouched.
    pub fn restore(&mut self, snapshot: &Snapshot) -> crate::Result<()> {
        let compatible = self.layers.len() == snapshot.layers.len()
            && self.layers.iter().zip(&snapshot.layers).all(|(a, b)| match (a, b) {
                (LayerCache::DeltaNet { conv: c1, ssm: s1 }, LayerCache::DeltaNet { conv: c2, ssm: s2 }) => {
                    c1.len() == c2.len() && s1.len() == s2.len()
                }
                (LayerCache::Attention { keys: k1, .. }, LayerCache::Attention { keys: k2, .. }) => {
                    k1.format() == k2.format()
                }
                _ => false,
            });
        if !compatible || snapshot.len > self.max_len {
            return Err(crate::Error::InvalidInput(
                "the snapshot was taken from another model (or exceeds this state's context)".into(),
            ));
        }
        self.layers.clone_from(&snapshot.layers);
        self.len = snapshot.len;
        self.rope_delta = snapshot.rope_delta;
        Ok(())
    }

    /// Bytes held by the caches (not counting scratch).
    pub fn cache_bytes(&self) -> usize {
        caches_bytes(&self.layers)
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
        caches_bytes(&self.layers)
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
