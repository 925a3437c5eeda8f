//! The Qwen3.5 text decoder (`Qwen3_5TextModel` + tied LM head).
//!
//! ```text
//! h = embed_tokens[ids]
//! for each layer:  h += mixer(rms_norm(h))        # Gated DeltaNet or gated attention
//!                  h += mlp(rms_norm(h))          # SwiGLU
//! logits = rms_norm(h) @ embed_tokens.T          # only at the positions that need logits
//! ```
//!
//! Qwen3.5's norms multiply by `1 + w` (folded at load); the dense Qwen3 decoder (every layer
//! plain attention, plain `w` norms) runs through the same code, for Qwen3 causal LMs and for
//! Qwen3-Embedding, whose output is the normed hidden state of the last token:
//!
//! ```text
//! embedding = rms_norm(h)[last]                   # before any LM head
//! ```
//!
//! [`Model`] is immutable once loaded and shared by reference; everything a conversation
//! accumulates lives in the [`SessionState`] the caller passes in.
//!
//! Text enters as token ids at text positions (`[len + rope_delta; 3]`, see [`rope`]). A prompt
//! with images or videos enters through [`Model::forward_embedded`]: some embedding rows are
//! replaced by the vision tower's outputs and every token carries its own 3-axis position, as
//! `Qwen3_5Model.forward` does:
//!
//! ```text
//! inputs_embeds = embed_tokens(input_ids)
//! inputs_embeds = inputs_embeds.masked_scatter(input_ids == image_token_id, image_embeds)
//! inputs_embeds = inputs_embeds.masked_scatter(input_ids == video_token_id, video_embeds)
//! position_ids, rope_deltas = get_rope_index(input_ids, image_grid_thw, video_grid_thw)
//! ```

mod attention;
pub mod deltanet;
mod mtp;
pub mod rope;
mod state;

use std::path::Path;

use qwenrt_kernels as k;
use qwenrt_kernels::attention::CacheFormat;

pub use rope::Position3;
pub use state::{SessionState, Snapshot};

use crate::config::{CheckpointLayout, LayerType, ModelConfig};
use crate::error::{Error, Result};
use crate::linear::{load_vector, Linear, LoadOptions, WeightDtype};
use crate::weights::WeightStore;
use attention::{AttentionScratch, GatedAttention};
use deltanet::{DeltaNetScratch, GatedDeltaNet};
use mtp::MtpHead;
use rope::MRope;
use state::{LayerCache, Rollback};

/// Prompt tokens pushed through all layers at once. A multiple of the DeltaNet chunk so that
/// chunk boundaries fall where a single whole-prompt pass would put them. The batch's activations
/// take ~150 KiB per token; at 256 tokens they stay near a twentieth of the int8 weights, while
/// 512 bought only a few percent of prompt speed for twice the memory.
const PREFILL_BATCH: usize = 4 * deltanet::CHUNK;

/// Logit rows computed at once when every position needs logits (bounds memory for big vocabularies).
const LOGIT_ROWS: usize = 16;

/// What a batch returns for each input's last token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BatchOutput {
    Logits,
    Hidden,
}

/// Which positions of a forward pass need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None: only advance the state (e.g. a prompt whose continuation is already known).
    None,
    /// The last position: what generation needs.
    Last,
}

/// A point of the forward pass that [`Model::forward_traced`] shows to its tap, each the
/// output of one transformers module (`Qwen3_5TextModel`'s names, see [`Model::activation_name`]).
/// Every one is `[tokens, hidden_size]`, rows in input order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `embed_tokens(input_ids)`.
    Embeddings,
    /// Layer `i`'s token mixer before the residual add: `linear_attn(...)` or `self_attn(...)[0]`.
    TokenMixer(usize),
    /// Layer `i`'s `mlp(...)` before the residual add.
    Mlp(usize),
    /// The hidden state after layer `i`: `output_hidden_states[i + 1]`.
    Layer(usize),
    /// `norm(h)` at every position: what the LM head (or an embedding model's pooling) reads.
    FinalNorm,
}

/// Sees activations as a forward pass produces them ([`Model::forward_traced`]).
pub type Tap<'a> = &'a mut dyn FnMut(Activation, &[f32]);

/// Embedding rows that take the place of a placeholder token's: the `i`-th occurrence of `token`
/// in the input gets row `i` of `rows` (`[occurrences, hidden_size]`), as transformers'
/// `inputs_embeds.masked_scatter(input_ids == token, rows)` places image and video features.
#[derive(Clone, Copy, Debug)]
pub struct Injection<'a> {
    pub token: u32,
    pub rows: &'a [f32],
}

/// Tokens with explicit M-RoPE positions and some embedding rows replaced: how a prompt with
/// images or videos enters the decoder ([`Model::forward_embedded`]; [`crate::vision`] builds
/// the parts).
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedInput<'a> {
    pub tokens: &'a [u32],
    /// One `(t, h, w)` position per token (`get_rope_index`).
    pub positions: &'a [Position3],
    /// At most one entry per placeholder token; each must bring exactly one row per occurrence.
    pub injections: &'a [Injection<'a>],
    /// [`SessionState::rope_delta`] once the input is consumed: a text token that follows takes
    /// position `len + rope_delta`.
    pub rope_delta: i64,
}

/// Tensor lookup for one decoder layer.
pub(crate) struct LayerWeights<'a> {
    pub store: &'a WeightStore,
    pub prefix: String,
    pub dtype: WeightDtype,
    /// Qwen3.5 stores its RMSNorm weights zero-centred (applied as `1 + w`); Qwen3 plain.
    pub zero_centred_norms: bool,
}

impl LayerWeights<'_> {
    pub fn linear(&self, name: &str, out_features: usize, in_features: usize) -> Result<Linear> {
        Linear::load(self.store, name, out_features, in_features, self.dtype)
    }

    /// A decoder RMSNorm weight as it multiplies: Qwen3.5's zero-centred `w` applied as
    /// `1 + w` (folded here), Qwen3's plain `w`.
    pub fn norm(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let offset = if self.zero_centred_norms { 1.0 } else { 0.0 };
        Ok(load_vector(self.store, name, len)?.into_iter().map(|w| offset + w).collect())
    }
}

/// Returns `v[..n]`, growing `v` first if needed: scratch buffers are sized by first use.
pub(crate) fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// `rms_norm` of each `weight.len()`-wide row of `rows` into the same row of `out`.
fn rms_norm_rows(rows: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (x, y) in rows.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        k::rms_norm(x, weight, eps, y);
    }
}

enum Mixer {
    DeltaNet(GatedDeltaNet),
    Attention(GatedAttention),
}

/// SwiGLU: `down_proj(silu(gate_proj x) * up_proj x)`.
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(w: &LayerWeights, config: &ModelConfig) -> Result<Self> {
        let (hidden, inter) = (config.text.hidden_size, config.text.intermediate_size);
        let name = |n: &str| format!("{}mlp.{n}.weight", w.prefix);
        Ok(Mlp {
            gate_proj: w.linear(&name("gate_proj"), inter, hidden)?,
            up_proj: w.linear(&name("up_proj"), inter, hidden)?,
            down_proj: w.linear(&name("down_proj"), hidden, inter)?,
        })
    }

    fn weight_bytes(&self) -> usize {
        self.gate_proj.bytes() + self.up_proj.bytes() + self.down_proj.bytes()
    }

    /// `t` rows of `x` into `out`, with `gate` and `up` as scratch.
    fn forward(&self, x: &[f32], t: usize, gate: &mut Vec<f32>, up: &mut Vec<f32>, out: &mut [f32]) {
        let inter = self.up_proj.out_features();
        let gate = grow(gate, t * inter);
        self.gate_proj.forward(x, t, gate);
        let up = grow(up, t * inter);
        self.up_proj.forward(x, t, up);
        k::silu_mul(gate, up);
        self.down_proj.forward(gate, t, out);
    }
}

struct DecoderLayer {
    input_layernorm: Vec<f32>,
    mixer: Mixer,
    post_attention_layernorm: Vec<f32>,
    mlp: Mlp,
}

/// Reusable buffers for a forward pass, kept in the session so decoding allocates nothing.
#[derive(Default)]
pub(crate) struct Scratch {
    hidden: Vec<f32>,
    normed: Vec<f32>,
    mixed: Vec<f32>,
    mlp_gate: Vec<f32>,
    mlp_up: Vec<f32>,
    logits: Vec<f32>,
    positions: Vec<Position3>,
    delta: DeltaNetScratch,
    attn: AttentionScratch,
}

/// A loaded Qwen3.5 text decoder.
pub struct Model {
    config: ModelConfig,
    embed_tokens: Linear,
    layers: Vec<DecoderLayer>,
    /// `1 + norm.weight`.
    norm: Vec<f32>,
    /// `None` when the LM head is tied to `embed_tokens` (or absent, see `has_lm_head`).
    lm_head: Option<Linear>,
    /// False for a bare decoder saved without a head (an embedding model).
    has_lm_head: bool,
    rope: MRope,
    /// How attention caches store keys and values (see [`state::KvRows`]).
    kv_format: CacheFormat,
    /// What its states look like ([`state::layout_fingerprint`]).
    state_layout: u64,
    /// The multi-token-prediction head, if the checkpoint has one ([`mtp`]).
    mtp: Option<MtpHead>,
}

impl Model {
    /// Loads `config.json` and the safetensors weights of a model folder in f32, the exactness
    /// mode.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, &LoadOptions::with_dtype(WeightDtype::F32))
    }

    /// Loads a model folder with the given weight precision.
    pub fn load_with(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = WeightStore::open_dir(dir)?;
        Self::from_store_with(config, &store, options)
    }

    /// Builds an f32 model from already opened weights, checking every tensor's shape.
    pub fn from_store(config: ModelConfig, store: &WeightStore) -> Result<Self> {
        Self::from_store_with(config, store, &LoadOptions::with_dtype(WeightDtype::F32))
    }

    /// Builds the model from already opened weights, converting them to `options.dtype`.
    pub fn from_store_with(
        mut config: ModelConfig,
        store: &WeightStore,
        options: &LoadOptions,
    ) -> Result<Self> {
        // sentence-transformers saves a Qwen3 decoder without the `model.` prefix or a head.
        if config.family.saves_bare_decoders()
            && !store.contains("model.embed_tokens.weight")
            && store.contains("embed_tokens.weight")
        {
            config.layout = CheckpointLayout::Bare;
        }
        let zero_centred_norms = config.family.zero_centred_norms();
        let t = &config.text;
        let (hidden, vocab) = (t.hidden_size, t.vocab_size);
        let prefix = config.tensor_prefix();
        let dtype = options.dtype;
        let steps = t.num_hidden_layers as u64 + 1;
        let progress = |done: u64| {
            if let Some(p) = &options.progress {
                p(done, steps)
            }
        };
        // The embedding doubles as the LM head; in int4 mode it stays int8: the head decides
        // every token, and 8 bits keep its logits close to f32 for a quarter of the model's bytes.
        let embed_dtype = if dtype == WeightDtype::Int4 { WeightDtype::Int8 } else { dtype };
        let embed_tokens =
            Linear::load(store, &format!("{prefix}embed_tokens.weight"), vocab, hidden, embed_dtype)?;
        progress(1);
        let mut layers = Vec::with_capacity(t.num_hidden_layers);
        for (i, kind) in config.layer_types.iter().enumerate() {
            let w = LayerWeights { store, prefix: format!("{prefix}layers.{i}."), dtype, zero_centred_norms };
            let mixer = match kind {
                LayerType::LinearAttention => Mixer::DeltaNet(GatedDeltaNet::load(&w, &config)?),
                LayerType::FullAttention => Mixer::Attention(GatedAttention::load(&w, &config)?),
            };
            layers.push(DecoderLayer {
                input_layernorm: w.norm(&format!("{}input_layernorm.weight", w.prefix), hidden)?,
                mixer,
                post_attention_layernorm: w
                    .norm(&format!("{}post_attention_layernorm.weight", w.prefix), hidden)?,
                mlp: Mlp::load(&w, &config)?,
            });
            progress(i as u64 + 2);
        }
        let top = LayerWeights { store, prefix: prefix.to_owned(), dtype, zero_centred_norms };
        let norm = top.norm(&format!("{prefix}norm.weight"), hidden)?;
        let mtp = MtpHead::load(&top, &config)?;
        let headless = config.layout == CheckpointLayout::Bare && !store.contains("lm_head.weight");
        let lm_head = if config.tie_word_embeddings || headless {
            None
        } else {
            Some(Linear::load(store, "lm_head.weight", vocab, hidden, embed_dtype)?)
        };
        let has_lm_head = config.tie_word_embeddings || !headless;
        let rope = MRope::new(&config);
        // Q8 blocks would read half the bytes, but their decode kernel is bound by widening and
        // scaling (see the kernels' `attention_bench`): at 8k tokens both formats decode at the
        // same speed, so the more exact one stays.
        let kv_format = match dtype {
            WeightDtype::F32 => CacheFormat::Float(k::FloatFormat::F32),
            _ => CacheFormat::Float(k::FloatFormat::F16),
        };
        let state_layout = state::layout_fingerprint(&config, kv_format);
        Ok(Model {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            has_lm_head,
            rope,
            kv_format,
            state_layout,
            mtp,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn vocab_size(&self) -> usize {
        self.config.text.vocab_size
    }

    /// The context length the model was trained for (`max_position_embeddings`).
    pub fn max_context(&self) -> usize {
        self.config.text.max_position_embeddings
    }

    /// A fresh, empty conversation state accepting up to `max_context()` tokens.
    pub fn new_state(&self) -> SessionState {
        SessionState::new(&self.config, self.max_context(), self.kv_format)
    }

    /// A fresh state that refuses to grow past `max_len` tokens (bounding KV memory).
    pub fn new_state_with_limit(&self, max_len: usize) -> SessionState {
        SessionState::new(&self.config, max_len.min(self.max_context()), self.kv_format)
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                let mixer = match &l.mixer {
                    Mixer::DeltaNet(m) => m.weight_bytes(),
                    Mixer::Attention(m) => m.weight_bytes(),
                };
                mixer
                    + l.mlp.weight_bytes()
                    + 4 * (l.input_layernorm.len() + l.post_attention_layernorm.len())
            })
            .sum();
        self.embed_tokens.bytes()
            + layers
            + self.norm.len() * 4
            + self.lm_head.as_ref().map_or(0, Linear::bytes)
            + self.mtp.as_ref().map_or(0, MtpHead::weight_bytes)
    }

    /// Name of the element type the decoder's matrices are held in (the first MLP's).
    pub fn weight_dtype(&self) -> &'static str {
        self.layers.first().map_or(self.embed_tokens.dtype_name(), |l| l.mlp.gate_proj.dtype_name())
    }

    /// Name of the element type of the (tied) LM head.
    pub fn lm_head_dtype(&self) -> &'static str {
        self.lm_head().dtype_name()
    }

    /// Feeds `tokens` after what `state` holds and returns the logits of the last one
    /// (`[vocab_size]`), or an empty slice for [`Logits::None`]. A single token takes the
    /// recurrent decode path; several take the chunked prefill path.
    pub fn forward<'s>(
        &self,
        state: &'s mut SessionState,
        tokens: &[u32],
        logits: Logits,
    ) -> Result<&'s [f32]> {
        self.check_input(state, tokens)?;
        if logits != Logits::None {
            self.check_head()?;
        }
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + PREFILL_BATCH).min(tokens.len());
            self.run_one(state, &tokens[start..end]);
            start = end;
        }
        Ok(self.last_logits(state, tokens.len(), logits))
    }

    /// [`forward`](Self::forward) that also hands every [`Activation`] to `tap` as it is
    /// produced, for bisecting a parity failure layer by layer. Inputs longer than one prefill
    /// piece (256 tokens) are shown piece by piece. Plain `forward` passes no tap: the hook
    /// costs it one untaken branch per layer.
    pub fn forward_traced<'s>(
        &self,
        state: &'s mut SessionState,
        tokens: &[u32],
        logits: Logits,
        tap: Tap<'_>,
    ) -> Result<&'s [f32]> {
        self.check_input(state, tokens)?;
        if logits != Logits::None {
            self.check_head()?;
        }
        for piece in tokens.chunks(PREFILL_BATCH) {
            let mut scratch = std::mem::take(&mut state.scratch);
            self.run_layers(&mut [&mut *state], &[piece], &mut scratch, true, Some(&mut *tap));
            state.scratch = scratch;
        }
        Ok(self.last_logits(state, tokens.len(), logits))
    }

    /// Feeds `tokens` (the next token, then drafts of the ones after it) and returns the logits
    /// at each of their positions, `[tokens.len(), vocab_size]`: one pass over the weights checks
    /// every draft. Row `i` is what decoding the tokens one at a time would give after token `i`
    /// (the DeltaNet layers go token by token here, as in decode). The pass is recorded until
    /// anything else is fed, so that [`keep_verified`](Self::keep_verified) can return the state
    /// to any prefix of `tokens`.
    pub fn verify<'s>(&self, state: &'s mut SessionState, tokens: &[u32]) -> Result<&'s [f32]> {
        self.check_input(state, tokens)?;
        self.check_head()?;
        if tokens.is_empty() || tokens.len() > PREFILL_BATCH {
            return Err(Error::InvalidInput(format!(
                "a verification pass takes 1 to {PREFILL_BATCH} tokens, not {}",
                tokens.len()
            )));
        }
        let start = state.len;
        // Keeping the one token of a one-token pass (a step without drafts) keeps everything.
        state.rollback.recording = tokens.len() > 1;
        self.run_one(state, tokens);
        let rollback = &mut state.rollback;
        (rollback.recording, rollback.held, rollback.start, rollback.rows) =
            (false, true, start, tokens.len());
        let (t, hidden, vocab) = (tokens.len(), self.config.text.hidden_size, self.vocab_size());
        let s = &mut state.scratch;
        let normed = grow(&mut s.normed, t * hidden);
        rms_norm_rows(&s.hidden[..t * hidden], &self.norm, self.config.text.rms_norm_eps as f32, normed);
        self.lm_head().forward(normed, t, grow(&mut s.logits, t * vocab));
        Ok(&state.scratch.logits[..t * vocab])
    }

    /// Keeps the first `kept` tokens of the last [`verify`](Self::verify) pass and forgets the
    /// others, leaving the state as if only those had been fed: the DeltaNet states are replayed
    /// from the pass's record, the attention caches cut.
    pub fn keep_verified(&self, state: &mut SessionState, kept: usize) -> Result<()> {
        self.check_state(state)?;
        let Rollback { held, start, rows, .. } = state.rollback;
        if !held {
            return Err(Error::InvalidInput(
                "no verification pass to keep tokens of (something else was fed since)".into(),
            ));
        }
        if kept == 0 || kept > rows {
            return Err(Error::InvalidInput(format!("kept {kept} of a verification pass of {rows} tokens")));
        }
        state.rollback.held = false;
        if kept == rows {
            return Ok(());
        }
        for (l, layer) in self.layers.iter().enumerate() {
            match (&layer.mixer, &mut state.layers[l]) {
                (Mixer::DeltaNet(m), LayerCache::DeltaNet { conv, ssm }) => {
                    m.roll_back(&state.rollback.layers[l], kept, conv, ssm)
                }
                (Mixer::Attention(_), LayerCache::Attention { keys, values }) => {
                    keys.truncate(start + kept);
                    values.truncate(start + kept);
                }
                _ => unreachable!("session state was made for another model"),
            }
        }
        state.len = start + kept;
        if let Some(mtp) = &mut state.mtp {
            let waiting = state.len - mtp.filled();
            mtp.truncate_waiting(waiting, self.config.text.hidden_size);
        }
        Ok(())
    }

    /// The transformers name of an activation, relative to the decoder
    /// (`layers.3.linear_attn`, `layers.1.self_attn`, `layers.0.mlp`, `layers.5`, `norm`).
    pub fn activation_name(&self, activation: Activation) -> String {
        match activation {
            Activation::Embeddings => "embed_tokens".into(),
            Activation::TokenMixer(i) => match self.config.layer_types[i] {
                LayerType::LinearAttention => format!("layers.{i}.linear_attn"),
                LayerType::FullAttention => format!("layers.{i}.self_attn"),
            },
            Activation::Mlp(i) => format!("layers.{i}.mlp"),
            Activation::Layer(i) => format!("layers.{i}"),
            Activation::FinalNorm => "norm".into(),
        }
    }

    /// [`forward`](Self::forward) for a prompt whose placeholder tokens take given embedding
    /// rows (images, videos) and whose tokens sit at given M-RoPE positions. Long inputs are
    /// prefilled in the same pieces as by `forward`, positions and rows sliced to each piece.
    /// Afterwards the state decodes at `len + input.rope_delta`. Everything is checked before
    /// the state is touched.
    pub fn forward_embedded<'s>(
        &self,
        state: &'s mut SessionState,
        input: &EmbeddedInput<'_>,
        logits: Logits,
    ) -> Result<&'s [f32]> {
        let tokens = input.tokens;
        self.check_input(state, tokens)?;
        if logits != Logits::None {
            self.check_head()?;
        }
        self.check_embedded(input)?;
        if tokens.is_empty() {
            return Ok(&[]);
        }
        let hidden = self.config.text.hidden_size;
        // Rows of each injection used so far.
        let mut used = vec![0usize; input.injections.len()];
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + PREFILL_BATCH).min(tokens.len());
            let piece = &tokens[start..end];
            let mut s = std::mem::take(&mut state.scratch);
            // inputs_embeds = embed_tokens(input_ids), then masked_scatter of the features
            let h = grow(&mut s.hidden, piece.len() * hidden);
            for (row, &id) in h.chunks_exact_mut(hidden).zip(piece) {
                match input.injections.iter().position(|inj| inj.token == id) {
                    Some(j) => {
                        let r = used[j];
                        row.copy_from_slice(&input.injections[j].rows[r * hidden..(r + 1) * hidden]);
                        used[j] += 1;
                    }
                    None => self.embed_tokens.row(id as usize, row),
                }
            }
            s.positions.clear();
            s.positions.extend_from_slice(&input.positions[start..end]);
            self.run_stack(&mut [&mut *state], std::iter::once(piece.len()), &mut s, true, None);
            self.keep_for_drafts(&mut [&mut *state], &[piece], &mut s);
            state.scratch = s;
            start = end;
        }
        state.rope_delta = input.rope_delta;
        Ok(self.last_logits(state, tokens.len(), logits))
    }

    /// The logits of the last of `n` tokens just fed in pieces of `PREFILL_BATCH` (its hidden
    /// row is in the last piece's output), or nothing for [`Logits::None`].
    fn last_logits<'s>(&self, state: &'s mut SessionState, n: usize, logits: Logits) -> &'s [f32] {
        let vocab = self.vocab_size();
        if logits == Logits::None || n == 0 {
            return &[];
        }
        let hidden = self.config.text.hidden_size;
        let t_last = n - (n - 1) / PREFILL_BATCH * PREFILL_BATCH;
        let s = &mut state.scratch;
        let last = &s.hidden[(t_last - 1) * hidden..t_last * hidden];
        let normed = grow(&mut s.normed, hidden);
        k::rms_norm(last, &self.norm, self.config.text.rms_norm_eps as f32, normed);
        let out = grow(&mut s.logits, vocab);
        self.lm_head().forward(normed, 1, out);
        &state.scratch.logits[..vocab]
    }

    /// Feeds `tokens` and hands the logits of every position to `sink(position_in_tokens, logits)`,
    /// in order; memory stays bounded however long `tokens` is (used for scoring).
    pub fn forward_all(
        &self,
        state: &mut SessionState,
        tokens: &[u32],
        mut sink: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.check_input(state, tokens)?;
        self.check_head()?;
        let hidden = self.config.text.hidden_size;
        let vocab = self.vocab_size();
        let eps = self.config.text.rms_norm_eps as f32;
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + PREFILL_BATCH).min(tokens.len());
            self.run_one(state, &tokens[start..end]);
            let s = &mut state.scratch;
            for r0 in (0..end - start).step_by(LOGIT_ROWS) {
                let rows = LOGIT_ROWS.min(end - start - r0);
                let normed = grow(&mut s.normed, rows * hidden);
                rms_norm_rows(&s.hidden[r0 * hidden..(r0 + rows) * hidden], &self.norm, eps, normed);
                let out = grow(&mut s.logits, rows * vocab);
                self.lm_head().forward(normed, rows, out);
                for r in 0..rows {
                    sink(start + r0 + r, &out[r * vocab..(r + 1) * vocab]);
                }
            }
            start = end;
        }
        Ok(())
    }

    fn lm_head(&self) -> &Linear {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Feeds several sequences at once, `inputs[i]` after what `states[i]` holds, and returns
    /// the logits of each input's last token, `[states.len(), vocab_size]`. Every weight matrix
    /// is read once for the whole batch, which is what makes serving several conversations
    /// cheaper than serving them in turn. Each result equals [`forward`](Self::forward) of that
    /// sequence alone (up to float rounding of the batched products). Inputs are checked before
    /// anything runs: an error leaves every state untouched.
    pub fn forward_batch<'s>(
        &self,
        states: &'s mut [&mut SessionState],
        inputs: &[&[u32]],
    ) -> Result<&'s [f32]> {
        self.check_head()?;
        self.last_rows_batch(states, inputs, BatchOutput::Logits)
    }

    /// [`forward_batch`](Self::forward_batch) for a step in which some sequences verify drafts:
    /// where `verify[i]` is set, `inputs[i]` is a verification pass as [`verify`](Self::verify)
    /// makes it (recorded for [`keep_verified`](Self::keep_verified), with logits at every one
    /// of its positions); the other inputs are fed as by `forward_batch`. Returns the logit rows
    /// in input order, `[rows, vocab_size]`: `inputs[i].len()` rows for a verified input, one
    /// (after its last token) for another. An error leaves every state untouched.
    pub fn verify_batch<'s>(
        &self,
        states: &'s mut [&mut SessionState],
        inputs: &[&[u32]],
        verify: &[bool],
    ) -> Result<&'s [f32]> {
        self.check_head()?;
        if states.len() != inputs.len() || verify.len() != inputs.len() {
            return Err(Error::InvalidInput(format!(
                "{} states, {} inputs and {} verification flags in a batch",
                states.len(),
                inputs.len(),
                verify.len()
            )));
        }
        for (i, (state, input)) in states.iter().zip(inputs).enumerate() {
            if input.is_empty() || (verify[i] && input.len() > PREFILL_BATCH) {
                return Err(Error::InvalidInput(format!(
                    "input {i} of the batch has {} tokens (a verification pass takes 1 to {PREFILL_BATCH})",
                    input.len()
                )));
            }
            self.check_input(state, input)
                .map_err(|e| Error::InvalidInput(format!("input {i} of the batch: {e}")))?;
        }
        if states.is_empty() {
            return Ok(&[]);
        }
        let (hidden, vocab) = (self.config.text.hidden_size, self.vocab_size());
        // Where each input's output rows start.
        let first_row: Vec<usize> = inputs
            .iter()
            .zip(verify)
            .scan(0, |row, (input, &v)| {
                let first = *row;
                *row += if v { input.len() } else { 1 };
                Some(first)
            })
            .collect();
        let out_rows = first_row.last().copied().unwrap_or(0)
            + if verify[inputs.len() - 1] { inputs[inputs.len() - 1].len() } else { 1 };
        let starts: Vec<usize> = states.iter().map(|s| s.len).collect();
        for (state, (input, &v)) in states.iter_mut().zip(inputs.iter().zip(verify)) {
            // Recorded through every piece below; one-token passes keep everything anyway.
            state.rollback.recording = v && input.len() > 1;
        }
        let mut scratch = std::mem::take(&mut states[0].scratch);
        let mut out = vec![0.0f32; out_rows * hidden];
        let mut done = vec![0usize; inputs.len()];
        loop {
            // A verification pass goes whole into the first piece (its record covers one
            // call); the others share the piece budget as in forward_batch.
            let mut budget = PREFILL_BATCH;
            let pieces: Vec<&[u32]> = inputs
                .iter()
                .enumerate()
                .map(|(i, input)| {
                    let left = input.len() - done[i];
                    let take = if verify[i] { left } else { left.min(budget.max(1)) };
                    budget = budget.saturating_sub(take);
                    &input[done[i]..done[i] + take]
                })
                .collect();
            if pieces.iter().all(|p| p.is_empty()) {
                break;
            }
            self.run_layers(states, &pieces, &mut scratch, true, None);
            let mut row = 0;
            for (i, piece) in pieces.iter().enumerate() {
                let rows = row..row + piece.len();
                row = rows.end;
                done[i] += piece.len();
                let to = first_row[i] * hidden;
                if verify[i] && !piece.is_empty() {
                    out[to..to + piece.len() * hidden]
                        .copy_from_slice(&scratch.hidden[rows.start * hidden..rows.end * hidden]);
                } else if !piece.is_empty() && done[i] == inputs[i].len() {
                    out[to..to + hidden]
                        .copy_from_slice(&scratch.hidden[(rows.end - 1) * hidden..rows.end * hidden]);
                }
            }
        }
        for ((state, input), (&v, &start)) in states.iter_mut().zip(inputs).zip(verify.iter().zip(&starts)) {
            if v {
                let rollback = &mut state.rollback;
                (rollback.recording, rollback.held, rollback.start, rollback.rows) =
                    (false, true, start, input.len());
            }
        }
        let normed = grow(&mut scratch.normed, out_rows * hidden);
        rms_norm_rows(&out, &self.norm, self.config.text.rms_norm_eps as f32, normed);
        self.lm_head().forward(normed, out_rows, grow(&mut scratch.logits, out_rows * vocab));
        states[0].scratch = scratch;
        Ok(&states[0].scratch.logits[..out_rows * vocab])
    }

    /// Feeds each input into its (normally fresh) state and returns the final-normed hidden
    /// state of each input's last token, `[states.len(), hidden_size]`: what an embedding
    /// model pools. The whole batch goes through one layer at a time and each attention layer's
    /// keys and values are dropped once used, so memory stays at one layer's worth however long
    /// the inputs; the states are left empty.
    pub fn last_hidden_batch<'s>(
        &self,
        states: &'s mut [&mut SessionState],
        inputs: &[&[u32]],
    ) -> Result<&'s [f32]> {
        self.last_rows_batch(states, inputs, BatchOutput::Hidden)
    }

    fn last_rows_batch<'s>(
        &self,
        states: &'s mut [&mut SessionState],
        inputs: &[&[u32]],
        output: BatchOutput,
    ) -> Result<&'s [f32]> {
        if states.len() != inputs.len() {
            return Err(Error::InvalidInput(format!(
                "{} states but {} inputs in a batch",
                states.len(),
                inputs.len()
            )));
        }
        if states.is_empty() {
            return Ok(&[]);
        }
        for (i, (state, input)) in states.iter().zip(inputs).enumerate() {
            if input.is_empty() {
                return Err(Error::InvalidInput(format!("input {i} of the batch is empty")));
            }
            self.check_input(state, input)
                .map_err(|e| Error::InvalidInput(format!("input {i} of the batch: {e}")))?;
        }
        let hidden = self.config.text.hidden_size;
        let eps = self.config.text.rms_norm_eps as f32;
        let n = states.len();
        let mut scratch = std::mem::take(&mut states[0].scratch);
        // Generation feeds long inputs in pieces so the activations stay bounded; only the
        // piece holding an input's last token leaves a row for the output. Embeddings go whole,
        // layer by layer, keeping no cache.
        let (piece_budget, keep_cache) = match output {
            BatchOutput::Logits => (PREFILL_BATCH, true),
            BatchOutput::Hidden => (usize::MAX, false),
        };
        let mut done = vec![0usize; n];
        let mut last_rows = vec![0.0f32; n * hidden];
        loop {
            let mut budget = piece_budget;
            let mut pieces: Vec<&[u32]> = Vec::with_capacity(n);
            for (i, input) in inputs.iter().enumerate() {
                let take = (input.len() - done[i]).min(budget.max(1));
                budget = budget.saturating_sub(take);
                pieces.push(&input[done[i]..done[i] + take]);
            }
            if pieces.iter().all(|p| p.is_empty()) {
                break;
            }
            self.run_layers(states, &pieces, &mut scratch, keep_cache, None);
            let mut row = 0;
            for (i, piece) in pieces.iter().enumerate() {
                row += piece.len();
                done[i] += piece.len();
                if !piece.is_empty() && done[i] == inputs[i].len() {
                    last_rows[i * hidden..(i + 1) * hidden]
                        .copy_from_slice(&scratch.hidden[(row - 1) * hidden..row * hidden]);
                }
            }
        }
        let normed = grow(&mut scratch.normed, n * hidden);
        rms_norm_rows(&last_rows, &self.norm, eps, normed);
        let len = match output {
            BatchOutput::Logits => {
                let vocab = self.vocab_size();
                self.lm_head().forward(normed, n, grow(&mut scratch.logits, n * vocab));
                n * vocab
            }
            BatchOutput::Hidden => {
                grow(&mut scratch.logits, n * hidden).copy_from_slice(normed);
                n * hidden
            }
        };
        if !keep_cache {
            for state in states.iter_mut() {
                state.reset();
            }
        }
        states[0].scratch = scratch;
        Ok(&states[0].scratch.logits[..len])
    }

    fn check_head(&self) -> Result<()> {
        if self.has_lm_head {
            return Ok(());
        }
        Err(Error::InvalidInput(
            "this model has no LM head (a bare decoder, e.g. an embedding model): it gives \
             embeddings, not next-token logits"
                .into(),
        ))
    }

    fn check_state(&self, state: &SessionState) -> Result<()> {
        if state.layout != self.state_layout {
            return Err(Error::InvalidInput(
                "the session state was made for another model (or another cache precision): \
                 make one with this model's new_state()"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_input(&self, state: &SessionState, tokens: &[u32]) -> Result<()> {
        self.check_state(state)?;
        let vocab = self.vocab_size();
        if let Some((i, &id)) = tokens.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {id} at position {i} is outside the vocabulary (size {vocab})"
            )));
        }
        if state.len + tokens.len() > state.max_len {
            return Err(Error::InvalidInput(format!(
                "{} tokens after the {} already in context exceed the context length of {}",
                tokens.len(),
                state.len,
                state.max_len
            )));
        }
        Ok(())
    }

    /// Checks what [`forward_embedded`](Self::forward_embedded) needs beyond the token ids: a
    /// position per token and exactly one row per occurrence of each injected token.
    fn check_embedded(&self, input: &EmbeddedInput<'_>) -> Result<()> {
        let hidden = self.config.text.hidden_size;
        if input.positions.len() != input.tokens.len() {
            return Err(Error::InvalidInput(format!(
                "{} positions for {} tokens",
                input.positions.len(),
                input.tokens.len()
            )));
        }
        for (j, inj) in input.injections.iter().enumerate() {
            if input.injections[..j].iter().any(|other| other.token == inj.token) {
                return Err(Error::InvalidInput(format!("token {} is injected twice", inj.token)));
            }
            let occurrences = input.tokens.iter().filter(|&&id| id == inj.token).count();
            if inj.rows.len() != occurrences * hidden {
                return Err(Error::InvalidInput(format!(
                    "{} values injected for token {}, but it occurs {occurrences} times and rows have {hidden} values",
                    inj.rows.len(),
                    inj.token
                )));
            }
        }
        Ok(())
    }

    /// Runs one piece of a single sequence through every layer with the state's own scratch.
    fn run_one(&self, state: &mut SessionState, tokens: &[u32]) {
        let mut scratch = std::mem::take(&mut state.scratch);
        self.run_layers(&mut [&mut *state], &[tokens], &mut scratch, true, None);
        state.scratch = scratch;
    }

    /// Runs a batch through every layer: `inputs[i]` (possibly empty) continues the sequence
    /// of `states[i]`. Rows of all inputs are stacked, so each weight matrix is read once; the
    /// token mixers then run each sequence on its own caches. Leaves the final hidden states
    /// (before the final norm) in `s.hidden`, rows in input order, and advances the caches
    /// (attention caches are emptied after each layer unless `keep_cache`).
    fn run_layers(
        &self,
        states: &mut [&mut SessionState],
        inputs: &[&[u32]],
        s: &mut Scratch,
        keep_cache: bool,
        tap: Option<Tap<'_>>,
    ) {
        let t: usize = inputs.iter().map(|i| i.len()).sum();
        let hidden_size = self.config.text.hidden_size;

        // inputs_embeds = self.embed_tokens(input_ids)
        let h = grow(&mut s.hidden, t * hidden_size);
        for (row, &id) in h.chunks_exact_mut(hidden_size).zip(inputs.iter().flat_map(|i| i.iter())) {
            self.embed_tokens.row(id as usize, row);
        }
        // Text positions: every M-RoPE axis carries the token index, shifted by the state's
        // rope delta (0 unless an image came before: position_ids = arange(len) + rope_deltas).
        s.positions.clear();
        for (state, input) in states.iter().zip(inputs) {
            let first = state.len as i64 + state.rope_delta;
            s.positions.extend((0..input.len() as i64).map(|i| [first + i; 3]));
        }
        self.run_stack(states, inputs.iter().map(|i| i.len()), s, keep_cache, tap);
        self.keep_for_drafts(states, inputs, s);
    }

    /// Hands each drafting state ([`Model::enable_drafting`]) the final-normed outputs of its
    /// rows just run, with their tokens and positions: what its MTP head pairs up next.
    fn keep_for_drafts(&self, states: &mut [&mut SessionState], inputs: &[&[u32]], s: &mut Scratch) {
        if states.iter().all(|state| state.mtp.is_none()) {
            return;
        }
        let hidden = self.config.text.hidden_size;
        let eps = self.config.text.rms_norm_eps as f32;
        let mut start = 0;
        for (state, input) in states.iter_mut().zip(inputs) {
            let rows = start..start + input.len();
            start = rows.end;
            if let Some(mtp) = &mut state.mtp {
                let normed = grow(&mut s.normed, rows.len() * hidden);
                rms_norm_rows(&s.hidden[rows.start * hidden..rows.end * hidden], &self.norm, eps, normed);
                mtp.push(normed, input, &s.positions[rows]);
            }
        }
    }

    /// The decoder layers over rows already embedded in `s.hidden` at `s.positions`: the `i`-th
    /// length of `lens` is how many of the next rows continue `states[i]`. See
    /// [`run_layers`](Self::run_layers).
    fn run_stack(
        &self,
        states: &mut [&mut SessionState],
        lens: impl Iterator<Item = usize> + Clone,
        s: &mut Scratch,
        keep_cache: bool,
        mut tap: Option<Tap<'_>>,
    ) {
        let t: usize = lens.clone().sum();
        let hidden_size = self.config.text.hidden_size;
        let eps = self.config.text.rms_norm_eps as f32;
        for state in states.iter_mut() {
            state.rollback.held &= state.rollback.recording;
        }
        let tapped = tap.is_some();
        let mut show = |activation: Activation, rows: &[f32]| {
            if let Some(tap) = tap.as_deref_mut() {
                tap(activation, rows)
            }
        };
        show(Activation::Embeddings, &s.hidden[..t * hidden_size]);

        for (l, layer) in self.layers.iter().enumerate() {
            let normed = grow(&mut s.normed, t * hidden_size);
            rms_norm_rows(&s.hidden[..t * hidden_size], &layer.input_layernorm, eps, normed);
            let mixed = grow(&mut s.mixed, t * hidden_size);
            let sequences = states.iter_mut().zip(lens.clone()).scan(0, |row, (state, len)| {
                let rows = *row..*row + len;
                *row = rows.end;
                Some((rows, &mut **state))
            });
            match &layer.mixer {
                Mixer::DeltaNet(m) => {
                    m.project(normed, t, &mut s.delta);
                    for (rows, state) in sequences.filter(|(rows, _)| !rows.is_empty()) {
                        let LayerCache::DeltaNet { conv, ssm } = &mut state.layers[l] else {
                            unreachable!("session state was made for another model")
                        };
                        let record = state.rollback.recording.then(|| state.rollback.layer(l));
                        m.mix_sequence(rows, conv, ssm, &mut s.delta, record);
                    }
                    m.output(t, &mut s.delta, mixed);
                }
                Mixer::Attention(m) => {
                    m.project(normed, t, &mut s.attn);
                    for (rows, state) in sequences.filter(|(rows, _)| !rows.is_empty()) {
                        let LayerCache::Attention { keys, values } = &mut state.layers[l] else {
                            unreachable!("session state was made for another model")
                        };
                        let positions = &s.positions[rows.clone()];
                        m.attend_sequence(rows, positions, &self.rope, keys, values, &mut s.attn);
                        if !keep_cache {
                            keys.release();
                            values.release();
                        }
                    }
                    m.output(t, &mut s.attn, mixed);
                }
            }
            show(Activation::TokenMixer(l), mixed);
            let h = &mut s.hidden[..t * hidden_size];
            k::add_assign(h, mixed);

            rms_norm_rows(h, &layer.post_attention_layernorm, eps, normed);
            layer.mlp.forward(normed, t, &mut s.mlp_gate, &mut s.mlp_up, mixed);
            show(Activation::Mlp(l), mixed);
            k::add_assign(h, mixed);
            show(Activation::Layer(l), h);
        }
        if tapped {
            let normed = grow(&mut s.normed, t * hidden_size);
            rms_norm_rows(&s.hidden[..t * hidden_size], &self.norm, eps, normed);
            show(Activation::FinalNorm, normed);
        }
        for (state, len) in states.iter_mut().zip(lens) {
            state.len += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_causal() -> Model {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/tiny-causal");
        Model::load(&dir).expect("fixture model loads")
    }

    fn prompt(len: usize, vocab: usize) -> Vec<u32> {
        (0..len).map(|i| ((i * 7919 + 13) % (vocab - 3) + 3) as u32).collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Worst difference between two states' caches, with the kind of cache it was in.
    fn state_diff(a: &SessionState, b: &SessionState) -> (f32, f32, f32) {
        let (mut conv_d, mut ssm_d, mut kv_d) = (0.0f32, 0.0f32, 0.0f32);
        for (x, y) in a.layer_caches().iter().zip(b.layer_caches()) {
            match (x, y) {
                (LayerCache::DeltaNet { conv: c1, ssm: s1 }, LayerCache::DeltaNet { conv: c2, ssm: s2 }) => {
                    conv_d = conv_d.max(max_diff(c1, c2));
                    ssm_d = ssm_d.max(max_diff(s1, s2));
                }
                (
                    LayerCache::Attention { keys: k1, values: v1 },
                    LayerCache::Attention { keys: k2, values: v2 },
                ) => {
                    let f32s = |rows: &state::KvRows| rows.values();
                    kv_d = kv_d.max(max_diff(&f32s(k1), &f32s(k2))).max(max_diff(&f32s(v1), &f32s(v2)));
                }
                _ => panic!("layer kinds differ"),
            }
        }
        (conv_d, ssm_d, kv_d)
    }

    /// The chunked prefill path and the token-by-token recurrent decode path reach the same
    /// logits and the same states, on both sides of the 64-token chunk boundary.
    #[test]
    fn chunked_prefill_equals_token_by_token_decode() {
        let model = tiny_causal();
        for len in [1usize, 63, 64, 65, 333] {
            let ids = prompt(len, model.vocab_size());
            let mut chunked = model.new_state();
            let logits_chunked = model.forward(&mut chunked, &ids, Logits::Last).unwrap().to_vec();
            let mut stepped = model.new_state();
            let mut logits_stepped = Vec::new();
            for &id in &ids {
                logits_stepped = model.forward(&mut stepped, &[id], Logits::Last).unwrap().to_vec();
            }
            assert_eq!(chunked.len(), stepped.len());
            let dl = max_diff(&logits_chunked, &logits_stepped);
            let (conv, ssm, kv) = state_diff(&chunked, &stepped);
            assert!(
                dl < 1e-3 && conv < 1e-4 && ssm < 1e-4 && kv < 1e-4,
                "len {len}: logits {dl}, conv {conv}, ssm {ssm}, kv {kv}"
            );
        }
    }

    /// Prefilling in several calls continues exactly where a single call would be.
    #[test]
    fn prefill_in_pieces_equals_one_call() {
        let model = tiny_causal();
        let ids = prompt(200, model.vocab_size());
        let mut whole = model.new_state();
        let want = model.forward(&mut whole, &ids, Logits::Last).unwrap().to_vec();
        let mut pieces = model.new_state();
        model.forward(&mut pieces, &ids[..70], Logits::None).unwrap();
        model.forward(&mut pieces, &ids[70..71], Logits::None).unwrap();
        let got = model.forward(&mut pieces, &ids[71..], Logits::Last).unwrap().to_vec();
        assert!(max_diff(&want, &got) < 1e-3, "{}", max_diff(&want, &got));
    }

    #[test]
    fn snapshot_restore_then_continue_equals_continue() {
        let model = tiny_causal();
        let ids = prompt(100, model.vocab_size());
        let mut state = model.new_state();
        model.forward(&mut state, &ids[..80], Logits::None).unwrap();
        let snap = state.snapshot();
        let want = model.forward(&mut state, &ids[80..], Logits::Last).unwrap().to_vec();
        // Wander off, then come back.
        model.forward(&mut state, &ids[..5], Logits::None).unwrap();
        state.restore(&snap).unwrap();
        assert_eq!(state.len(), 80);
        let got = model.forward(&mut state, &ids[80..], Logits::Last).unwrap().to_vec();
        assert_eq!(want, got, "restored state must continue bit for bit");
        state.reset();
        assert!(state.is_empty());
    }

    /// A batch of sequences at different depths, mixing prompt pieces and single tokens,
    /// gives each sequence the logits and the state it would get alone.
    #[test]
    fn batch_equals_single() {
        let model = tiny_causal();
        let vocab = model.vocab_size();
        let ids = prompt(400, vocab);
        let histories = [&ids[..0], &ids[10..75], &ids[100..101], &ids[200..330]];
        let inputs: [&[u32]; 4] = [&ids[5..9], &ids[80..81], &ids[150..290], &ids[340..341]];
        let mut alone = Vec::new();
        let mut batch_states = Vec::new();
        for (history, input) in histories.iter().zip(inputs) {
            let mut state = model.new_state();
            if !history.is_empty() {
                model.forward(&mut state, history, Logits::None).unwrap();
            }
            batch_states.push(model.new_state());
            let b = batch_states.last_mut().unwrap();
            if !history.is_empty() {
                model.forward(b, history, Logits::None).unwrap();
            }
            let logits = model.forward(&mut state, input, Logits::Last).unwrap().to_vec();
            alone.push((logits, state));
        }
        let mut refs: Vec<&mut SessionState> = batch_states.iter_mut().collect();
        let batched = model.forward_batch(&mut refs, &inputs).unwrap().to_vec();
        for (i, (want, state)) in alone.iter().enumerate() {
            let got = &batched[i * vocab..(i + 1) * vocab];
            assert!(max_diff(want, got) < 1e-3, "sequence {i}: {}", max_diff(want, got));
            // Stacked, the rows take the blocked kernels where a short input alone takes the row
            // kernels: the sums round differently.
            let (conv, ssm, kv) = state_diff(state, &batch_states[i]);
            assert!(conv < 1e-4 && ssm < 1e-4 && kv < 1e-4, "sequence {i}: {conv} {ssm} {kv}");
            assert_eq!(state.len(), batch_states[i].len());
        }
        // A batch with one bad input changes nothing.
        let lens: Vec<usize> = batch_states.iter().map(|s| s.len()).collect();
        let mut refs: Vec<&mut SessionState> = batch_states.iter_mut().collect();
        let bad: [&[u32]; 4] = [&ids[..1], &ids[..1], &[vocab as u32], &ids[..1]];
        let e = model.forward_batch(&mut refs, &bad).unwrap_err().to_string();
        assert!(e.contains("input 2 of the batch") && e.contains("outside the vocabulary"), "{e}");
        assert_eq!(lens, batch_states.iter().map(|s| s.len()).collect::<Vec<_>>());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let model = tiny_causal();
        let mut state = model.new_state_with_limit(10);
        let e = model.forward(&mut state, &[model.vocab_size() as u32], Logits::Last).unwrap_err();
        assert!(e.to_string().contains("outside the vocabulary"), "{e}");
        let e = model.forward(&mut state, &prompt(11, model.vocab_size()), Logits::Last).unwrap_err();
        assert!(e.to_string().contains("exceed the context length of 10"), "{e}");
        assert!(state.is_empty(), "a rejected call leaves the state untouched");
    }
}
