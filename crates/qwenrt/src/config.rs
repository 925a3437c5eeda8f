//! `config.json` of a model folder, mirrored key for key and validated.
//!
//! Qwen3.5 comes in two layouts: the published checkpoints (`Qwen3_5ForConditionalGeneration`,
//! `model_type: qwen3_5`) nest the decoder's keys under `text_config`; text-only exports
//! (`Qwen3_5ForCausalLM`, `model_type: qwen3_5_text`) keep them at the top level. The dense
//! Qwen3 decoder (`model_type: qwen3`, e.g. Qwen3-Embedding) is the same decoder with full
//! attention in every layer, no output gate, full-width RoPE and plain `w` norms.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Most decoder layers a config may declare (checked before anything per layer is built).
const MAX_LAYERS: usize = 1024;
/// Most attention heads (query, key/value, DeltaNet) a config may declare.
const MAX_HEADS: usize = 1024;
/// Largest head dimension: the kernels keep a head's row in a fixed buffer of this size.
const MAX_HEAD_DIM: usize = crate::model::deltanet::MAX_HEAD_DIM;

/// Which kind of token mixer a decoder layer uses (`layer_types` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Gated DeltaNet (`linear_attention`).
    LinearAttention,
    /// Gated softmax attention (`full_attention`).
    FullAttention,
}

/// Which decoder family the folder holds, decided once from `config.json`'s `model_type`.
/// Everything that differs between families is asked of this value (see ARCHITECTURE.md,
/// "Adding a model family"); nothing else tests which family a model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Qwen3.5: Gated DeltaNet and gated attention layers, zero-centred `(1 + w)` norms.
    Qwen3_5,
    /// Qwen3 (dense): plain attention in every layer, plain `w` norms.
    Qwen3,
}

/// The chat template's fixed pieces a session relies on (ChatML with Qwen's think tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatMarkers {
    /// What every rendering of an assistant turn starts with: the state after it survives
    /// re-rendering the conversation.
    pub assistant_header: &'static str,
    /// A prompt ending with this opens a thought.
    pub think_open: &'static str,
    /// The token that closes a thought.
    pub think_close: &'static str,
    /// What the template puts between a thought and the answer.
    pub answer_separator: &'static str,
}

const CHATML_WITH_THINKING: ChatMarkers = ChatMarkers {
    assistant_header: "<|im_start|>assistant\n",
    think_open: "<think>\n",
    think_close: "</think>",
    answer_separator: "\n\n",
};

impl Family {
    /// RMSNorm weights stored zero-centred: the layer scales by `1 + w` (folded at load).
    pub fn zero_centred_norms(self) -> bool {
        matches!(self, Family::Qwen3_5)
    }

    /// The pre-tokenizer regex transformers applies whatever tokenizer.json says, if any.
    pub fn pretokenizer(self) -> Option<&'static str> {
        match self {
            Family::Qwen3_5 => Some(crate::tokenizer::QWEN3_5_PRETOKENIZE_REGEX),
            Family::Qwen3 => None,
        }
    }

    /// How the family's chat template asks for tool calls.
    pub fn tool_call_format(self) -> crate::tool_calls::ToolCallFormat {
        match self {
            Family::Qwen3_5 => crate::tool_calls::ToolCallFormat::Xml,
            Family::Qwen3 => crate::tool_calls::ToolCallFormat::Json,
        }
    }

    pub fn chat_markers(self) -> ChatMarkers {
        CHATML_WITH_THINKING
    }

    /// Whether folders of this family may hold a bare decoder (sentence-transformers saves
    /// Qwen3-Embedding without the `model.` prefix and without a head).
    pub fn saves_bare_decoders(self) -> bool {
        matches!(self, Family::Qwen3)
    }
}

/// The tensor layout of the checkpoint, which decides the tensor name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// `Qwen3_5ForConditionalGeneration`: decoder under `model.language_model.`, plus
    /// `model.visual.*` and `mtp.*`.
    ConditionalGeneration,
    /// `Qwen3_5ForCausalLM` / `Qwen3ForCausalLM`: decoder under `model.`.
    CausalLm,
    /// A bare decoder (`Qwen3Model`, as sentence-transformers saves it): no prefix, no LM head.
    Bare,
}

/// Rotary embedding parameters (`rope_parameters`, or the legacy `rope_theta`/`rope_scaling`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: f64,
    #[serde(default = "default_partial_rotary_factor")]
    pub partial_rotary_factor: f64,
    #[serde(default = "default_mrope_section")]
    pub mrope_section: Vec<usize>,
    #[serde(default = "default_true")]
    pub mrope_interleaved: bool,
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
}

fn default_partial_rotary_factor() -> f64 {
    0.25
}
fn default_mrope_section() -> Vec<usize> {
    vec![11, 11, 10]
}
fn default_true() -> bool {
    true
}
fn default_rope_type() -> String {
    "default".into()
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_conv_kernel() -> usize {
    4
}
fn default_max_positions() -> usize {
    262_144
}

/// The text decoder's configuration (`Qwen3_5TextConfig`). Field names are the config.json keys.
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default = "default_true")]
    pub attn_output_gate: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub full_attention_interval: Option<usize>,
    /// Decoder layers of the multi-token-prediction head (`mtp.layers.*`); Qwen3.5 ships one.
    #[serde(default)]
    pub mtp_num_hidden_layers: usize,
    /// Whether the MTP head has an embedding of its own (no published checkpoint does).
    #[serde(default)]
    pub mtp_use_dedicated_embeddings: bool,
    #[serde(default = "default_conv_kernel")]
    pub linear_conv_kernel_dim: usize,
    #[serde(default)]
    pub linear_key_head_dim: usize,
    #[serde(default)]
    pub linear_value_head_dim: usize,
    #[serde(default)]
    pub linear_num_key_heads: usize,
    #[serde(default)]
    pub linear_num_value_heads: usize,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    // Legacy spelling of the rotary parameters, from configs written before `rope_parameters`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// Qwen3's sliding-window attention switch (its checkpoints leave it off).
    #[serde(default)]
    pub use_sliding_window: bool,
}

/// A validated Qwen3.5 model configuration, with derived dimensions.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub text: TextConfig,
    pub family: Family,
    pub layout: CheckpointLayout,
    pub layer_types: Vec<LayerType>,
    pub rope: RopeParameters,
    pub tie_word_embeddings: bool,
    pub head_dim: usize,
    /// Number of leading dimensions of each attention head that rotate.
    pub rotary_dim: usize,
}

#[derive(Deserialize)]
struct TopLevel {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    text_config: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
}

fn check_layer_count(n: usize, path: &Path) -> Result<()> {
    if (1..=MAX_LAYERS).contains(&n) {
        Ok(())
    } else {
        Err(Error::config(path, format!("num_hidden_layers is {n}; it must be 1 to {MAX_LAYERS}")))
    }
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_to_string(path, crate::files::CONFIG_LIMIT)
            .map_err(|source| Error::Io { path: path.to_owned(), source })?;
        Self::from_json_str(&text, path)
    }

    /// Parses config JSON; `path` is only used to name the source in errors.
    pub fn from_json_str(json: &str, path: &Path) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|source| Error::Json { path: path.to_owned(), source })?;
        let top: TopLevel = serde_json::from_value(value.clone())
            .map_err(|e| Error::config(path, format!("unexpected structure: {e}")))?;
        let model_type = top.model_type.clone().unwrap_or_default();
        let (text_value, layout) = match model_type.as_str() {
            "qwen3_5" => {
                let text = top.text_config.clone().ok_or_else(|| {
                    Error::config(path, "model_type is \"qwen3_5\" but there is no `text_config`")
                })?;
                (text, CheckpointLayout::ConditionalGeneration)
            }
            "qwen3_5_text" | "qwen3" => (value, CheckpointLayout::CausalLm),
            "" => return Err(Error::config(path, "no `model_type` key")),
            other => {
                return Err(Error::config(
                    path,
                    format!(
                        "unsupported model_type \"{other}\" (architectures {:?}); qwenrt runs \
                         \"qwen3_5\", \"qwen3_5_text\" and \"qwen3\"",
                        top.architectures.unwrap_or_default()
                    ),
                ))
            }
        };
        let text: TextConfig = serde_json::from_value(text_value).map_err(|e| {
            let section = match layout {
                CheckpointLayout::ConditionalGeneration => "text_config",
                _ => "config",
            };
            Error::config(path, format!("{section}: {e}"))
        })?;
        if model_type == "qwen3" {
            return Self::validate_qwen3(text, path);
        }
        Self::validate(text, layout, top.tie_word_embeddings, path)
    }

    /// Qwen3: every layer is full attention with RoPE over the whole head (a special case of
    /// the Qwen3.5 M-RoPE with every frequency on the text axis).
    fn validate_qwen3(mut text: TextConfig, path: &Path) -> Result<Self> {
        let fail = |msg: String| Err(Error::config(path, msg));
        check_layer_count(text.num_hidden_layers, path)?;
        if text.use_sliding_window {
            return fail("use_sliding_window = true is not supported".into());
        }
        if text.rope_scaling.as_ref().is_some_and(|s| !s.is_null()) {
            return fail(format!(
                "rope_scaling {} is not supported (only plain RoPE)",
                text.rope_scaling.as_ref().unwrap()
            ));
        }
        let theta = match (&text.rope_parameters, text.rope_theta) {
            (Some(p), _) => p.rope_theta,
            (None, Some(theta)) => theta,
            (None, None) => 10_000.0,
        };
        let head_dim = text.head_dim.unwrap_or(text.hidden_size / text.num_attention_heads.max(1));
        text.attn_output_gate = false;
        let rope = RopeParameters {
            rope_theta: theta,
            partial_rotary_factor: 1.0,
            mrope_section: vec![head_dim / 2, 0, 0],
            mrope_interleaved: true,
            rope_type: default_rope_type(),
        };
        let layer_types = vec![LayerType::FullAttention; text.num_hidden_layers];
        let tie = text.tie_word_embeddings.unwrap_or(false);
        Self::check(text, Family::Qwen3, CheckpointLayout::CausalLm, layer_types, rope, tie, path)
    }

    fn validate(
        text: TextConfig,
        layout: CheckpointLayout,
        top_tie: Option<bool>,
        path: &Path,
    ) -> Result<Self> {
        let fail = |msg: String| Err(Error::config(path, msg));
        let n = text.num_hidden_layers;
        check_layer_count(n, path)?;
        let layer_types = match &text.layer_types {
            Some(names) => {
                if names.len() != n {
                    return fail(format!(
                        "layer_types has {} entries but num_hidden_layers is {n}",
                        names.len()
                    ));
                }
                let mut types = Vec::with_capacity(n);
                for (i, name) in names.iter().enumerate() {
                    // "mamba" and "attention" are older spellings that transformers still accepts.
                    types.push(match name.as_str() {
                        "linear_attention" | "mamba" => LayerType::LinearAttention,
                        "full_attention" | "attention" => LayerType::FullAttention,
                        other => {
                            return fail(format!(
                                "layer_types[{i}] is \"{other}\"; expected \"linear_attention\" \
                                 or \"full_attention\""
                            ))
                        }
                    });
                }
                types
            }
            None => {
                let interval = text.full_attention_interval.unwrap_or(4);
                if interval == 0 {
                    return fail("full_attention_interval must be at least 1".into());
                }
                (0..n)
                    .map(|i| {
                        if (i + 1) % interval == 0 {
                            LayerType::FullAttention
                        } else {
                            LayerType::LinearAttention
                        }
                    })
                    .collect()
            }
        };

        let rope = match (&text.rope_parameters, text.rope_theta) {
            (Some(p), _) => p.clone(),
            (None, Some(theta)) => {
                let scaling = text.rope_scaling.as_ref();
                let section = scaling
                    .and_then(|s| s.get("mrope_section"))
                    .and_then(|s| serde_json::from_value(s.clone()).ok())
                    .unwrap_or_else(default_mrope_section);
                let interleaved = scaling
                    .and_then(|s| s.get("mrope_interleaved"))
                    .and_then(|v| v.as_bool())
                    .unwrap_or(true);
                RopeParameters {
                    rope_theta: theta,
                    partial_rotary_factor: text
                        .partial_rotary_factor
                        .unwrap_or_else(default_partial_rotary_factor),
                    mrope_section: section,
                    mrope_interleaved: interleaved,
                    rope_type: default_rope_type(),
                }
            }
            (None, None) => return fail("no `rope_parameters` (nor legacy `rope_theta`)".into()),
        };
        // transformers ties by the config of the class it builds: the top-level key for the
        // multimodal checkpoint (whatever text_config says), the flat key for text-only exports.
        let tie_word_embeddings = match layout {
            CheckpointLayout::ConditionalGeneration => top_tie,
            _ => text.tie_word_embeddings,
        }
        .unwrap_or(false);
        for (key, value, max) in [
            ("linear_conv_kernel_dim", text.linear_conv_kernel_dim, 64),
            ("linear_key_head_dim", text.linear_key_head_dim, MAX_HEAD_DIM),
            ("linear_value_head_dim", text.linear_value_head_dim, MAX_HEAD_DIM),
            ("linear_num_key_heads", text.linear_num_key_heads, MAX_HEADS),
            ("linear_num_value_heads", text.linear_num_value_heads, MAX_HEADS),
        ] {
            if !(1..=max).contains(&value) {
                return fail(format!("{key} is {value}; it must be 1 to {max}"));
            }
        }
        if !text.linear_num_value_heads.is_multiple_of(text.linear_num_key_heads) {
            return fail(format!(
                "linear_num_value_heads ({}) is not a multiple of linear_num_key_heads ({})",
                text.linear_num_value_heads, text.linear_num_key_heads
            ));
        }
        Self::check(text, Family::Qwen3_5, layout, layer_types, rope, tie_word_embeddings, path)
    }

    /// Checks shared by both families.
    fn check(
        text: TextConfig,
        family: Family,
        layout: CheckpointLayout,
        layer_types: Vec<LayerType>,
        rope: RopeParameters,
        tie_word_embeddings: bool,
        path: &Path,
    ) -> Result<Self> {
        let fail = |msg: String| Err(Error::config(path, msg));
        let n = text.num_hidden_layers;
        if rope.rope_type != "default" {
            return fail(format!(
                "rope_parameters.rope_type \"{}\" is not supported (only \"default\")",
                rope.rope_type
            ));
        }

        // The upper bounds are far above any Qwen model's; a value past them is a corrupt file,
        // and fails here with its key instead of as a huge allocation or a buffer overrun.
        for (key, value, max) in [
            ("vocab_size", text.vocab_size, 1 << 22),
            ("hidden_size", text.hidden_size, 1 << 16),
            ("intermediate_size", text.intermediate_size, 1 << 18),
            ("num_hidden_layers", n, MAX_LAYERS),
            ("num_attention_heads", text.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", text.num_key_value_heads, MAX_HEADS),
            ("max_position_embeddings", text.max_position_embeddings, 1 << 24),
        ] {
            if !(1..=max).contains(&value) {
                return fail(format!("{key} is {value}; it must be 1 to {max}"));
            }
        }
        if !(text.rms_norm_eps.is_finite() && text.rms_norm_eps > 0.0) {
            return fail(format!("rms_norm_eps {} must be a positive number", text.rms_norm_eps));
        }
        if !(rope.rope_theta.is_finite() && rope.rope_theta > 0.0) {
            return fail(format!("rope_theta {} must be a positive number", rope.rope_theta));
        }
        let factor = rope.partial_rotary_factor;
        if !(factor.is_finite() && factor > 0.0 && factor <= 1.0) {
            return fail(format!("partial_rotary_factor {factor} must be in (0, 1]"));
        }
        if text.hidden_act != "silu" {
            return fail(format!("hidden_act \"{}\" is not supported (only \"silu\")", text.hidden_act));
        }
        if text.attention_bias {
            return fail("attention_bias = true is not supported (Qwen3 and Qwen3.5 have no biases)".into());
        }
        if !text.mlp_only_layers.is_empty() {
            return fail("mlp_only_layers is not supported (Qwen3.5 dense models have none)".into());
        }
        if !text.num_attention_heads.is_multiple_of(text.num_key_value_heads) {
            return fail(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                text.num_attention_heads, text.num_key_value_heads
            ));
        }
        let head_dim = text.head_dim.unwrap_or(text.hidden_size / text.num_attention_heads);
        if !(1..=MAX_HEAD_DIM).contains(&head_dim) {
            return fail(format!("head_dim is {head_dim}; it must be 1 to {MAX_HEAD_DIM}"));
        }
        let rotary_dim = (head_dim as f64 * rope.partial_rotary_factor) as usize;
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
            return fail(format!(
                "head_dim {head_dim} × partial_rotary_factor {} gives rotary dim {rotary_dim}; it \
                 must be even and between 2 and head_dim",
                rope.partial_rotary_factor
            ));
        }
        let section_sum = rope.mrope_section.iter().try_fold(0usize, |sum, &s| sum.checked_add(s));
        if rope.mrope_section.len() != 3 || section_sum != Some(rotary_dim / 2) {
            return fail(format!(
                "rope_parameters.mrope_section {:?} must have 3 entries summing to rotary_dim/2 = {}",
                rope.mrope_section,
                rotary_dim / 2
            ));
        }
        if !rope.mrope_interleaved {
            return fail("mrope_interleaved = false is not supported (Qwen3.5 interleaves)".into());
        }
        Ok(ModelConfig { layer_types, rope, tie_word_embeddings, head_dim, rotary_dim, family, layout, text })
    }

    pub fn hidden_size(&self) -> usize {
        self.text.hidden_size
    }
    pub fn vocab_size(&self) -> usize {
        self.text.vocab_size
    }
    /// `Hk * dk`: width of the DeltaNet q and k blocks.
    pub fn linear_key_dim(&self) -> usize {
        self.text.linear_num_key_heads * self.text.linear_key_head_dim
    }
    /// `Hv * dv`: width of the DeltaNet v block and of its output.
    pub fn linear_value_dim(&self) -> usize {
        self.text.linear_num_value_heads * self.text.linear_value_head_dim
    }
    /// Channels of the DeltaNet causal convolution: q, k and v together.
    pub fn linear_conv_dim(&self) -> usize {
        2 * self.linear_key_dim() + self.linear_value_dim()
    }
    /// Prefix of the decoder's tensor names in the checkpoint.
    pub fn tensor_prefix(&self) -> &'static str {
        match self.layout {
            CheckpointLayout::ConditionalGeneration => "model.language_model.",
            CheckpointLayout::CausalLm => "model.",
            CheckpointLayout::Bare => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = include_str!("../../../fixtures/config/qwen3_5-0.8b.json");

    fn parse(json: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(json, Path::new("config.json"))
    }

    #[test]
    fn real_0_8b_config_parses_with_its_geometry() {
        let c = parse(REAL).unwrap();
        assert_eq!(c.layout, CheckpointLayout::ConditionalGeneration);
        assert_eq!(c.text.hidden_size, 1024);
        assert_eq!(c.head_dim, 256);
        assert_eq!(c.rotary_dim, 64);
        assert_eq!(c.linear_conv_dim(), 6144);
        assert!(c.tie_word_embeddings);
        let full: Vec<usize> = c
            .layer_types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == LayerType::FullAttention)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(full, [3, 7, 11, 15, 19, 23]);
        assert_eq!(c.rope.rope_theta, 1e7);
        assert_eq!(c.rope.mrope_section, [11, 11, 10]);
    }

    #[test]
    fn qwen3_embedding_config_is_a_dense_qwen3_decoder() {
        let c = parse(include_str!("../../../fixtures/config/qwen3-embedding-0.6b.json")).unwrap();
        assert_eq!(c.family, Family::Qwen3);
        assert_eq!(c.layer_types, vec![LayerType::FullAttention; 28]);
        assert_eq!((c.head_dim, c.rotary_dim), (128, 128), "RoPE over the whole head");
        assert_eq!(c.rope.rope_theta, 1e6);
        assert!(!c.text.attn_output_gate);
        assert!(c.tie_word_embeddings);
        let e = err(r#"{"model_type": "qwen3", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rope_theta": 1e6, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#);
        assert!(e.contains("rope_scaling") && e.contains("not supported"), "{e}");
    }

    fn edit(f: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(REAL).unwrap();
        f(&mut v);
        v.to_string()
    }

    fn err(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_problem() {
        let e = err(&edit(|v| v["model_type"] = "llama".into()));
        assert!(e.contains("unsupported model_type \"llama\""), "{e}");
        let e = err(&edit(|v| v["text_config"]["layer_types"][2] = "sliding_attention".into()));
        assert!(e.contains("layer_types[2] is \"sliding_attention\""), "{e}");
        let e = err(&edit(|v| {
            v["text_config"]["layer_types"].as_array_mut().unwrap().pop();
        }));
        assert!(e.contains("layer_types has 23 entries but num_hidden_layers is 24"), "{e}");
        let e = err(&edit(|v| v["text_config"]["num_key_value_heads"] = 3.into()));
        assert!(e.contains("not a multiple of num_key_value_heads (3)"), "{e}");
        let e = err(&edit(|v| {
            v["text_config"].as_object_mut().unwrap().remove("hidden_size");
        }));
        assert!(e.contains("text_config: missing field `hidden_size`"), "{e}");
        let e = err(&edit(|v| {
            v["text_config"]["rope_parameters"]["mrope_section"] = serde_json::json!([8, 8, 8])
        }));
        assert!(e.contains("mrope_section [8, 8, 8]"), "{e}");
        let e = err("{not json");
        assert!(e.starts_with("config.json: invalid JSON"), "{e}");
        let e = err(&edit(|v| {
            v.as_object_mut().unwrap().remove("text_config");
        }));
        assert!(e.contains("no `text_config`"), "{e}");
    }

    #[test]
    fn flat_text_layout_and_default_layer_pattern() {
        let mut text: serde_json::Value = serde_json::from_str(REAL).unwrap();
        let mut t = text["text_config"].take();
        t.as_object_mut().unwrap().remove("layer_types");
        t["full_attention_interval"] = 3.into();
        let c = parse(&t.to_string()).unwrap();
        assert_eq!(c.layout, CheckpointLayout::CausalLm);
        assert_eq!(c.layer_types[2], LayerType::FullAttention);
        assert_eq!(c.layer_types[3], LayerType::LinearAttention);
        assert_eq!(c.tensor_prefix(), "model.");
    }
}
