//! The `qwenrt` binary on a complete tiny model folder (published Qwen3.5 layout, real
//! vocabulary, generated tokenizer.json), checked against transformers' recorded outputs.

mod common;

use std::process::Output;

use common::{model_folder, qwenrt_output, root};

use safetensors::SafeTensors;

fn qwenrt(args: &[&str], stdin: Option<&str>) -> Output {
    qwenrt_output(args, stdin.unwrap_or(""))
}

/// Runs each command line, which must fail before any output with a message containing its
/// text, without a panic.
fn assert_each_fails(cases: &[(&[&str], &str)]) {
    for (args, want) in cases {
        let out = qwenrt(args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.stdout.is_empty(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: stderr {stderr:?} lacks {want:?}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

struct Reference {
    meta: serde_json::Value,
    bytes: Vec<u8>,
}

impl Reference {
    fn load() -> Self {
        let dir = root().join("fixtures/models/tiny-vl");
        Reference {
            meta: serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap(),
            bytes: std::fs::read(dir.join("expected.safetensors")).unwrap(),
        }
    }
    fn prompt(&self, i: usize) -> &serde_json::Value {
        &self.meta["prompts"][i]
    }
    fn raw(&self, name: &str) -> Vec<u8> {
        SafeTensors::deserialize(&self.bytes).unwrap().tensor(name).unwrap().data().to_vec()
    }
    fn ids(&self, name: &str) -> Vec<u64> {
        self.raw(name).chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u64).collect()
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        self.raw(name).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }
}

fn as_ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

#[test]
fn run_raw_json_reproduces_transformers_greedy_tokens() {
    let dir = model_folder();
    let r = Reference::load();
    let text = r.prompt(0)["text"].as_str().unwrap();
    let out = qwenrt(
        &[
            "run",
            "--model",
            dir.to_str().unwrap(),
            "--dtype",
            "f32",
            "--raw",
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "64",
            text,
        ],
        None,
    );
    let json = ok_json(&out);
    assert_eq!(as_ids(&json["prompt_tokens"]), r.ids("prompt0.ids"));
    assert_eq!(as_ids(&json["tokens"]), r.ids("prompt0.greedy"));
    assert_eq!(json["finish_reason"], "length");
    assert!(json["timings"]["decode_tokens_per_second"].as_f64().unwrap() > 0.0);

    // Streaming prints the same text as the JSON mode, then a newline.
    let streamed = qwenrt(
        &[
            "run",
            "--model",
            dir.to_str().unwrap(),
            "--dtype",
            "f32",
            "--raw",
            "--temperature",
            "0",
            "--max-tokens",
            "64",
            text,
        ],
        None,
    );
    assert!(streamed.status.success());
    assert_eq!(String::from_utf8(streamed.stdout).unwrap(), format!("{}\n", json["text"].as_str().unwrap()));
    assert!(String::from_utf8_lossy(&streamed.stderr).contains("finish: length"));
}

#[test]
fn run_renders_the_chat_template_by_default_and_reads_stdin() {
    let dir = model_folder();
    let r = Reference::load();
    // prompt1: one user message, template defaults; prompt3: the same with --think.
    for (i, extra) in [(1usize, None), (3, Some("--think"))] {
        let message = r.prompt(i)["messages"][0]["content"].as_str().unwrap();
        let mut args = vec![
            "run",
            "--model",
            dir.to_str().unwrap(),
            "--dtype",
            "f32",
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "64",
        ];
        args.extend(extra);
        args.push("-");
        let json = ok_json(&qwenrt(&args, Some(message)));
        assert_eq!(as_ids(&json["prompt_tokens"]), r.ids(&format!("prompt{i}.ids")), "prompt{i}");
        assert_eq!(as_ids(&json["tokens"]), r.ids(&format!("prompt{i}.greedy")), "prompt{i}");
    }
}

#[test]
fn score_log_probabilities_match_transformers() {
    let dir = model_folder();
    let r = Reference::load();
    let ids = r.ids("prompt0.ids");
    let text = r.prompt(0)["text"].as_str().unwrap();
    // Score the prompt followed by one more word: the last log-prob is then
    // log_softmax(transformers' last-position logits)[that word's token].
    let scored = format!("{text} The");
    let json = ok_json(&qwenrt(
        &["score", "--model", dir.to_str().unwrap(), "--dtype", "f32", "--raw", "--json", &scored],
        None,
    ));
    let tokens = as_ids(&json["tokens"]);
    assert_eq!(tokens[..ids.len()], ids[..], "the prompt tokenizes as in the fixture");
    assert_eq!(tokens.len(), ids.len() + 1, "\" The\" is one token");
    let logprobs: Vec<f64> =
        json["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(logprobs.len(), tokens.len() - 1);
    assert!(logprobs.iter().all(|&l| l <= 0.0));
    let mean_nll = -logprobs.iter().sum::<f64>() / logprobs.len() as f64;
    assert!((json["perplexity"].as_f64().unwrap() - mean_nll.exp()).abs() < 1e-9 * mean_nll.exp());

    let logits = r.f32("prompt0.last_logits");
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    let want_last = logits[*tokens.last().unwrap() as usize] as f64 - lse;
    let got_last = *logprobs.last().unwrap();
    assert!((got_last - want_last).abs() < 1e-3, "last log-prob {got_last} vs transformers {want_last}");

    let plain = qwenrt(&["score", "--model", dir.to_str().unwrap(), "--raw", &scored], None);
    assert!(String::from_utf8_lossy(&plain.stdout).starts_with("perplexity "));
}

/// As transformers does, one token gives no log-probabilities rather than an error.
#[test]
fn score_of_one_token_predicts_nothing() {
    let dir = model_folder();
    let json = ok_json(&qwenrt(&["score", "--model", dir.to_str().unwrap(), "--raw", "--json", "a"], None));
    assert_eq!(json["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(json["logprobs"], serde_json::json!([]));
    assert!(json["perplexity"].is_null() && json["mean_nll"].is_null(), "{json}");
    let plain = qwenrt(&["score", "--model", dir.to_str().unwrap(), "--raw", "a"], None);
    assert!(plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stdout).starts_with("perplexity undefined"));
}

#[test]
fn inspect_counts_parameters_by_part() {
    let dir = model_folder();
    let json = ok_json(&qwenrt(&["inspect", "--model", dir.to_str().unwrap(), "--json"], None));
    assert_eq!(json["layers"], 4);
    assert_eq!(json["linear_attention_layers"], 3);
    assert_eq!(json["full_attention_layers"], 1);
    let parts = json["parameters"].as_object().unwrap();
    for part in [
        "vision tower",
        "MTP head",
        "embedding (tied LM head)",
        "Gated DeltaNet mixers",
        "gated attention mixers",
        "MLPs",
    ] {
        assert!(parts.get(part).and_then(|v| v.as_u64()).unwrap_or(0) > 0, "no {part} in {parts:?}");
    }
    assert_eq!(parts["embedding (tied LM head)"], 248320 * json["hidden_size"].as_u64().unwrap());
    let sum: u64 = parts.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(json["total_parameters"].as_u64().unwrap(), sum);

    let table = qwenrt(&["inspect", "--model", dir.to_str().unwrap()], None);
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("3 Gated DeltaNet, 1 gated attention"));
}

#[test]
fn bad_input_gives_a_clear_error_and_exit_code() {
    let dir = model_folder();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--model", "/nonexistent/model", "hi"], "no such model folder, and not a hub id"),
        (&["run", "--model", dir.to_str().unwrap(), "--top-p", "0", "hi"], "top_p must be in (0, 1]"),
        (&["run", "--model", dir.to_str().unwrap(), "--temperature=-1", "hi"], "temperature must be"),
        (&["score", "--model", dir.to_str().unwrap(), "--raw", ""], "the text is empty"),
        (
            &["score", "--model", dir.to_str().unwrap(), "--file", "/nonexistent/file.txt"],
            "/nonexistent/file.txt",
        ),
        (&["run", "--model", dir.to_str().unwrap(), "--dtype", "int3", "hi"], "invalid value 'int3'"),
    ];
    assert_each_fails(cases);
}

/// `qwenrt run --json` on the tiny model with these extra flags.
fn run_json(flags: &[&str]) -> serde_json::Value {
    let dir = model_folder();
    let base = ["run", "--model", dir.to_str().unwrap(), "--dtype", "f32", "--json"];
    let args: Vec<&str> = base.iter().chain(flags).copied().chain(["Answer."]).collect();
    ok_json(&qwenrt(&args, None))
}

#[test]
fn run_constrains_the_answer_with_each_flag() {
    let schema = r#"{"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"}}, "required": ["n", "ok"], "additionalProperties": false}"#;
    let schema_file = common::temp_dir("cli-schema").join("schema.json");
    std::fs::write(&schema_file, schema).unwrap();
    for source in [schema, schema_file.to_str().unwrap()] {
        let out = run_json(&["--json-schema", source]);
        assert_eq!(out["finish_reason"], "stop", "{out}");
        let value: serde_json::Value = serde_json::from_str(out["text"].as_str().unwrap()).unwrap();
        assert!(
            value["n"].as_i64().is_some_and(|n| (0..=99).contains(&n)) && value["ok"].is_boolean(),
            "{value}"
        );
    }
    let out = run_json(&["--regex", "[a-c]{2}-[0-9]"]);
    let text = out["text"].as_str().unwrap();
    assert!(text.len() == 4 && text.as_bytes()[2] == b'-', "{text:?}");

    let grammar = common::temp_dir("cli-grammar").join("g.lark");
    std::fs::write(&grammar, "start: \"<\" WORD (\",\" WORD)* \">\"\nWORD: /[xyz]{1,3}/\n").unwrap();
    let out = run_json(&["--max-tokens", "60", "--grammar", grammar.to_str().unwrap()]);
    let text = out["text"].as_str().unwrap();
    let complete = out["finish_reason"] == "stop";
    assert!(!complete || (text.starts_with('<') && text.ends_with('>')), "{text:?}");
    let words = text.trim_start_matches('<').trim_end_matches('>').split(',');
    let last_may_be_cut = |i: usize, n: usize| !complete && i + 1 == n;
    let words: Vec<&str> = words.collect();
    for (i, w) in words.iter().enumerate() {
        let whole = (1..=3).contains(&w.len()) && w.chars().all(|c| "xyz".contains(c));
        assert!(whole || last_may_be_cut(i, words.len()), "{text:?}");
    }

    let out = run_json(&["--json-object", "--max-tokens", "100"]);
    assert!(out["text"].as_str().unwrap().trim_start().starts_with('{'), "{out}");
}

#[test]
fn bad_constraints_are_errors_before_any_output() {
    let dir = model_folder();
    let model = dir.to_str().unwrap();
    for (flags, message) in [
        (vec!["--json-schema", r#"{"type": "strng"}"#], "invalid JSON Schema"),
        (vec!["--json-schema", "{not json"], "invalid JSON"),
        (vec!["--json-schema", "/no/such/schema.json"], "not a readable file"),
        (vec!["--regex", "(unclosed"], "invalid regular expression"),
        (vec!["--regex", "a", "--json-object"], "cannot be used with"),
    ] {
        let args: Vec<&str> = ["run", "--model", model, "--dtype", "f32"]
            .into_iter()
            .chain(flags.clone())
            .chain(["Hi"])
            .collect();
        let out = qwenrt(&args, None);
        assert!(!out.status.success(), "{flags:?} succeeded");
        assert!(out.stdout.is_empty(), "{flags:?} printed {:?}", String::from_utf8_lossy(&out.stdout));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
    }
}

/// `--speculative mtp` gives plain decoding's answer and reports its drafts in `--json`; a
/// checkpoint without the head and bad draft counts are refused before any output.
#[test]
fn run_decodes_speculatively_with_the_same_answer() {
    // The end tokens banned, so that the answer runs to its limit.
    let greedy = [
        "--temperature",
        "0",
        "--max-tokens",
        "24",
        "--logit-bias",
        "248044=-inf",
        "--logit-bias",
        "248046=-inf",
    ];
    let plain = run_json(&greedy);
    for extra in [
        &["--speculative", "mtp"][..],
        &["--speculative", "mtp", "--draft-max", "1", "--draft-vocab", "50000"],
    ] {
        let flags: Vec<&str> = greedy.iter().chain(extra).copied().collect();
        let spec = run_json(&flags);
        assert_eq!(spec["tokens"], plain["tokens"], "{extra:?}");
        assert_eq!(spec["text"], plain["text"], "{extra:?}");
        let drafted = spec["speculation"]["drafted"].as_u64().unwrap_or(0);
        assert!(drafted > 0, "{extra:?}: {spec}");
    }
    assert!(plain["speculation"].is_null(), "{plain}");

    // The same folder without the head (every transformers save).
    let dir = model_folder();
    let shard = dir.join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = tensors.tensors().into_iter().filter(|(name, _)| !name.starts_with("mtp.")).collect();
    assert!(kept.len() < tensors.len(), "the fixture's head is in this shard");
    safetensors::serialize_to_file(kept, None, &shard).unwrap();
    let d = dir.to_str().unwrap();
    let with_head = model_folder();
    let with_head = with_head.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--model", d, "--speculative", "mtp", "hi"], "no MTP head"),
        (
            &["run", "--model", with_head, "--speculative", "mtp", "--draft-max", "5", "hi"],
            "--draft-max must be 1 to 4",
        ),
        (&["run", "--model", d, "--draft-max", "2", "hi"], "--speculative"),
    ];
    assert_each_fails(cases);
    // Without the flag the folder still runs.
    assert!(qwenrt(&["run", "--model", d, "--max-tokens", "2", "hi"], None).status.success());
}

/// Flags with absurd values are errors naming the flag (or, for the repetition guard, merely
/// never fire): no panic, no hang, no size that wraps to zero.
#[test]
fn absurd_flags_are_errors_not_panics_or_hangs() {
    let dir = model_folder();
    let d = dir.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--threads", "10000", "inspect", "--model", d], "--threads must be 1 to"),
        (&["run", "--model", d, "--logit-bias", "999999999=1", "hi"], "outside the vocabulary"),
        (
            &["serve", "--model", d, "--max-body-mib", "18446744073709551615"],
            "--max-body-mib 18446744073709551615 is too large",
        ),
        (
            &["serve", "--model", d, "--cache-mib", "18446744073709551615"],
            "--cache-mib 18446744073709551615 is too large",
        ),
        (&["serve", "--model", d, "--api-key", ""], "--api-key (or QWENRT_API_KEY) is empty"),
        (
            &["chat", "--model", d, "--cache-mib", "18446744073709551615"],
            "--cache-mib 18446744073709551615 is too large",
        ),
    ];
    assert_each_fails(cases);
    let guard =
        ["run", "--model", d, "--max-tokens", "8", "--repetition-guard", "18446744073709551615", "hi"];
    let out = qwenrt(&guard, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A sentence-transformers folder is described as it is stored: no `model.` prefix.
#[test]
fn inspect_names_the_layout_the_tensors_have() {
    let dir = common::embed_model_folder();
    let out = qwenrt(&["inspect", "--model", dir.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Bare (tensors without a prefix)"), "{text}");
    let json = ok_json(&qwenrt(&["inspect", "--model", dir.to_str().unwrap(), "--json"], None));
    assert_eq!(json["layout"], "Bare");
}
