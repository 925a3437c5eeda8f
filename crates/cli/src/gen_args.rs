//! Generation flags shared by `run` and `chat`: sampling, stops, thinking, constraints.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use qwenrt::sampling::SamplingOverrides;
use qwenrt::{ChatParams, Constraint, LanguageModel, RepetitionGuard, SpeculativeOptions};

#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// Most tokens to generate per answer (reasoning included).
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy. Default: the model's generation_config.json.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample among the K most likely tokens (0: all). Default: generation_config.json.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens covering probability P. Default: generation_config.json.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than P times the most likely one (0: off).
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Penalise tokens already in the context (1: off; transformers' repetition_penalty).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Subtract this from the logit of every token generated so far (OpenAI's presence_penalty).
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    /// Subtract this per occurrence of a generated token (OpenAI's frequency_penalty).
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    /// Add BIAS to token ID's logit before sampling (repeatable; -inf bans the token).
    #[arg(long, value_name = "ID=BIAS")]
    pub logit_bias: Vec<String>,
    /// Random seed, for reproducible sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// End the answer at this text, which is not printed (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Ask the model to think before answering (chat template's enable_thinking=true).
    #[arg(long, conflicts_with = "no_think")]
    pub think: bool,
    /// Ask the model to answer without thinking (enable_thinking=false).
    #[arg(long)]
    pub no_think: bool,
    /// Close the thought after N reasoning tokens and go on with the answer.
    #[arg(long, value_name = "N")]
    pub max_thinking_tokens: Option<usize>,
    /// End generation when the output loops on a repeated n-gram of up to N tokens.
    #[arg(long, value_name = "N")]
    pub repetition_guard: Option<usize>,
    /// Constrain the answer to this JSON Schema: a file, or the schema itself as JSON.
    #[arg(long, value_name = "FILE|JSON", group = "constraint")]
    pub json_schema: Option<String>,
    /// Constrain the answer to any JSON object.
    #[arg(long, group = "constraint")]
    pub json_object: bool,
    /// Constrain the answer to text this regular expression matches as a whole.
    #[arg(long, value_name = "REGEX", group = "constraint")]
    pub regex: Option<String>,
    /// Constrain the answer to this Lark grammar (llguidance's syntax; `start` is the start rule).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar: Option<PathBuf>,
    /// Decode speculatively with the checkpoint's multi-token-prediction head (`mtp`): the same
    /// output (token for token when greedy), in fewer passes over the weights when its drafts
    /// are kept. Off by default: see the README for when it pays.
    #[arg(long, value_enum, value_name = "KIND")]
    pub speculative: Option<SpeculativeKind>,
    /// With --speculative: most drafts per step (1 to 4); the count adapts below it to how many
    /// drafts are kept.
    #[arg(long, value_name = "N", default_value_t = 3, requires = "speculative")]
    pub draft_max: usize,
    /// With --speculative: draft among the first N token ids only (the commonest, in BPE
    /// order), which makes a draft step several times cheaper; the output does not change.
    #[arg(long, value_name = "N", requires = "speculative")]
    pub draft_vocab: Option<usize>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SpeculativeKind {
    /// The checkpoint's multi-token-prediction head.
    Mtp,
}

/// What `--speculative KIND --draft-max N` ask of `lm`; an error if it has no MTP head.
pub fn speculative_options(
    lm: &LanguageModel,
    kind: Option<SpeculativeKind>,
    draft_max: usize,
    draft_vocab: Option<usize>,
) -> Result<Option<SpeculativeOptions>> {
    let Some(SpeculativeKind::Mtp) = kind else { return Ok(None) };
    if !lm.model.has_mtp() {
        bail!("--speculative mtp: this checkpoint has no MTP head (mtp.* tensors); run without it");
    }
    if !(1..=qwenrt::speculative::MAX_DRAFTS).contains(&draft_max) {
        bail!("--draft-max must be 1 to {}, not {draft_max}", qwenrt::speculative::MAX_DRAFTS);
    }
    if draft_vocab == Some(0) {
        bail!("--draft-vocab must be at least 1");
    }
    Ok(Some(SpeculativeOptions { draft_max, adaptive: true, draft_vocab, oracle: None }))
}

impl GenArgs {
    pub fn enable_thinking(&self) -> Option<bool> {
        match (self.think, self.no_think) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }

    /// The model's defaults with these flags applied.
    pub fn params(&self, lm: &LanguageModel) -> Result<ChatParams> {
        let mut p = lm.default_params();
        p.max_tokens = self.max_tokens;
        let s = &mut p.sampling;
        SamplingOverrides {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
        }
        .apply_to(s);
        s.seed = self.seed;
        for entry in &self.logit_bias {
            let (id, bias) = parse_bias(entry)?;
            let vocab = lm.model.vocab_size();
            if id as usize >= vocab {
                bail!("--logit-bias {entry:?}: token id {id} is outside the vocabulary ({vocab} tokens)");
            }
            s.logit_bias.push((id, bias));
        }
        p.stop = self.stop.iter().map(|s| unescape(s)).collect();
        p.enable_thinking = self.enable_thinking();
        p.max_thinking_tokens = self.max_thinking_tokens;
        p.repetition_guard =
            self.repetition_guard.map(|n| RepetitionGuard { max_ngram: n, ..RepetitionGuard::default() });
        p.constraint = self.constraint()?;
        p.speculative = speculative_options(lm, self.speculative, self.draft_max, self.draft_vocab)?;
        if let Some(constraint) = &p.constraint {
            lm.check_constraint(constraint)?;
        }
        p.validate()?;
        Ok(p)
    }

    /// The constraint the flags ask for (at most one of them can be given).
    fn constraint(&self) -> Result<Option<Constraint>> {
        if let Some(schema) = &self.json_schema {
            return Ok(Some(Constraint::JsonSchema(read_json_schema(schema)?)));
        }
        if self.json_object {
            return Ok(Some(Constraint::Json));
        }
        if let Some(regex) = &self.regex {
            return Ok(Some(Constraint::Regex(regex.clone())));
        }
        if let Some(path) = &self.grammar {
            let grammar =
                std::fs::read_to_string(path).with_context(|| format!("--grammar {}", path.display()))?;
            return Ok(Some(Constraint::Grammar(grammar)));
        }
        Ok(None)
    }
}

/// `--json-schema`'s value: the schema as JSON, or a file holding it.
pub fn read_json_schema(arg: &str) -> Result<serde_json::Value> {
    let inline = arg.trim_start().starts_with(['{', '[']) || ["true", "false"].contains(&arg.trim());
    let text = if inline {
        arg.to_owned()
    } else {
        std::fs::read_to_string(arg)
            .with_context(|| format!("--json-schema {arg:?}: not JSON, and not a readable file"))?
    };
    serde_json::from_str(&text).with_context(|| format!("--json-schema {arg:?}: invalid JSON"))
}

fn parse_bias(entry: &str) -> Result<(u32, f32)> {
    let (id, bias) =
        entry.split_once('=').with_context(|| format!("--logit-bias {entry:?}: expected ID=BIAS"))?;
    let id = id.trim().parse().with_context(|| format!("--logit-bias {entry:?}: bad token id"))?;
    let bias = match bias.trim() {
        "-inf" => f32::NEG_INFINITY,
        b => b.parse().with_context(|| format!("--logit-bias {entry:?}: bad bias"))?,
    };
    if !(bias.is_finite() || bias == f32::NEG_INFINITY) {
        bail!("--logit-bias {entry:?}: bias must be a number or -inf");
    }
    Ok((id, bias))
}

/// `\n` and `\t` written on a command line become the characters (a stop at a blank line is common).
fn unescape(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\t", "\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_bias_entries_parse() {
        assert_eq!(parse_bias("42=1.5").unwrap(), (42, 1.5));
        assert_eq!(parse_bias("7=-inf").unwrap(), (7, f32::NEG_INFINITY));
        assert!(parse_bias("7").is_err());
        assert!(parse_bias("x=1").is_err());
        assert!(parse_bias("7=inf").is_err());
        assert_eq!(unescape("a\\n\\nb"), "a\n\nb");
    }
}
