//! `qwenrt`: run Qwen3.5 models on the CPU from the command line.

mod inspect;
mod run;
mod score;

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "qwenrt", version, about = "Run Qwen3.5 models on the CPU", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Run(run::RunArgs),
    /// Score a text: perplexity and per-token log-probabilities.
    Score(score::ScoreArgs),
    /// Describe a model folder: architecture, parameters, dtypes, memory.
    Inspect(inspect::InspectArgs),
}

/// Precision the weights are held in while running.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit floats: the exactness mode, numerically matching the reference implementation.
    F32,
}

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

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Score(args) => score::score(args),
        Command::Inspect(args) => inspect::inspect(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
