//! `qwenrt run`: one prompt in, streamed text out.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use qwenrt::chat::Message;
use qwenrt::{generate, GenerateOptions, LanguageModel};

use crate::{read_text, Dtype};

#[derive(Args)]
pub struct RunArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json, …).
    #[arg(long)]
    model: PathBuf,
    /// The prompt; `-` reads it from stdin. By default it is one user message rendered with the
    /// model's chat template.
    prompt: String,
    /// Tokenize the prompt as is (special tokens such as <|im_start|> are recognised).
    #[arg(long)]
    raw: bool,
    /// Print one JSON object (prompt and generated ids, text, finish reason, timings) instead of
    /// streaming text.
    #[arg(long)]
    json: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy. Default: the model's generation_config.json.
    #[arg(long)]
    temperature: Option<f32>,
    /// Sample among the K most likely tokens (0: all). Default: generation_config.json.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens covering probability P. Default: generation_config.json.
    #[arg(long)]
    top_p: Option<f32>,
    /// Random seed, for reproducible sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Ask the model to think before answering (chat template's enable_thinking=true).
    #[arg(long, conflicts_with = "no_think")]
    think: bool,
    /// Ask the model to answer without thinking (enable_thinking=false).
    #[arg(long)]
    no_think: bool,
    /// Weight precision.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
}

pub fn run(args: RunArgs) -> Result<()> {
    let prompt_text = read_text(Some(&args.prompt), None)?;
    let lm = LanguageModel::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let enable_thinking = match (args.think, args.no_think) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let text = if args.raw {
        prompt_text
    } else {
        lm.render_chat(&[Message::user(prompt_text)], true, enable_thinking)?
    };
    let prompt = lm.encode(&text)?;

    let mut sampling = lm.generation_config.default_sampling();
    if let Some(t) = args.temperature {
        sampling.temperature = t;
    }
    if let Some(k) = args.top_k {
        sampling.top_k = k;
    }
    if let Some(p) = args.top_p {
        sampling.top_p = p;
    }
    sampling.seed = args.seed;
    let options = GenerateOptions { max_tokens: args.max_tokens, sampling, stop_ids: lm.stop_ids().to_vec() };

    let mut state = lm.model.new_state();
    let mut decoder = lm.tokenizer.stream_decoder();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    // The embedding matrix is padded past the tokenizer's vocabulary; such ids have no text
    // (transformers' decode drops them too).
    let has_text = |id: u32| (id as usize) < lm.tokenizer.vocab_size() && !options.stop_ids.contains(&id);
    let generation = generate(&lm.model, &mut state, &prompt, &options, |id| {
        if args.json || !has_text(id) {
            return true;
        }
        let piece = match decoder.push(id) {
            Ok(piece) => piece,
            Err(e) => {
                write_error = Some(anyhow::Error::from(e));
                return false;
            }
        };
        if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            // A closed pipe (e.g. `| head`) ends generation instead of wasting compute.
            write_error = Some(e.into());
            return false;
        }
        true
    })?;
    if let Some(e) = write_error {
        if !is_broken_pipe(&e) {
            return Err(e);
        }
        return Ok(());
    }

    let content: Vec<u32> = generation.tokens.iter().copied().filter(|&id| has_text(id)).collect();
    if args.json {
        let text = lm.tokenizer.decode(&content)?;
        let json = serde_json::json!({
            "prompt_tokens": prompt,
            "tokens": generation.tokens,
            "text": text,
            "finish_reason": generation.finish_reason.as_str(),
            "timings": {
                "prefill_tokens_per_second": generation.prefill_tokens_per_second(),
                "decode_tokens_per_second": generation.decode_tokens_per_second(),
                "prefill_ms": generation.prefill_time.as_secs_f64() * 1e3,
                "decode_ms": generation.decode_time.as_secs_f64() * 1e3,
            },
        });
        writeln!(out, "{json}")?;
    } else {
        let rest = decoder.finish();
        writeln!(out, "{rest}")?;
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.1} tok/s; finish: {}]",
            generation.prompt_tokens,
            generation.prefill_tokens_per_second(),
            generation.tokens.len(),
            generation.decode_tokens_per_second(),
            generation.finish_reason.as_str()
        );
    }
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
