//! `qwenrt inspect`: what a model folder contains, without running it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use qwenrt::config::LayerType;
use qwenrt::weights::WeightStore;
use qwenrt::{Model, ModelConfig};

#[derive(Args)]
pub struct InspectArgs {
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json, …) or a hub id
    /// (`Qwen/Qwen3.5-0.8B[@revision]`), downloaded into the Hugging Face cache if need be.
    #[arg(long)]
    model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Which part of the checkpoint a tensor belongs to, by its Hugging Face name.
fn part_of(name: &str) -> &'static str {
    if name.starts_with("model.visual.") {
        "vision tower"
    } else if name.starts_with("mtp.") {
        "MTP head"
    } else if name.contains("embed_tokens") {
        "embedding (tied LM head)"
    } else if name.starts_with("lm_head") {
        "LM head"
    } else if name.contains(".linear_attn.") {
        "Gated DeltaNet mixers"
    } else if name.contains(".self_attn.") {
        "gated attention mixers"
    } else if name.contains(".mlp.") {
        "MLPs"
    } else {
        "norms"
    }
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let dir = &crate::locate_model(&args.model)?;
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let store =
        WeightStore::open_dir(dir).with_context(|| format!("opening weights in {}", dir.display()))?;
    let mut parts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut dtypes: BTreeMap<String, u64> = BTreeMap::new();
    for info in store.tensor_infos() {
        let n: u64 = info.shape.iter().map(|&d| d as u64).product();
        *parts.entry(part_of(&info.name)).or_default() += n;
        *dtypes.entry(info.dtype.clone()).or_default() += n;
    }
    let total: u64 = parts.values().sum();
    let model = Model::from_store(config, &store)?;
    // The model's own config: loading finds where the tensors really are (a sentence-transformers
    // folder has no `model.` prefix whatever its architecture says).
    let config = model.config();
    let t = &config.text;
    let linear = config.layer_types.iter().filter(|l| **l == LayerType::LinearAttention).count();
    let state = model.new_state();
    // Per-token KV of the attention layers (keys + values, f32) and the fixed DeltaNet state.
    let full = t.num_hidden_layers - linear;
    let kv_per_token = full * 2 * t.num_key_value_heads * config.head_dim * 4;

    if args.json {
        let json = serde_json::json!({
            "layout": format!("{:?}", config.layout),
            "hidden_size": t.hidden_size,
            "layers": t.num_hidden_layers,
            "linear_attention_layers": linear,
            "full_attention_layers": full,
            "vocab_size": t.vocab_size,
            "parameters": parts,
            "total_parameters": total,
            "stored_dtypes": dtypes,
            "file_bytes": store.mapped_bytes(),
            "runtime_weight_dtype": model.weight_dtype(),
            "runtime_weight_bytes": model.weight_bytes(),
            "state_bytes_fixed": state.cache_bytes(),
            "kv_bytes_per_token": kv_per_token,
            "max_context": model.max_context(),
        });
        println!("{json}");
        return Ok(());
    }
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!("{}", dir.display());
    match config.tensor_prefix() {
        "" => println!("  layout            {:?} (tensors without a prefix)", config.layout),
        prefix => println!("  layout            {:?} (tensors under `{prefix}`)", config.layout),
    }
    println!(
        "  decoder           {} layers ({} Gated DeltaNet, {} gated attention), hidden {}, MLP {}",
        t.num_hidden_layers, linear, full, t.hidden_size, t.intermediate_size
    );
    println!(
        "  attention         {} query heads, {} KV heads, head dim {} (rotary {}), θ = {}",
        t.num_attention_heads,
        t.num_key_value_heads,
        config.head_dim,
        config.rotary_dim,
        config.rope.rope_theta
    );
    println!(
        "  DeltaNet          {} key heads × {}, {} value heads × {}, conv kernel {}",
        t.linear_num_key_heads,
        t.linear_key_head_dim,
        t.linear_num_value_heads,
        t.linear_value_head_dim,
        t.linear_conv_kernel_dim
    );
    println!("  vocabulary        {} (tied embeddings: {})", t.vocab_size, config.tie_word_embeddings);
    println!("  context           {} tokens", model.max_context());
    println!("  parameters        {:.1} M", total as f64 / 1e6);
    for (part, n) in &parts {
        println!("    {part:<26}{:>10.2} M", *n as f64 / 1e6);
    }
    let dtype_list: Vec<String> =
        dtypes.iter().map(|(d, n)| format!("{d} ({:.1} M)", *n as f64 / 1e6)).collect();
    println!(
        "  stored as         {} in {:.1} MiB of files",
        dtype_list.join(", "),
        mib(store.mapped_bytes())
    );
    println!(
        "  in memory         {:.1} MiB of {} weights (text decoder only)",
        mib(model.weight_bytes()),
        model.weight_dtype()
    );
    println!(
        "  session state     {:.2} MiB fixed (DeltaNet) + {:.1} KiB per token (KV cache)",
        mib(state.cache_bytes()),
        kv_per_token as f64 / 1024.0
    );
    Ok(())
}
