//! Full-size models with seeded random weights, for speed work without a download.
//!
//! [`write_synthetic_model`] writes a complete Hugging Face folder of a real geometry, so that
//! qwenrt and other engines (after their own conversion) run the very same weights:
//!
//! * `qwen3.5-0.8b`: the published `config.json`, every tensor of the published checkpoint
//!   (decoder, vision tower, MTP head) in bf16, the chat template, `generation_config.json` and
//!   the image and video preprocessor configs;
//! * `qwen3-embedding-0.6b`: the sentence-transformers folder of Qwen3-Embedding-0.6B (config,
//!   modules, last-token pooling, query prompt) with every tensor in bf16.
//!
//! Tokenizers are not written (they are not random): copy a `tokenizer.json` in.

use std::path::Path;

use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};

const CONFIG_0_8B: &str = include_str!("../../../fixtures/config/qwen3_5-0.8b.json");
const TENSORS_0_8B: &str = include_str!("../../../fixtures/config/qwen3_5-0.8b.tensors.tsv");
const PREPROCESSOR_CONFIG: &str = include_str!("../../../fixtures/vision/preprocessor_config.json");
const VIDEO_PREPROCESSOR_CONFIG: &str =
    include_str!("../../../fixtures/vision/video_preprocessor_config.json");
const CHAT_TEMPLATE: &str = include_str!("../../../fixtures/chat/qwen3_5/chat_template.jinja");
const GENERATION_CONFIG: &str = r#"{"bos_token_id": 248044, "do_sample": true, "eos_token_id": [248046, 248044], "pad_token_id": 248044, "temperature": 1.0, "top_k": 20, "top_p": 0.95}"#;

const CONFIG_EMBED_0_6B: &str = include_str!("../../../fixtures/config/qwen3-embedding-0.6b.json");
const TENSORS_EMBED_0_6B: &str = include_str!("../../../fixtures/config/qwen3-embedding-0.6b.tensors.tsv");
const EMBED_MODULES: &str = r#"[
  {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
  {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
]"#;
const EMBED_POOLING: &str = r#"{"word_embedding_dimension": 1024, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": false, "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false, "pooling_mode_weightedmean_tokens": false, "pooling_mode_lasttoken": true, "include_prompt": true}"#;
const EMBED_ST_CONFIG: &str = r#"{"prompts": {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:", "document": ""}, "default_prompt_name": null, "similarity_fn_name": "cosine"}"#;

/// The geometries [`write_synthetic_model`] knows.
pub const PRESETS: &[&str] = &["qwen3.5-0.8b", "qwen3-embedding-0.6b"];

/// SplitMix64: a tiny, well-mixed generator; each tensor gets its own stream from its name.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f32 {
        let u1 = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

fn stream(seed: u64, name: &str) -> SplitMix {
    let mut h = seed ^ 0xcbf29ce484222325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    SplitMix(h)
}

/// Values for one tensor, scaled so activations stay O(1) through the layers as in a trained model:
/// matrices ~ N(0, 1/fan_in) (unit-variance outputs), embeddings ~ N(0, 1), norms near their
/// identity, DeltaNet decays spread between fast (A = 16) and slow (A = 1). (transformers' own
/// initialisation, N(0, 0.02²) everywhere, gives near-constant logits: useless for judging quality.)
fn values(name: &str, shape: &[usize], seed: u64, zero_centred_norms: bool) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let mut rng = stream(seed, name);
    let mut out = Vec::with_capacity(n);
    let leaf = name.rsplit('.').nth(1).unwrap_or("");
    if name.ends_with("A_log") {
        out.extend((0..n).map(|_| (1.0 + 7.5 * (rng.uniform() + 1.0)).ln()));
    } else if name.ends_with("dt_bias") {
        out.extend((0..n).map(|_| 1.0 + 0.1 * rng.uniform()));
    } else if name.ends_with("conv1d.weight") {
        out.extend((0..n).map(|_| 0.5 * rng.uniform()));
    } else if shape.len() == 1 {
        // Qwen3.5's zero-centred norms are applied as 1 + w; the others (gated norm, LayerNorm,
        // every Qwen3 norm) as w.
        let gated_norm = leaf == "norm" && name.contains("linear_attn");
        let centred = zero_centred_norms && !gated_norm && !name.contains("visual");
        let base = if centred || name.ends_with(".bias") { 0.0 } else { 1.0 };
        out.extend((0..n).map(|_| base + 0.1 * rng.uniform()));
    } else {
        let fan_in: usize = shape[1..].iter().product();
        let scale = if name.contains("embed_tokens") { 1.0 } else { 1.0 / (fan_in as f32).sqrt() };
        out.extend((0..n).map(|_| scale * rng.normal()));
    }
    out
}

/// Writes a random-weight model of `preset` geometry to `dir` (created if needed).
pub fn write_synthetic_model(dir: &Path, preset: &str, seed: u64) -> Result<()> {
    let (tensor_list, zero_centred_norms, files): (&str, bool, &[(&str, &str)]) = match preset {
        "qwen3.5-0.8b" => (
            TENSORS_0_8B,
            true,
            &[
                ("config.json", CONFIG_0_8B),
                ("generation_config.json", GENERATION_CONFIG),
                ("chat_template.jinja", CHAT_TEMPLATE),
                ("preprocessor_config.json", PREPROCESSOR_CONFIG),
                ("video_preprocessor_config.json", VIDEO_PREPROCESSOR_CONFIG),
                (
                    "tokenizer_config.json",
                    r#"{"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}"#,
                ),
            ],
        ),
        "qwen3-embedding-0.6b" => (
            TENSORS_EMBED_0_6B,
            false,
            &[
                ("config.json", CONFIG_EMBED_0_6B),
                ("modules.json", EMBED_MODULES),
                ("1_Pooling/config.json", EMBED_POOLING),
                ("config_sentence_transformers.json", EMBED_ST_CONFIG),
                (
                    "tokenizer_config.json",
                    r#"{"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "padding_side": "left"}"#,
                ),
            ],
        ),
        _ => {
            return Err(Error::InvalidInput(format!(
                "unknown synthetic model `{preset}`; known: {}",
                PRESETS.join(", ")
            )))
        }
    };
    let io = |path: &Path, e: std::io::Error| Error::Io { path: path.to_owned(), source: e };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tensors: Vec<(String, Vec<usize>)> = tensor_list
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, shape) = line.split_once('\t').expect("name<TAB>shape");
            let dims = shape
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|d| d.trim().parse::<usize>().expect("dimension"))
                .collect();
            (name.to_owned(), dims)
        })
        .collect();
    let data: Vec<Vec<u8>> = tensors
        .par_iter()
        .map(|(name, shape)| {
            values(name, shape, seed, zero_centred_norms)
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&data)
        .map(|((name, shape), bytes)| {
            (name.clone(), TensorView::new(Dtype::BF16, shape.clone(), bytes).expect("consistent tensor"))
        })
        .collect();
    let weights = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &weights)
        .map_err(|e| Error::Safetensors { path: weights.clone(), message: e.to_string() })?;
    for (name, text) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    }
    Ok(())
}
