//! `qwenrt score`: log-probability of every token of a text under the model, and perplexity.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use qwenrt::chat::Message;

use crate::{read_text, Dtype};

#[derive(Args)]
pub struct ScoreArgs {
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json, …) or a hub id
    /// (`Qwen/Qwen3.5-0.8B[@revision]`), downloaded into the Hugging Face cache if need be.
    #[arg(long)]
    model: PathBuf,
    /// The text to score (`-` for stdin); or use --file.
    text: Option<String>,
    /// Read the text from this file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Score the text as is. Without it the text is scored as one user message rendered with
    /// the chat template.
    #[arg(long)]
    raw: bool,
    /// Print token ids and per-token log-probabilities as JSON.
    #[arg(long)]
    json: bool,
    /// Weight precision.
    #[arg(long, value_enum, default_value = "int8")]
    dtype: Dtype,
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let text = read_text(args.text.as_deref(), args.file.as_ref())?;
    let lm = crate::load_lm(&args.model, args.dtype)?;
    let text = if args.raw { text } else { lm.render_chat(&[Message::user(text)], false, None)? };
    let tokens = lm.encode(&text)?;
    if tokens.is_empty() {
        bail!("the text is empty: there is nothing to score");
    }
    let mut state = lm.model.new_state();
    let start = std::time::Instant::now();
    let mut logprobs = Vec::with_capacity(tokens.len() - 1);
    lm.model.forward_all(&mut state, &tokens, |pos, logits| {
        if let Some(&next) = tokens.get(pos + 1) {
            logprobs.push(log_softmax_at(logits, next as usize));
        }
    })?;
    let elapsed = start.elapsed();
    // One token predicts nothing: transformers then gives no log-probabilities, and the mean
    // (and so the perplexity) is undefined, reported as null.
    let nll = (!logprobs.is_empty()).then(|| -logprobs.iter().sum::<f64>() / logprobs.len() as f64);
    let perplexity = nll.map(f64::exp);
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({
            "tokens": tokens,
            "logprobs": logprobs,
            "mean_nll": nll,
            "perplexity": perplexity,
            "tokens_per_second": tokens.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        });
        writeln!(out, "{json}")?;
    } else if let (Some(nll), Some(perplexity)) = (nll, perplexity) {
        writeln!(
            out,
            "perplexity {perplexity:.4} (mean NLL {nll:.4} nats over {} predicted tokens)",
            logprobs.len()
        )?;
    } else {
        writeln!(out, "perplexity undefined: the text is one token, so no token is predicted")?;
    }
    Ok(())
}

/// `log_softmax(logits)[index]`, computed in f64 so long texts do not lose precision.
fn log_softmax_at(logits: &[f32], index: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[index] as f64 - max - sum.ln()
}
