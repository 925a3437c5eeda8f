//! `qwenrt embed` end to end on the tiny Qwen3-Embedding fixture: the vectors are the
//! sentence-transformers reference's, every output format parses, `--rank` orders documents by
//! cosine, and bad input fails with a message.

mod common;

use common::{embed_model_folder, qwenrt_output, temp_dir};
use serde_json::Value;

fn expected() -> Value {
    let path = common::root().join("fixtures/models/tiny-embed/expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn stdout_of(args: &[&str]) -> String {
    let out = qwenrt_output(args, "");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>()
        / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn embed_json_matches_the_reference_for_queries_and_documents() {
    let dir = embed_model_folder();
    let model = dir.to_str().unwrap();
    let exp = expected();
    let texts = exp["texts"].as_array().unwrap();
    let (query, doc) = (&texts[0], &texts[2]);

    let out: Value = serde_json::from_str(&stdout_of(&[
        "embed",
        "--model",
        model,
        "--dtype",
        "f32",
        "--query",
        "--json",
        query["text"].as_str().unwrap(),
    ]))
    .unwrap();
    let got = floats(&out["embeddings"][0]);
    assert!(cosine(&got, &floats(&query["embedding"])) > 0.99999);
    assert_eq!(out["tokens"][0].as_u64().unwrap() as usize, query["input_ids"].as_array().unwrap().len());

    // Documents from a JSONL file, one object per line out; plain text lists work too.
    let tmp = temp_dir("embed-file");
    let jsonl = tmp.join("docs.jsonl");
    std::fs::write(&jsonl, format!("{}\n{}\n", serde_json::json!({"text": doc["text"]}), r#"{"text": "b"}"#))
        .unwrap();
    let lines = stdout_of(&[
        "embed",
        "--model",
        model,
        "--dtype",
        "f32",
        "--jsonl",
        "--file",
        jsonl.to_str().unwrap(),
    ]);
    let rows: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert!(cosine(&floats(&rows[0]["embedding"]), &floats(&doc["embedding"])) > 0.99999);

    // Plain output: one space-separated vector per line, truncated to --dims.
    let plain = stdout_of(&["embed", "--model", model, "--dtype", "f32", "--dims", "8", "a", "b c"]);
    let vectors: Vec<Vec<f64>> =
        plain.lines().map(|l| l.split(' ').map(|x| x.parse().unwrap()).collect()).collect();
    assert_eq!(vectors.len(), 2);
    assert!(vectors.iter().all(|v| v.len() == 8));
    let norm: f64 = vectors[0].iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
}

#[test]
fn rank_orders_documents_by_cosine() {
    let dir = embed_model_folder();
    let model = dir.to_str().unwrap();
    let tmp = temp_dir("embed-rank");
    let docs = tmp.join("docs.txt");
    std::fs::write(&docs, "first document\n\nsecond one\nthe third\n").unwrap();
    let out: Value = serde_json::from_str(&stdout_of(&[
        "embed",
        "--model",
        model,
        "--dtype",
        "f32",
        "--rank",
        "which document?",
        "--file",
        docs.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let ranking = out["ranking"].as_array().unwrap();
    assert_eq!(ranking.len(), 3, "blank lines are skipped");
    let scores: Vec<f64> = ranking.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    // The scores are the cosines of the query (with its prompt) and each document.
    let q: Value = serde_json::from_str(&stdout_of(&[
        "embed",
        "--model",
        model,
        "--dtype",
        "f32",
        "--query",
        "--json",
        "which document?",
    ]))
    .unwrap();
    let top = &ranking[0];
    let d: Value = serde_json::from_str(&stdout_of(&[
        "embed",
        "--model",
        model,
        "--dtype",
        "f32",
        "--json",
        top["text"].as_str().unwrap(),
    ]))
    .unwrap();
    let c = cosine(&floats(&q["embeddings"][0]), &floats(&d["embeddings"][0]));
    assert!((c - scores[0]).abs() < 1e-5, "{c} vs {}", scores[0]);
}

#[test]
fn embed_errors_are_clear() {
    let dir = embed_model_folder();
    let model = dir.to_str().unwrap();
    let out = qwenrt_output(&["embed", "--model", model, "--dims", "999", "x"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dimensions must be between 1 and 16"), "{err}");
    let out = qwenrt_output(&["embed", "--model", model], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no texts given"));
    let tmp = temp_dir("embed-bad-jsonl");
    let bad = tmp.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\"}\n{\"txt\": 1}\n").unwrap();
    let out = qwenrt_output(&["embed", "--model", model, "--file", bad.to_str().unwrap()], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:2: no string `text` field"), "{err}");
}
