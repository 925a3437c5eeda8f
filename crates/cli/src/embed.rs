//! `qwenrt embed`: text embeddings from a Qwen3-Embedding folder, and `--rank`, a small
//! semantic search over a file of documents.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use qwenrt::{EmbedKind, EmbedOptions, Embedder};

use crate::Dtype;

#[derive(Args)]
pub struct EmbedArgs {
    /// Embedding model folder (sentence-transformers layout, e.g. Qwen3-Embedding-0.6B) or hub id.
    #[arg(long)]
    model: PathBuf,
    /// Texts to embed; or use --file.
    texts: Vec<String>,
    /// One text per line, or JSON Lines with a `text` field.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The texts are search queries: prefix the model's query prompt.
    #[arg(long, conflicts_with = "instruct")]
    query: bool,
    /// The texts are queries for this task: prefix `Instruct: TEXT\nQuery:`.
    #[arg(long, value_name = "TEXT")]
    instruct: Option<String>,
    /// Keep the first N dimensions (Matryoshka truncation), renormalised.
    #[arg(long, value_name = "N")]
    dims: Option<usize>,
    /// Cut texts longer than the model's maximum instead of failing.
    #[arg(long)]
    truncate: bool,
    /// Rank the texts (documents) by cosine similarity to this query and print them best first.
    #[arg(long, value_name = "QUERY")]
    rank: Option<String>,
    /// Print one JSON object: {"embeddings": [[...]], "tokens": [...]} (with --rank: the ranking).
    #[arg(long, conflicts_with = "jsonl")]
    json: bool,
    /// Print one JSON object per text: {"index", "embedding", "tokens"}.
    #[arg(long)]
    jsonl: bool,
    /// Weight precision.
    #[arg(long, value_enum, default_value = "int8")]
    dtype: Dtype,
}

pub fn embed(args: EmbedArgs) -> Result<()> {
    let mut texts = args.texts.clone();
    if let Some(path) = &args.file {
        texts.extend(read_texts(path)?);
    }
    if texts.is_empty() {
        bail!("no texts given: pass them as arguments or with --file");
    }
    let dir = crate::locate_model(&args.model)?;
    let embedder = Embedder::load_with(&dir, &crate::load_options(args.dtype))
        .with_context(|| format!("loading {}", dir.display()))?;
    let query_kind = match &args.instruct {
        Some(task) => EmbedKind::Instruct(task.clone()),
        None => EmbedKind::Query,
    };
    let mut out = std::io::stdout().lock();

    if let Some(query) = &args.rank {
        if args.query {
            bail!("with --rank the texts are documents and QUERY gets the query prompt; drop --query");
        }
        let options = |kind| EmbedOptions { kind, dimensions: args.dims, truncate: args.truncate };
        let q = embedder.embed(&[query], &options(query_kind))?.remove(0);
        let docs = embedder.embed(&texts, &options(EmbedKind::Document))?;
        let mut ranked: Vec<(usize, f32)> = docs.iter().enumerate().map(|(i, d)| (i, q.cosine(d))).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        if args.json || args.jsonl {
            let rows: Vec<_> = ranked
                .iter()
                .map(|&(i, score)| serde_json::json!({"index": i, "score": score, "text": texts[i]}))
                .collect();
            if args.json {
                writeln!(out, "{}", serde_json::json!({ "ranking": rows }))?;
            } else {
                for row in rows {
                    writeln!(out, "{row}")?;
                }
            }
        } else {
            for (i, score) in ranked {
                writeln!(out, "{score:.4}\t{}", one_line(&texts[i]))?;
            }
        }
        return Ok(());
    }

    let kind = if args.query || args.instruct.is_some() { query_kind } else { EmbedKind::Document };
    let options = EmbedOptions { kind, dimensions: args.dims, truncate: args.truncate };
    let embeddings = embedder.embed(&texts, &options)?;
    if args.json {
        let vectors: Vec<&[f32]> = embeddings.iter().map(|e| e.vector.as_slice()).collect();
        let tokens: Vec<usize> = embeddings.iter().map(|e| e.tokens).collect();
        writeln!(out, "{}", serde_json::json!({ "embeddings": vectors, "tokens": tokens }))?;
    } else if args.jsonl {
        for (i, e) in embeddings.iter().enumerate() {
            writeln!(out, "{}", serde_json::json!({"index": i, "embedding": e.vector, "tokens": e.tokens}))?;
        }
    } else {
        // One vector per line, space-separated: easy to paste or pipe into other tools.
        for e in &embeddings {
            let line: Vec<String> = e.vector.iter().map(|v| format!("{v:.6}")).collect();
            writeln!(out, "{}", line.join(" "))?;
        }
    }
    Ok(())
}

/// Texts of a file: JSON Lines objects with a `text` field, or else one text per line (blank
/// lines skipped).
fn read_texts(path: &Path) -> Result<Vec<String>> {
    let content = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<(usize, &str)> =
        content.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    let is_jsonl = lines.first().is_some_and(|(_, l)| l.trim_start().starts_with('{'));
    if !is_jsonl {
        return Ok(lines.into_iter().map(|(_, l)| l.to_owned()).collect());
    }
    lines
        .into_iter()
        .map(|(n, line)| {
            let value: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: invalid JSON", path.display(), n + 1))?;
            match value.get("text").and_then(|t| t.as_str()) {
                Some(text) => Ok(text.to_owned()),
                None => bail!("{}:{}: no string `text` field", path.display(), n + 1),
            }
        })
        .collect()
}

/// The text on one line, shortened for a ranking table.
fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}
