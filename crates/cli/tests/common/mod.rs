//! Helpers shared by the CLI integration tests: the tiny model folders and running the binary.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

#[allow(unused_imports)] // each test file uses some of them
pub use qwenrt_test_support::{temp_dir, workspace_root as root};

/// A temporary copy of fixtures/models/tiny-vl with the generated tokenizer.json added.
pub fn model_folder() -> PathBuf {
    qwenrt_test_support::tiny_vl_folder("cli-model")
}

/// A temporary copy of fixtures/models/tiny-embed (a sentence-transformers Qwen3-Embedding
/// folder) with the generated Qwen3 tokenizer.json added.
pub fn embed_model_folder() -> PathBuf {
    qwenrt_test_support::tiny_embed_folder("cli-embed-model")
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
