//! Qwen3.5 tokenizer against reference ids computed by tiktoken on the published BPE ranks
//! (`scripts/make_tokenizer_corpus.py`). The tokenizer.json itself is generated, not committed:
//! `python3 scripts/build_tokenizer.py --family qwen3_5 --out fixtures-gen/qwen3_5-tokenizer`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use qwenrt::tokenizer::{Tokenizer, TokenizerError};

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const BUILD_HINT: &str =
    "python3 scripts/build_tokenizer.py --family qwen3_5 --out fixtures-gen/qwen3_5-tokenizer";

fn tokenizer_json() -> PathBuf {
    let dir = match std::env::var_os("QWENRT_TOKENIZER_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(WORKSPACE).join("fixtures-gen/qwen3_5-tokenizer"),
    };
    let path = dir.join("tokenizer.json");
    // A missing generated file must fail loudly: skipping would hide that nothing was tested.
    assert!(
        path.is_file(),
        "{} not found: run `{BUILD_HINT}` from the workspace root (or set QWENRT_TOKENIZER_DIR)",
        path.display()
    );
    path
}

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        Tokenizer::from_file(&tokenizer_json(), Some(qwenrt::tokenizer::QWEN3_5_PRETOKENIZE_REGEX))
            .unwrap_or_else(|e| panic!("{e}\n(regenerate with `{BUILD_HINT}`)"))
    })
}

struct Case {
    text: String,
    ids: Vec<u32>,
}

fn corpus() -> &'static [Case] {
    static CORPUS: OnceLock<Vec<Case>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let path = Path::new(WORKSPACE).join("fixtures/tokenizer/qwen3_5_corpus.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cases: Vec<Case> = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
                Case {
                    text: v["text"].as_str().expect("text").to_owned(),
                    ids: v["ids"]
                        .as_array()
                        .expect("ids")
                        .iter()
                        .map(|x| x.as_u64().expect("id") as u32)
                        .collect(),
                }
            })
            .collect();
        assert!(cases.len() >= 1200, "corpus has only {} lines", cases.len());
        cases
    })
}

/// The tokenizer NFC-normalises its input (as transformers does), so decoding gives NFC text.
fn nfc(s: &str) -> String {
    let mut n = tokenizers::NormalizedString::from(s);
    n.nfc();
    n.get().to_owned()
}

fn report(what: &str, failures: &[String], total: usize) {
    assert!(
        failures.is_empty(),
        "{what}: {} of {total} corpus strings fail; first ones:\n{}",
        failures.len(),
        failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn encode_matches_reference_ids() {
    let tok = tokenizer();
    let mut failures = Vec::new();
    for case in corpus() {
        let ids = tok.encode(&case.text).unwrap();
        if ids != case.ids {
            failures.push(format!("{:?}\n  expected {:?}\n  got      {:?}", case.text, case.ids, ids));
        }
    }
    report("encode != reference ids", &failures, corpus().len());
}

#[test]
fn decode_inverts_encode() {
    let tok = tokenizer();
    let mut failures = Vec::new();
    for case in corpus() {
        let decoded = tok.decode(&case.ids).unwrap();
        let expected = nfc(&case.text);
        if decoded != expected {
            failures.push(format!("{expected:?} decoded as {decoded:?}"));
        }
    }
    report("decode(ids) != NFC(text)", &failures, corpus().len());
}

#[test]
fn special_tokens_are_single_tokens() {
    let tok = tokenizer();
    let expected = [
        ("<|endoftext|>", 248044),
        ("<|im_start|>", 248045),
        ("<|im_end|>", 248046),
        ("<|vision_start|>", 248053),
        ("<|vision_end|>", 248054),
        ("<|image_pad|>", 248056),
        ("<|video_pad|>", 248057),
        ("<tool_call>", 248058),
        ("</tool_call>", 248059),
        ("<tool_response>", 248066),
        ("</tool_response>", 248067),
        ("<think>", 248068),
        ("</think>", 248069),
        ("<|audio_pad|>", 248076),
    ];
    for (text, id) in expected {
        assert_eq!(tok.token_id(text), Some(id), "{text}");
        assert_eq!(tok.id_to_token(id).as_deref(), Some(text));
        assert_eq!(tok.encode(text).unwrap(), [id], "{text}");
        assert_eq!(tok.decode(&[id]).unwrap(), text);
    }
    assert_eq!(tok.vocab_size(), 248_077);

    let text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 248046).count(), 1);
    assert_eq!(ids.iter().filter(|&&i| i == 248045).count(), 2);
    assert_eq!(ids[0], 248045);
    assert_eq!(tok.decode(&ids).unwrap(), text);

    // Near misses are plain text.
    for text in ["<|im_end|", "<|im_start", "<think", "<|IM_END|>"] {
        let ids = tok.encode(text).unwrap();
        assert!(ids.iter().all(|&i| i < 248044), "{text}: {ids:?}");
    }
    // No BOS/EOS for Qwen3.5, with or without the post-processor.
    assert_eq!(tok.encode_with_special_tokens("hi").unwrap(), tok.encode("hi").unwrap());
    assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new());
}

#[test]
fn decode_rejects_unknown_ids() {
    let tok = tokenizer();
    let err = tok.decode(&[1, 248_077]).unwrap_err();
    assert!(matches!(err, TokenizerError::UnknownId { id: 248_077, .. }), "{err}");
    assert!(err.to_string().contains("248077"), "{err}");
    assert!(tok.stream_decoder().push(300_000).is_err());
}

/// Pushes ids one by one; checks every chunk extends a prefix of the full decode.
fn stream(tok: &Tokenizer, ids: &[u32]) -> Result<String, String> {
    let full = tok.decode(ids).unwrap();
    let mut dec = tok.stream_decoder();
    let mut out = String::new();
    for &id in ids {
        out.push_str(&dec.push(id).unwrap());
        if !full.starts_with(&out) {
            return Err(format!("streamed {out:?} is not a prefix of {full:?}"));
        }
    }
    out.push_str(&dec.finish());
    if out != full {
        return Err(format!("streamed {out:?} != decoded {full:?}"));
    }
    Ok(out)
}

#[test]
fn stream_decoder_matches_decode_on_corpus() {
    let tok = tokenizer();
    let mut failures = Vec::new();
    for case in corpus() {
        let mut dec = tok.stream_decoder();
        let mut out = String::new();
        for &id in &case.ids {
            out.push_str(&dec.push(id).unwrap());
        }
        // Valid text never leaves anything for finish() nor produces U+FFFD.
        let rest = dec.finish();
        if !rest.is_empty() || out.contains('\u{FFFD}') {
            failures.push(format!("{:?}: streamed {out:?}, finish {rest:?}", case.text));
            continue;
        }
        if let Err(e) = stream(tok, &case.ids) {
            failures.push(e);
        }
    }
    report("stream decoding", &failures, corpus().len());
}

#[test]
fn stream_decoder_handles_split_and_invalid_utf8() {
    let tok = tokenizer();
    // Byte-level tokens of single bytes: "Ã" is 0xC3, "©" is 0xA9, together "é"; "ä" is 0xE4.
    let b = |s: &str| tok.token_id(s).unwrap_or_else(|| panic!("no token {s}"));
    let (c3, a9, e4, a) = (b("Ã"), b("©"), b("ä"), b("a"));

    let mut dec = tok.stream_decoder();
    assert_eq!(dec.push(a).unwrap(), "a");
    assert_eq!(dec.push(c3).unwrap(), "");
    assert!(dec.has_pending());
    assert_eq!(dec.push(a9).unwrap(), "é");
    assert!(!dec.has_pending());
    assert_eq!(dec.finish(), "");

    for ids in [
        vec![a9, a],      // stray continuation byte
        vec![c3, a],      // lead byte followed by ASCII
        vec![a, e4],      // incomplete at the end: finish() flushes U+FFFD
        vec![e4, c3, a9], // truncated 3-byte sequence then a valid one
        vec![c3, b("<|im_end|>")],
        vec![e4, b("¸"), b("Ń"), a9],
    ] {
        let out = stream(tok, &ids).unwrap_or_else(|e| panic!("{ids:?}: {e}"));
        assert!(out.contains('\u{FFFD}'), "{ids:?}: {out:?}");
    }
    assert_eq!(tok.decode(&[e4, b("¸"), b("Ń")]).unwrap(), "中");

    // Replacement characters only where the input is already invalid, not at a mere cut.
    let mut dec = tok.stream_decoder();
    assert_eq!(dec.push(e4).unwrap(), "");
    assert_eq!(dec.push(b("¸")).unwrap(), "");
    assert_eq!(dec.push(b("Ń")).unwrap(), "中");
}

#[test]
fn qwen3_5_pretokenizer_override_and_post_processor() {
    // A Qwen3.5 tokenizer.json as published (Qwen2 regex, no \p{M}) plus an EOS-appending
    // post-processor like Qwen3-Embedding's.
    let json = std::fs::read_to_string(tokenizer_json()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let qwen2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = qwen2.into();
    v["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [248044], "tokens": ["<|endoftext|>"]}}
    });
    let dir = std::env::temp_dir().join(format!("qwenrt-tokenizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    let as_file = Tokenizer::from_file(&path, None).unwrap();
    let overridden = Tokenizer::from_file(&path, Some(qwenrt::tokenizer::QWEN3_5_PRETOKENIZE_REGEX)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let marks = |c: &Case| c.text.chars().any(|ch| matches!(ch as u32, 0x0900..=0x097F | 0x0E00..=0x0E7F));
    let cases: Vec<&Case> = corpus().iter().filter(|c| marks(c)).collect();
    assert!(cases.len() >= 10);
    let differ = cases.iter().filter(|c| as_file.encode(&c.text).unwrap() != c.ids).count();
    assert!(differ > 0, "the Qwen2 regex should split Devanagari/Thai differently");
    for c in &cases {
        assert_eq!(overridden.encode(&c.text).unwrap(), c.ids, "{:?}", c.text);
    }

    let mut with_eos = overridden.encode("hello").unwrap();
    with_eos.push(248044);
    assert_eq!(overridden.encode_with_special_tokens("hello").unwrap(), with_eos);
}

#[test]
fn load_errors_name_the_file() {
    let missing = Path::new(WORKSPACE).join("fixtures-gen/does-not-exist/tokenizer.json");
    let err = Tokenizer::from_file(&missing, Some(qwenrt::tokenizer::QWEN3_5_PRETOKENIZE_REGEX)).unwrap_err();
    assert!(matches!(err, TokenizerError::Missing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&*missing.to_string_lossy()) && msg.contains("tokenizer.json is missing"), "{msg}");

    let dir = std::env::temp_dir().join(format!("qwenrt-tokenizer-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, content) in
        [("not-json.json", "{ this is not json"), ("not-a-tokenizer.json", r#"{"model": {"type": "Nope"}}"#)]
    {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let err = Tokenizer::from_file(&path, None).unwrap_err();
        assert!(matches!(err, TokenizerError::Invalid { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&*path.to_string_lossy()) && msg.contains("invalid"), "{msg}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
