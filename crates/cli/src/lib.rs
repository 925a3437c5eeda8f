//! `qwenrt`: run Qwen3.5 models on the CPU from the command line. The binary is `main.rs`, a
//! call of [`main`]; a library, so that the fuzz targets can reach the server's request handling
//! (feature `fuzzing`).

mod bench;
mod embed;
mod gen_args;
mod hub;
mod inspect;
mod repl;
mod run;
mod score;
pub mod serve;

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use qwenrt::{LanguageModel, LoadOptions, WeightDtype};

#[derive(Parser)]
#[command(name = "qwenrt", version, about = "Run Qwen3.5 models on the CPU", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads for matrix products (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Run(run::RunArgs),
    /// Talk with a model: a multi-turn conversation on stdin/stdout.
    Chat(repl::ChatArgs),
    /// Score a text: perplexity and per-token log-probabilities.
    Score(score::ScoreArgs),
    /// Embed texts with a Qwen3-Embedding model, or rank documents against a query.
    Embed(embed::EmbedArgs),
    /// Describe a model folder: architecture, parameters, dtypes, memory.
    Inspect(inspect::InspectArgs),
    /// Measure prefill and decode speed (a llama-bench-like table).
    Bench(bench::BenchArgs),
    /// Write a full-size model with seeded random weights (bf16 safetensors folder).
    Synth(bench::SynthArgs),
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Download a model from the Hugging Face hub into its cache, without running it.
    Pull(hub::PullArgs),
    /// List the models in the Hugging Face cache.
    List(hub::ListArgs),
}

/// Precision the weights are held in while running.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit floats: the exactness mode, numerically matching the reference implementation.
    F32,
    /// bfloat16 (memory-mapped without a copy when the checkpoint is bf16).
    Bf16,
    /// IEEE half precision.
    F16,
    /// 8-bit blocks (Q8_0 layout), quantized at load.
    Int8,
    /// 4-bit blocks (Q4_0 layout) with an 8-bit LM head, quantized at load.
    Int4,
}

impl Dtype {
    pub fn weight_dtype(self) -> WeightDtype {
        match self {
            Dtype::F32 => WeightDtype::F32,
            Dtype::Bf16 => WeightDtype::Bf16,
            Dtype::F16 => WeightDtype::F16,
            Dtype::Int8 => WeightDtype::Int8,
            Dtype::Int4 => WeightDtype::Int4,
        }
    }
}

/// Load options with a progress bar on stderr (shown only on a terminal).
pub fn load_options(dtype: Dtype) -> LoadOptions {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("loading ({msg}) {bar:30} {pos}/{len} layers")
            .expect("valid template"),
    );
    bar.set_message(dtype.weight_dtype().name());
    LoadOptions {
        dtype: dtype.weight_dtype(),
        progress: Some(std::sync::Arc::new(move |done, total| {
            bar.set_length(total);
            bar.set_position(done);
            if done == total {
                bar.finish_and_clear();
            }
        })),
    }
}

/// Loads a model (weights, tokenizer, template, generation config) at `dtype` from a folder or
/// a hub id.
pub fn load_lm(model: &std::path::Path, dtype: Dtype) -> Result<LanguageModel> {
    let dir = hub::locate_model(model)?;
    LanguageModel::load_with(&dir, &load_options(dtype)).with_context(|| format!("loading {}", dir.display()))
}

pub use hub::{locate_model, model_name};

/// Where the text comes from: an argument, `-` for stdin, or `--file`.
pub fn read_text(arg: Option<&str>, file: Option<&PathBuf>) -> Result<String> {
    match (arg, file) {
        (Some(_), Some(_)) => bail!("give the text either as an argument or with --file, not both"),
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
        (Some("-"), None) => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
            Ok(text)
        }
        (Some(text), None) => Ok(text.to_owned()),
        (None, None) => bail!("no text given: pass it as an argument, `-` for stdin, or --file"),
    }
}

/// A size flag in MiB as bytes; an error (naming the flag) where it does not fit.
pub fn mib_to_bytes(mib: usize, flag: &str) -> Result<usize> {
    mib.checked_mul(1 << 20).with_context(|| format!("{flag} {mib} is too large"))
}

/// Most threads `--threads` may ask for per CPU: more only make the pool's spinning helpers
/// fight over the cores.
const MAX_THREADS_PER_CPU: usize = 8;

/// The `qwenrt` command: parses the arguments, runs the subcommand, exits non-zero on an error.
pub fn main() {
    let cli = Cli::parse();
    if let Some(threads) = cli.threads {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads == 0 || threads > cpus * MAX_THREADS_PER_CPU {
            eprintln!(
                "error: --threads must be 1 to {} ({cpus} CPUs here), not {threads}",
                cpus * MAX_THREADS_PER_CPU
            );
            std::process::exit(2);
        }
        if let Err(e) = qwenrt::set_threads(threads) {
            eprintln!("error: cannot start {threads} threads: {e}");
            std::process::exit(1);
        }
    }
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Chat(args) => repl::chat(args),
        Command::Score(args) => score::score(args),
        Command::Embed(args) => embed::embed(args),
        Command::Inspect(args) => inspect::inspect(args),
        Command::Bench(args) => bench::bench(args),
        Command::Synth(args) => bench::synth(args),
        Command::Serve(args) => serve::serve(args),
        Command::Pull(args) => hub::pull(args),
        Command::List(args) => hub::list(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
