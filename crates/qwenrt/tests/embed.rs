//! Qwen3-Embedding against sentence-transformers on the tiny random fixture
//! (`scripts/make_embedding_fixtures.py`): the same tokens, the same vectors (f32), batching and
//! order that change nothing, Matryoshka truncation, and clear errors.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_to_temp, fixture_model, generated_qwen3_tokenizer};
use qwenrt::{EmbedKind, EmbedOptions, Embedder, Embedding};
use serde_json::Value;

fn folder(tag: &str) -> PathBuf {
    let dir = copy_to_temp(&fixture_model("tiny-embed"), tag);
    std::fs::copy(generated_qwen3_tokenizer(), dir.join("tokenizer.json")).unwrap();
    dir
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_model("tiny-embed").join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn options_for(case: &Value) -> EmbedOptions {
    let kind = match case["kind"].as_str().unwrap() {
        "query" => EmbedKind::Query,
        "instruct" => EmbedKind::Instruct(case["instruct"].as_str().unwrap().to_owned()),
        _ => EmbedKind::Document,
    };
    EmbedOptions { kind, ..Default::default() }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Every fixture text (queries with the folder's prompt and with an instruction, documents,
/// code, CJK, emoji, a 1,000-token text, the empty text) gets the reference's tokens and vector.
#[test]
fn embeddings_match_sentence_transformers() {
    let embedder = Embedder::load(&folder("embed-parity")).unwrap();
    let exp = expected();
    let mut worst: f64 = 1.0;
    for case in exp["texts"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let options = options_for(case);
        let text = case["text"].as_str().unwrap();
        let want_ids: Vec<u32> =
            case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(embedder.tokenize(text, &options).unwrap(), want_ids, "{name}: token ids");
        let got = embedder.embed(&[text], &options).unwrap().remove(0);
        assert_eq!(got.tokens, want_ids.len());
        let c = cosine(&got.vector, &floats(&case["embedding"]));
        let norm: f32 = got.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{name}: norm {norm}");
        assert!(c >= 0.99999, "{name}: cosine {c}");
        worst = worst.min(c);
    }
    eprintln!("worst cosine to sentence-transformers over the fixture texts: {worst:.8}");
}

/// A batch gives each text what it gets alone, in either order.
#[test]
fn batch_equals_single_in_any_order() {
    let embedder = Embedder::load(&folder("embed-batch")).unwrap();
    let exp = expected();
    let docs: Vec<&str> = exp["texts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "document")
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let options = EmbedOptions::default();
    let single: Vec<Embedding> =
        docs.iter().map(|d| embedder.embed(&[d], &options).unwrap().remove(0)).collect();
    let batch = embedder.embed(&docs, &options).unwrap();
    let reversed: Vec<&str> = docs.iter().rev().copied().collect();
    let mut batch_rev = embedder.embed(&reversed, &options).unwrap();
    batch_rev.reverse();
    for i in 0..docs.len() {
        for (label, other) in [("batch", &batch[i]), ("reversed batch", &batch_rev[i])] {
            let c = cosine(&single[i].vector, &other.vector);
            assert!(c > 0.999999, "{label}, text {i}: cosine {c}");
            assert_eq!(single[i].tokens, other.tokens);
        }
    }
}

/// `dimensions` equals sentence-transformers' `truncate_dim` (truncate, then normalise).
#[test]
fn matryoshka_dimensions_match_the_reference() {
    let embedder = Embedder::load(&folder("embed-dims")).unwrap();
    let exp = expected();
    for (case, want) in exp["texts"].as_array().unwrap().iter().zip(exp["matryoshka_8"].as_array().unwrap()) {
        let mut options = options_for(case);
        options.dimensions = Some(8);
        let got = embedder.embed(&[case["text"].as_str().unwrap()], &options).unwrap().remove(0);
        assert_eq!(got.vector.len(), 8);
        let c = cosine(&got.vector, &floats(want));
        assert!(c >= 0.99999, "{}: cosine {c}", case["name"]);
    }
    for bad in [0, embedder.hidden_size() + 1] {
        let options = EmbedOptions { dimensions: Some(bad), ..Default::default() };
        let e = embedder.embed(&["x"], &options).unwrap_err().to_string();
        assert!(e.contains("dimensions must be between 1 and 16"), "{e}");
    }
}

/// Older tokenizer.json files do not append `<|endoftext|>`; the embedder adds it itself.
#[test]
fn end_token_is_appended_when_the_tokenizer_does_not() {
    let dir = folder("embed-no-eos");
    let path = dir.join("tokenizer.json");
    let mut tok: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tok["post_processor"] = Value::Null;
    std::fs::write(&path, tok.to_string()).unwrap();
    let embedder = Embedder::load(&dir).unwrap();
    let exp = expected();
    let case = &exp["texts"][2];
    let text = case["text"].as_str().unwrap();
    let want: Vec<u32> =
        case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(embedder.tokenize(text, &EmbedOptions::default()).unwrap(), want);
}

fn set_max_seq_length(dir: &Path, n: usize) {
    std::fs::write(dir.join("sentence_bert_config.json"), format!("{{\"max_seq_length\": {n}}}")).unwrap();
}

#[test]
fn long_inputs_fail_unless_truncation_is_asked_for() {
    let dir = folder("embed-long");
    set_max_seq_length(&dir, 64);
    let embedder = Embedder::load(&dir).unwrap();
    assert_eq!(embedder.max_tokens(), 64);
    let long = "word ".repeat(200);
    let e = embedder.embed(&["short", &long], &EmbedOptions::default()).unwrap_err().to_string();
    assert!(e.contains("input 1") && e.contains("at most 64"), "{e}");
    let options = EmbedOptions { truncate: true, ..Default::default() };
    let ids = embedder.tokenize(&long, &options).unwrap();
    assert_eq!(ids.len(), 64);
    assert_eq!(ids.last(), Some(&151643), "the end token survives truncation");
    let got = embedder.embed(&[long.as_str()], &options).unwrap();
    assert_eq!(got[0].tokens, 64);
}

#[test]
fn folder_errors_name_the_problem() {
    let dir = folder("embed-bad-pooling");
    let pooling = dir.join("1_Pooling/config.json");
    let text = std::fs::read_to_string(&pooling)
        .unwrap()
        .replace("\"pooling_mode_mean_tokens\": false", "\"pooling_mode_mean_tokens\": true");
    std::fs::write(&pooling, text).unwrap();
    let e = Embedder::load(&dir).unwrap_err().to_string();
    assert!(e.contains("1_Pooling") && e.contains("pooling_mode_mean_tokens"), "{e}");

    let dir = folder("embed-no-prompt");
    std::fs::remove_file(dir.join("config_sentence_transformers.json")).unwrap();
    let embedder = Embedder::load(&dir).unwrap();
    let e = embedder
        .embed(&["q"], &EmbedOptions { kind: EmbedKind::Query, ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("no query prompt"), "{e}");

    // An untied bare decoder has no LM head: asking it for logits is an error, not a panic.
    let dir = folder("embed-headless");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let untied = config.replace("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
    assert_ne!(config, untied);
    std::fs::write(dir.join("config.json"), untied).unwrap();
    let embedder = Embedder::load(&dir).unwrap();
    let model = embedder.model();
    let mut state = model.new_state();
    match model.forward(&mut state, &[1, 2], qwenrt::Logits::Last) {
        Ok(_) => panic!("a headless model gave logits"),
        Err(e) => assert!(e.to_string().contains("no LM head"), "{e}"),
    }
}

/// The same weights loaded as a causal LM (a Qwen3 decoder with its tied head) give
/// transformers' `Qwen3ForCausalLM` logits and greedy tokens: the decoder serves Qwen3 LMs too.
#[test]
fn qwen3_causal_lm_matches_transformers() {
    let lm = qwenrt::LanguageModel::load(&folder("qwen3-lm")).unwrap();
    let exp = expected();
    let c = &exp["causal_lm"];
    let ids: Vec<u32> =
        c["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let mut state = lm.model.new_state();
    let logits = lm.model.forward(&mut state, &ids, qwenrt::Logits::Last).unwrap().to_vec();
    let std = c["logit_std"].as_f64().unwrap();
    for (id, want) in c["top10_ids"].as_array().unwrap().iter().zip(c["top10_logits"].as_array().unwrap()) {
        let got = logits[id.as_u64().unwrap() as usize] as f64;
        assert!((got - want.as_f64().unwrap()).abs() < 1e-4 * std, "token {id}: {got} vs {want}");
    }
    let options = qwenrt::GenerateOptions {
        max_tokens: 8,
        sampling: qwenrt::SamplingParams::greedy(),
        stop_ids: Vec::new(),
    };
    let mut state = lm.model.new_state();
    let out = qwenrt::generate(&lm.model, &mut state, &ids, &options, |_| true).unwrap();
    let want: Vec<u32> = c["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(out.tokens, want);
}
