//! `qwenrt bench` (a llama-bench-like table) and `qwenrt synth` (write a random full-size model).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use qwenrt::chat::Message;
use qwenrt::speculative::AcceptanceOracle;
use qwenrt::{
    generate, generate_speculative, ChatParams, ChatSession, Constraint, GenerateOptions, LanguageModel,
    Logits, Model, SamplingParams, SessionOptions, SpeculativeOptions,
};

use crate::gen_args::SpeculativeKind;
use crate::{load_options, Dtype};

#[derive(Args)]
pub struct BenchArgs {
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json, …) or a hub id
    /// (`Qwen/Qwen3.5-0.8B[@revision]`), downloaded into the Hugging Face cache if need be.
    #[arg(long, required_unless_present = "synthetic", conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Measure a random-weight model of this geometry instead (written once to a cache folder).
    #[arg(long, value_name = "PRESET")]
    synthetic: Option<String>,
    /// Weight precision.
    #[arg(long, value_enum, default_value = "int8")]
    dtype: Dtype,
    /// Prompt tokens for the prefill test (0 skips it).
    #[arg(short = 'p', long = "prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens generated in the decode test (0 skips it).
    #[arg(short = 'n', long = "gen", default_value_t = 128)]
    n_gen: usize,
    /// Context depths (tokens already in the state) at which decode is measured, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    ctx: Vec<usize>,
    /// Sequences decoding together in the decode test (one model pass serves all of them, as
    /// in the server's continuous batching); tokens/s is then the aggregate.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Repetitions of each test; the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Also time the vision tower on a synthetic image of each size (WIDTHxHEIGHT,
    /// comma-separated): preprocessing and encoding, at the weight precision.
    #[arg(long, value_delimiter = ',', value_name = "WxH")]
    image_size: Vec<String>,
    /// Also measure quality: logit cosine and top-1 agreement with the f32 model over this many
    /// prompt positions (loads the f32 model too).
    #[arg(long, value_name = "TOKENS")]
    quality: Option<usize>,
    /// Also decode `-n` tokens of a chat answer constrained by this JSON Schema (a file, or the
    /// JSON itself) and the same answer unconstrained, alternating, and report the time spent on
    /// token masks next to the step time. Needs the folder's tokenizer.json.
    #[arg(long, value_name = "FILE|JSON")]
    json_schema: Option<String>,
    /// Also measure speculative decoding with the checkpoint's MTP head against plain decode of
    /// `-n` tokens, alternating: for each draft count and oracle acceptance, decode tokens/s,
    /// drafts kept, and the cost of verifying k + 1 tokens and of one draft step.
    #[arg(long, value_enum, value_name = "KIND")]
    speculative: Option<SpeculativeKind>,
    /// Draft counts to measure with --speculative, comma-separated (1 to 4).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4", requires = "speculative")]
    draft_max: Vec<usize>,
    /// BENCHMARK ONLY, with --speculative: random weights make the head's drafts worthless, so
    /// each draft is replaced by plain greedy decoding's token with this probability (the head
    /// and the verification still run at full cost). Comma-separated rates in [0, 1].
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,0.7,0.85,1", requires = "speculative")]
    oracle_acceptance: Vec<f64>,
    /// With --speculative: draft among the first N token ids only; the draft step's cost is
    /// then reported for both the whole vocabulary and N.
    #[arg(long, value_name = "N", requires = "speculative")]
    draft_vocab: Option<usize>,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Folder to write (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Geometry to build.
    #[arg(long, default_value = "qwen3.5-0.8b")]
    preset: String,
    /// Random seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn synth(args: SynthArgs) -> Result<()> {
    let start = Instant::now();
    qwenrt::synthetic::write_synthetic_model(&args.out, &args.preset, args.seed)?;
    eprintln!("wrote {} ({}) in {:.1} s", args.out.display(), args.preset, start.elapsed().as_secs_f64());
    Ok(())
}

/// The cache folder of a synthetic model, written on first use.
fn synthetic_folder(preset: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("qwenrt-synthetic-{preset}-seed0"));
    if !dir.join("config.json").exists() {
        eprintln!("writing synthetic {preset} to {} (once)", dir.display());
        let partial = dir.with_extension("partial");
        qwenrt::synthetic::write_synthetic_model(&partial, preset, 0)?;
        std::fs::rename(&partial, &dir).with_context(|| format!("renaming {}", partial.display()))?;
    }
    Ok(dir)
}

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Sequential read bandwidth over a buffer much larger than the caches, on all threads (bytes/s).
fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let words = 256 << 20 >> 3; // 256 MiB
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let sum: u64 = buf.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).sum();
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max((words * 8) as f64 / secs);
    }
    best
}

/// A chat answer decoded with and without a JSON Schema, the two alternating rep by rep. Stop
/// tokens are banned so that the free answer runs the full `-n` tokens; the constrained one ends
/// earlier only if its schema is complete.
fn constraint_rows(lm: &Arc<LanguageModel>, schema: &str, args: &BenchArgs) -> Result<Vec<Row>> {
    let constraint = Constraint::JsonSchema(crate::gen_args::read_json_schema(schema)?);
    lm.check_constraint(&constraint)?;
    let question = Message::user("Describe today's weather in three cities as JSON.");
    let prompt = lm.encode(&lm.render_chat(&[question], true, Some(false))?)?;
    let mut plain = ChatParams {
        sampling: SamplingParams::greedy(),
        max_tokens: args.n_gen.max(2),
        enable_thinking: Some(false),
        ..Default::default()
    };
    plain.sampling.logit_bias = lm.stop_ids().iter().map(|&id| (id, f32::NEG_INFINITY)).collect();
    let constrained = ChatParams { constraint: Some(constraint), ..plain.clone() };
    let runs = [("chat decode, unconstrained", plain), ("chat decode, json schema", constrained)];
    // Per run: tokens/s after the first token, step ms, mask ms per token, tokens.
    let mut measured: Vec<Vec<(f64, f64, f64, usize)>> = vec![Vec::new(); runs.len()];
    for _ in 0..args.reps {
        for ((_, params), measured) in runs.iter().zip(&mut measured) {
            let mut session = ChatSession::with_options(
                lm.clone(),
                SessionOptions { prompt_cache_bytes: 0, ..Default::default() },
            );
            let mut turn = session.begin(&prompt, params)?;
            while session.advance(&mut turn, &mut |_| {})? {}
            let reply = turn.finish(&mut |_| {});
            let n = reply.usage.completion_tokens;
            if n < 2 {
                bail!(
                    "the {} answer ended after {n} token(s): give a schema that admits longer answers",
                    params.constraint.as_ref().map_or("free", |_| "constrained")
                );
            }
            let decode = reply.usage.decode_time.as_secs_f64();
            let steps = (n - 1) as f64;
            let mask = reply.usage.constraint_time.as_secs_f64() * 1e3 / n as f64;
            measured.push((steps / decode, decode * 1e3 / steps, mask, n));
        }
    }
    Ok(runs
        .iter()
        .zip(measured)
        .map(|((test, _), runs)| {
            let mut rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let mut steps: Vec<f64> = runs.iter().map(|r| r.1).collect();
            let mut masks: Vec<f64> = runs.iter().map(|r| r.2).collect();
            let spread =
                rates.iter().cloned().fold(0.0, f64::max) - rates.iter().cloned().fold(f64::MAX, f64::min);
            Row {
                test: (*test).to_owned(),
                tokens_per_second: median(&mut rates),
                spread,
                extra: serde_json::json!({
                    "tokens": runs.iter().map(|r| r.3).min().unwrap_or(0),
                    "step_ms": median(&mut steps),
                    "mask_ms_per_token": median(&mut masks),
                }),
            }
        })
        .collect())
}

/// Plain greedy decode against speculative decode of the same prompt, alternating, at each draft
/// count and oracle acceptance; then the costs of a verification pass and of a draft step.
fn speculative_rows(model: &Model, args: &BenchArgs) -> Result<Vec<Row>> {
    if !model.has_mtp() {
        bail!("--speculative mtp: this checkpoint has no MTP head (mtp.* tensors)");
    }
    let n = args.n_gen.max(8);
    let prompt = tokens(32, model.vocab_size(), 7);
    let options = GenerateOptions { max_tokens: n, sampling: SamplingParams::greedy(), stop_ids: vec![] };
    let plain_run = || -> Result<(Vec<u32>, f64)> {
        let mut state = model.new_state();
        let out = generate(model, &mut state, &prompt, &options, |_| true)?;
        Ok((out.tokens.clone(), out.decode_tokens_per_second()))
    };
    let reference = plain_run()?.0;
    let mut configs: Vec<(usize, f64, bool)> = Vec::new();
    for &rate in &args.oracle_acceptance {
        for &k in &args.draft_max {
            configs.push((k, rate, false));
        }
        configs.push((*args.draft_max.iter().max().unwrap_or(&1), rate, true));
    }
    let mut plain_rates = Vec::new();
    // Per config: tokens/s, acceptance, verification passes.
    let mut measured: Vec<Vec<(f64, f64, usize)>> = vec![Vec::new(); configs.len()];
    for rep in 0..args.reps {
        plain_rates.push(plain_run()?.1);
        for (&(k, rate, adaptive), measured) in configs.iter().zip(&mut measured) {
            let mut state = model.new_state();
            let speculative = SpeculativeOptions {
                draft_max: k,
                adaptive,
                draft_vocab: args.draft_vocab,
                oracle: Some(AcceptanceOracle { reference: reference.clone(), rate, seed: rep as u64 }),
            };
            let (out, stats) =
                generate_speculative(model, &mut state, &prompt, &options, speculative, |_| true)?;
            if out.tokens != reference {
                bail!("speculative output differs from plain greedy output (k {k}, oracle {rate})");
            }
            measured.push((out.decode_tokens_per_second(), stats.acceptance(), stats.steps));
        }
    }
    let plain = median(&mut plain_rates);
    let mut rows = vec![Row {
        test: format!("tg{n} plain (speculation baseline)"),
        tokens_per_second: plain,
        spread: spread(&plain_rates),
        extra: serde_json::json!({}),
    }];
    for ((k, rate, adaptive), runs) in configs.iter().zip(measured) {
        let mut rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let mut acceptance: Vec<f64> = runs.iter().map(|r| r.1).collect();
        let tps = median(&mut rates);
        rows.push(Row {
            test: format!("tg{n} mtp k={k}{} oracle a={rate}", if *adaptive { " adaptive" } else { "" }),
            tokens_per_second: tps,
            spread: spread(&rates),
            extra: serde_json::json!({
                "speedup": tps / plain,
                "acceptance": median(&mut acceptance),
                "passes": runs.iter().map(|r| r.2).min().unwrap_or(0),
            }),
        });
    }
    // Costs: one decode step, a verification pass of k + 1 tokens (with its rollback to one
    // token), one draft step.
    let mut state = model.new_state();
    model.enable_drafting(&mut state)?;
    model.forward(&mut state, &prompt, Logits::Last)?;
    // One step in: the head has caught up on the prompt and waits for a single row.
    model.draft(&mut state, reference[0], 1, &mut |l| Some(qwenrt::sampling::argmax(l)))?;
    model.verify(&mut state, &reference[..1])?;
    model.keep_verified(&mut state, 1)?;
    let base = state.snapshot();
    let time = |state: &mut qwenrt::SessionState,
                f: &mut dyn FnMut(&mut qwenrt::SessionState) -> Result<()>| {
        let mut times = Vec::new();
        for _ in 0..args.reps.max(5) {
            state.restore(&base)?;
            let t0 = Instant::now();
            f(state)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok::<f64, anyhow::Error>(median(&mut times))
    };
    let step = time(&mut state, &mut |s| Ok(model.forward(s, &[reference[0]], Logits::Last).map(|_| ())?))?;
    rows.push(Row {
        test: "decode step".into(),
        tokens_per_second: 1e3 / step,
        spread: 0.0,
        extra: serde_json::json!({ "ms": step }),
    });
    for &k in &args.draft_max {
        let pass: Vec<u32> = reference[..=k.min(reference.len() - 1)].to_vec();
        let ms = time(&mut state, &mut |s| {
            model.verify(s, &pass)?;
            Ok(model.keep_verified(s, 1)?)
        })?;
        rows.push(Row {
            test: format!("verify {} tokens + rollback", pass.len()),
            tokens_per_second: pass.len() as f64 * 1e3 / ms,
            spread: 0.0,
            extra: serde_json::json!({ "ms": ms, "decode_steps": ms / step }),
        });
    }
    let vocab = model.vocab_size();
    for candidates in std::iter::once(vocab).chain(args.draft_vocab.map(|n| n.clamp(1, vocab))) {
        let ms = time(&mut state, &mut |s| {
            let argmax = &mut |l: &[f32]| Some(qwenrt::sampling::argmax(l));
            Ok(model.draft_among(s, reference[0], 1, candidates, argmax).map(|_| ())?)
        })?;
        rows.push(Row {
            test: format!("draft step over {candidates} ids (catch-up of one row, head, LM head)"),
            tokens_per_second: 1e3 / ms,
            spread: 0.0,
            extra: serde_json::json!({ "ms": ms, "decode_steps": ms / step }),
        });
    }
    Ok(rows)
}

fn spread(rates: &[f64]) -> f64 {
    rates.iter().cloned().fold(0.0, f64::max) - rates.iter().cloned().fold(f64::MAX, f64::min)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn tokens(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut s = 0x2545F4914F6CDD1Du64 ^ salt;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % (vocab.min(248_000) as u64)) as u32
        })
        .collect()
}

struct Row {
    test: String,
    tokens_per_second: f64,
    spread: f64,
    extra: serde_json::Value,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.reps == 0 || args.batch == 0 {
        bail!("--reps and --batch must be at least 1");
    }
    let dir = match (&args.model, &args.synthetic) {
        (Some(spec), _) => crate::locate_model(spec)?,
        (None, Some(preset)) => synthetic_folder(preset)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let name = args
        .synthetic
        .clone()
        .unwrap_or_else(|| dir.file_name().unwrap_or_default().to_string_lossy().into());
    let start = Instant::now();
    // A constrained answer needs the tokenizer and template too.
    let lm = match &args.json_schema {
        Some(_) => {
            Some(Arc::new(LanguageModel::load_with(&dir, &load_options(args.dtype)).with_context(|| {
                format!("loading {} (with its tokenizer, for --json-schema)", dir.display())
            })?))
        }
        None => None,
    };
    let owned;
    let model = match &lm {
        Some(lm) => &lm.model,
        None => {
            owned = Model::load_with(&dir, &load_options(args.dtype))
                .with_context(|| format!("loading {}", dir.display()))?;
            &owned
        }
    };
    let load_secs = start.elapsed().as_secs_f64();
    let vocab = model.vocab_size();
    let mut rows = Vec::new();
    // A sentence-transformers folder: measure embedding throughput instead of generation.
    let embedding_model = dir.join("modules.json").exists();

    if embedding_model && args.n_prompt > 0 {
        rows.push(embed_row(model, args.n_prompt, args.reps, vocab)?);
    } else if args.n_prompt > 0 {
        let prompt = tokens(args.n_prompt, vocab, 1);
        let mut rates = Vec::new();
        for _ in 0..args.reps {
            let mut state = model.new_state();
            let t0 = Instant::now();
            model.forward(&mut state, &prompt, Logits::Last)?;
            rates.push(args.n_prompt as f64 / t0.elapsed().as_secs_f64());
        }
        let spread =
            rates.iter().cloned().fold(0.0, f64::max) - rates.iter().cloned().fold(f64::MAX, f64::min);
        rows.push(Row {
            test: format!("pp{}", args.n_prompt),
            tokens_per_second: median(&mut rates),
            spread,
            extra: serde_json::json!({}),
        });
    }

    if args.n_gen > 0 && !embedding_model {
        // Every depth is prefilled first; then the reps alternate between depths, so that the
        // machine's drifting speed hits them alike and their ratio is measured side by side.
        let mut starts = Vec::with_capacity(args.ctx.len());
        for &depth in &args.ctx {
            let mut state = model.new_state();
            if depth > 0 {
                model.forward(&mut state, &tokens(depth, vocab, 2), Logits::None)?;
            }
            starts.push(state.snapshot());
        }
        let gen = tokens(args.n_gen, vocab, 3);
        let mut state = model.new_state();
        let mut batch: Vec<_> = (1..args.batch).map(|_| model.new_state()).collect();
        let mut rates = vec![Vec::new(); starts.len()];
        for _ in 0..args.reps {
            for (snapshot, rates) in starts.iter().zip(&mut rates) {
                state.restore(snapshot)?;
                for other in &mut batch {
                    other.restore(snapshot)?;
                }
                let t0 = Instant::now();
                if batch.is_empty() {
                    for &id in &gen {
                        model.forward(&mut state, &[id], Logits::Last)?;
                    }
                } else {
                    for (step, &id) in gen.iter().enumerate() {
                        let mut states: Vec<_> =
                            std::iter::once(&mut state).chain(batch.iter_mut()).collect();
                        let ids: Vec<[u32; 1]> = (0..states.len())
                            .map(|i| [(id as usize + i * 7919 + step) as u32 % vocab as u32])
                            .collect();
                        let inputs: Vec<&[u32]> = ids.iter().map(|i| i.as_slice()).collect();
                        model.forward_batch(&mut states, &inputs)?;
                    }
                }
                rates.push((args.n_gen * args.batch) as f64 / t0.elapsed().as_secs_f64());
            }
        }
        for ((&depth, snapshot), mut rates) in args.ctx.iter().zip(&starts).zip(rates) {
            // Bytes a decode step must read: every weight matrix once (the tied embedding once,
            // as the LM head) plus each sequence's state (KV cache and DeltaNet states), shared
            // by the step's tokens.
            let bytes_per_token =
                (model.weight_bytes() + snapshot.bytes() * args.batch) as f64 / args.batch as f64;
            let spread =
                rates.iter().cloned().fold(0.0, f64::max) - rates.iter().cloned().fold(f64::MAX, f64::min);
            rows.push(Row {
                test: match (depth, args.batch) {
                    (0, 1) => format!("tg{}", args.n_gen),
                    (d, 1) => format!("tg{} @ d{d}", args.n_gen),
                    (0, b) => format!("tg{} ×{b} sequences", args.n_gen),
                    (d, b) => format!("tg{} ×{b} sequences @ d{d}", args.n_gen),
                },
                tokens_per_second: median(&mut rates),
                spread,
                extra: serde_json::json!({ "bytes_per_token": bytes_per_token }),
            });
        }
    }
    if let (Some(lm), Some(schema)) = (&lm, &args.json_schema) {
        rows.extend(constraint_rows(lm, schema, &args)?);
    }
    if args.speculative.is_some() {
        rows.extend(speculative_rows(model, &args)?);
    }
    if !args.image_size.is_empty() {
        rows.extend(vision_rows(&dir, &args)?);
    }
    // Peak memory is read before the bandwidth probe allocates its buffer.
    let rss = peak_rss();
    if args.n_gen > 0 && !args.ctx.is_empty() && !embedding_model {
        let bandwidth = read_bandwidth();
        for row in
            rows.iter_mut().filter(|r| r.test.starts_with("tg") && r.extra.get("bytes_per_token").is_some())
        {
            let bound = bandwidth / row.extra["bytes_per_token"].as_f64().unwrap_or(f64::NAN);
            row.extra["read_bandwidth_bytes_per_second"] = bandwidth.into();
            row.extra["bandwidth_bound_tokens_per_second"] = bound.into();
            row.extra["fraction_of_bound"] = (row.tokens_per_second / bound).into();
        }
    }

    if let (Some(n), true) = (args.quality, embedding_model) {
        let reference = Model::load(&dir)?;
        let docs: Vec<Vec<u32>> = (0..8).map(|i| tokens(n, vocab, 10 + i)).collect();
        let (want, got) = (last_hidden(&reference, &docs)?, last_hidden(model, &docs)?);
        let hidden = model.config().hidden_size();
        let cosines: Vec<f64> =
            want.chunks_exact(hidden).zip(got.chunks_exact(hidden)).map(|(a, b)| cosine(a, b)).collect();
        rows.push(Row {
            test: format!("quality vs f32 (8 texts of {n} tokens)"),
            tokens_per_second: f64::NAN,
            spread: 0.0,
            extra: serde_json::json!({
                "mean_cosine": cosines.iter().sum::<f64>() / cosines.len() as f64,
                "min_cosine": cosines.iter().cloned().fold(f64::MAX, f64::min),
            }),
        });
    } else if let Some(n) = args.quality {
        let reference = Model::load(&dir)?;
        let a = qwenrt::quality::compare_logits(&reference, model, &tokens(n, vocab, 4))?;
        rows.push(Row {
            test: format!("quality vs f32 ({n} positions)"),
            tokens_per_second: f64::NAN,
            spread: 0.0,
            extra: serde_json::json!({
                "mean_cosine": a.mean_cosine, "min_cosine": a.min_cosine, "top1_agreement": a.top1,
            }),
        });
    }

    let threads = qwenrt::threads();
    let dtype = args.dtype.weight_dtype().name();
    if args.json {
        for row in &rows {
            let json = serde_json::json!({
                "model": name, "dtype": dtype, "threads": threads, "test": row.test,
                "tokens_per_second": row.tokens_per_second, "spread": row.spread, "reps": args.reps,
                "load_seconds": load_secs, "weight_bytes": model.weight_bytes(), "peak_rss_bytes": rss,
                "isa": qwenrt_isa(), "details": row.extra,
            });
            println!("{json}");
        }
        return Ok(());
    }
    let gib = |b: f64| b / (1u64 << 30) as f64;
    println!("| model | dtype | threads | test | t/s | note |");
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        if let (Some(c), None) = (row.extra.get("mean_cosine"), row.extra.get("top1_agreement")) {
            println!(
                "| {name} | {dtype} | {threads} | {} | | embedding cosine mean {:.6} (min {:.6}) |",
                row.test,
                c.as_f64().unwrap_or(0.0),
                row.extra["min_cosine"].as_f64().unwrap_or(0.0),
            );
            continue;
        }
        if let Some(c) = row.extra.get("mean_cosine") {
            println!(
                "| {name} | {dtype} | {threads} | {} | | logit cosine mean {:.5} (min {:.5}), top-1 agreement {:.1} % |",
                row.test,
                c.as_f64().unwrap_or(0.0),
                row.extra["min_cosine"].as_f64().unwrap_or(0.0),
                row.extra["top1_agreement"].as_f64().unwrap_or(0.0) * 100.0
            );
            continue;
        }
        if let Some(mask) = row.extra.get("mask_ms_per_token") {
            println!(
                "| {name} | {dtype} | {threads} | {} | {:.2} ± {:.2} | {} tokens; step {:.2} ms, of which masks {:.3} ms |",
                row.test,
                row.tokens_per_second,
                row.spread / 2.0,
                row.extra["tokens"],
                row.extra["step_ms"].as_f64().unwrap_or(0.0),
                mask.as_f64().unwrap_or(0.0),
            );
            continue;
        }
        if let Some(secs) = row.extra.get("encode_seconds") {
            println!(
                "| {name} | {dtype} | {threads} | {} | {:.2} | encode {:.2} s per image |",
                row.test,
                row.tokens_per_second,
                secs.as_f64().unwrap_or(0.0)
            );
            continue;
        }
        let (speedup, steps) = (row.extra.get("speedup"), row.extra.get("decode_steps"));
        let note = match row.extra.get("fraction_of_bound") {
            None if speedup.is_some() => format!(
                "{:.2}× plain decode; {:.0} % of drafts kept",
                speedup.and_then(|s| s.as_f64()).unwrap_or(0.0),
                row.extra["acceptance"].as_f64().unwrap_or(0.0) * 100.0
            ),
            None if steps.is_some() => format!(
                "{:.1} ms = {:.2} decode steps",
                row.extra["ms"].as_f64().unwrap_or(0.0),
                steps.and_then(|s| s.as_f64()).unwrap_or(0.0)
            ),
            Some(f) => format!(
                "{:.0} % of the {:.1} t/s bandwidth bound ({:.2} GB/token at {:.1} GB/s)",
                f.as_f64().unwrap_or(0.0) * 100.0,
                row.extra["bandwidth_bound_tokens_per_second"].as_f64().unwrap_or(0.0),
                row.extra["bytes_per_token"].as_f64().unwrap_or(0.0) / 1e9,
                row.extra["read_bandwidth_bytes_per_second"].as_f64().unwrap_or(0.0) / 1e9
            ),
            None => String::new(),
        };
        println!(
            "| {name} | {dtype} | {threads} | {} | {:.2} ± {:.2} | {note} |",
            row.test,
            row.tokens_per_second,
            row.spread / 2.0
        );
    }
    println!(
        "load {:.2} s; weights {:.2} GiB; peak RSS {}; kernels {}",
        load_secs,
        gib(model.weight_bytes() as f64),
        rss.map_or("unknown".into(), |r| format!("{:.2} GiB", gib(r as f64))),
        qwenrt_isa()
    );
    Ok(())
}

/// Vision encode time per image size: preprocessing (resize, normalise, patches) and the tower.
fn vision_rows(dir: &std::path::Path, args: &BenchArgs) -> Result<Vec<Row>> {
    use qwenrt::vision::{ImagePreprocessor, RgbImage, VisionTower};
    let tower = VisionTower::load_dir(dir, args.dtype.weight_dtype())
        .with_context(|| format!("loading the vision tower of {}", dir.display()))?;
    let preprocessor = ImagePreprocessor::from_dir(dir)?;
    let mut rows = Vec::new();
    for size in &args.image_size {
        let (w, h) = size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
            .with_context(|| format!("--image-size {size}: expected WIDTHxHEIGHT, e.g. 448x448"))?;
        // A smooth pattern with some texture: the content does not change the work.
        let data = (0..w * h * 3).map(|i| ((i * 7 + i / (3 * w) * 13) % 251) as u8).collect();
        let image = RgbImage { width: w, height: h, data };
        let mut seconds = Vec::new();
        let mut tokens = 0;
        for _ in 0..args.reps {
            let t0 = Instant::now();
            let processed = preprocessor.preprocess(&image)?;
            let out = tower.encode(&processed.pixel_values, &[processed.grid])?;
            seconds.push(t0.elapsed().as_secs_f64());
            tokens = out.len() / tower.out_hidden();
        }
        let spread =
            seconds.iter().cloned().fold(0.0, f64::max) - seconds.iter().cloned().fold(f64::MAX, f64::min);
        let secs = median(&mut seconds);
        rows.push(Row {
            test: format!("vision {w}x{h} ({tokens} image tokens)"),
            tokens_per_second: tokens as f64 / secs,
            spread: spread * tokens as f64 / (secs * secs),
            extra: serde_json::json!({ "encode_seconds": secs, "image_tokens": tokens }),
        });
    }
    Ok(rows)
}

/// Embedding throughput for texts of `len` tokens, batched as the embedder batches them (texts
/// adding up to about 4,096 tokens share each pass).
fn embed_row(model: &Model, len: usize, reps: usize, vocab: usize) -> Result<Row> {
    let n_docs = (4096 / len).max(1);
    let docs: Vec<Vec<u32>> = (0..n_docs as u64).map(|i| tokens(len, vocab, 20 + i)).collect();
    let mut rates = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        last_hidden(model, &docs)?;
        rates.push((n_docs * len) as f64 / t0.elapsed().as_secs_f64());
    }
    let spread = rates.iter().cloned().fold(0.0, f64::max) - rates.iter().cloned().fold(f64::MAX, f64::min);
    Ok(Row {
        test: format!("embed {n_docs}×{len}"),
        tokens_per_second: median(&mut rates),
        spread,
        extra: serde_json::json!({ "texts": n_docs, "tokens_per_text": len }),
    })
}

/// Final-normed last-token states of `docs`, all in one batch.
fn last_hidden(model: &Model, docs: &[Vec<u32>]) -> Result<Vec<f32>> {
    let mut states: Vec<_> = docs.iter().map(|_| model.new_state()).collect();
    let mut refs: Vec<_> = states.iter_mut().collect();
    let inputs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
    Ok(model.last_hidden_batch(&mut refs, &inputs)?.to_vec())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn qwenrt_isa() -> &'static str {
    qwenrt::isa_name()
}
