//! Helpers shared by the CLI integration tests: the tiny model folder and running the binary.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "qwenrt-cli-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A temporary copy of fixtures/models/tiny-vl with the generated tokenizer.json added.
pub fn model_folder() -> PathBuf {
    let dst = temp_dir("chat-model");
    for entry in std::fs::read_dir(root().join("fixtures/models/tiny-vl")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let tokenizer = std::env::var_os("QWENRT_TOKENIZER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("fixtures-gen/qwen3_5-tokenizer"))
        .join("tokenizer.json");
    assert!(
        tokenizer.exists(),
        "{} missing: run scripts/build_tokenizer.py (see scripts/test)",
        tokenizer.display()
    );
    std::fs::copy(tokenizer, dst.join("tokenizer.json")).unwrap();
    dst
}

/// A temporary copy of fixtures/models/tiny-embed (a sentence-transformers Qwen3-Embedding
/// folder) with the generated Qwen3 tokenizer.json added.
pub fn embed_model_folder() -> PathBuf {
    let dst = temp_dir("embed-model");
    copy_dir(&root().join("fixtures/models/tiny-embed"), &dst);
    let tokenizer = root().join("fixtures-gen/qwen3-tokenizer/tokenizer.json");
    assert!(tokenizer.exists(), "{} missing: run scripts/test", tokenizer.display());
    std::fs::copy(tokenizer, dst.join("tokenizer.json")).unwrap();
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dst.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
}

/// Runs the `qwenrt` binary with `args`, feeding `stdin`, and returns what it printed.
pub fn qwenrt_output(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}
