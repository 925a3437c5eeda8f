//! What every crate's tests need from the repository: the fixture model folders, the generated
//! tokenizers (too big to commit: `scripts/test` builds them), and temporary copies to load from.
//! A missing generated file is a panic naming the command that makes it: tests never skip.

use std::path::{Path, PathBuf};

#[cfg(feature = "hub")]
pub mod hub;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture_model(name: &str) -> PathBuf {
    workspace_root().join("fixtures/models").join(name)
}

/// The generated Qwen3.5 tokenizer.json (`QWENRT_TOKENIZER_DIR` may point at another build).
pub fn generated_tokenizer() -> PathBuf {
    let dir = std::env::var_os("QWENRT_TOKENIZER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("fixtures-gen/qwen3_5-tokenizer"));
    let path = dir.join("tokenizer.json");
    assert!(
        path.exists(),
        "{} is missing: run `python3 scripts/build_tokenizer.py --family qwen3_5 --out fixtures-gen/qwen3_5-tokenizer`",
        path.display()
    );
    path
}

/// The generated Qwen3 (Qwen3-Embedding) tokenizer.json, whose post-processor appends
/// `<|endoftext|>` like the current Qwen3-Embedding files.
pub fn generated_qwen3_tokenizer() -> PathBuf {
    let path = workspace_root().join("fixtures-gen/qwen3-tokenizer/tokenizer.json");
    assert!(
        path.exists(),
        "{} is missing: run `python3 scripts/build_tokenizer.py --family qwen3 --append-eos --out fixtures-gen/qwen3-tokenizer`",
        path.display()
    );
    path
}

/// Where the tests' temporary folders go: `target/test-tmp`, which `scripts/test` empties before
/// a run and removes after a passing one (a run makes a few GB of model copies).
/// The path is canonical, so that tools which resolve `..` (Python's among them) print the same.
pub fn temp_root() -> PathBuf {
    let root = workspace_root().join("target/test-tmp");
    std::fs::create_dir_all(&root).unwrap();
    root.canonicalize().unwrap()
}

/// A fresh, empty temporary folder whose name starts with `qwenrt-test-{tag}`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = temp_root().join(format!(
        "qwenrt-test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies a folder with its subfolders.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        } else if kind.is_dir() {
            copy_dir(&entry.path(), &dst.join(entry.file_name()));
        }
    }
}

/// A temporary copy of a folder.
pub fn copy_to_temp(src: &Path, tag: &str) -> PathBuf {
    let dst = temp_dir(tag);
    copy_dir(src, &dst);
    dst
}

/// A temporary copy of fixtures/models/tiny-vl with the generated Qwen3.5 tokenizer: a complete
/// published-layout model folder.
pub fn tiny_vl_folder(tag: &str) -> PathBuf {
    let dir = copy_to_temp(&fixture_model("tiny-vl"), tag);
    std::fs::copy(generated_tokenizer(), dir.join("tokenizer.json")).unwrap();
    dir
}

/// A temporary copy of fixtures/models/tiny-embed (a sentence-transformers Qwen3-Embedding
/// folder) with the generated Qwen3 tokenizer, in a folder named `tiny-embed`.
pub fn tiny_embed_folder(tag: &str) -> PathBuf {
    let dir = temp_dir(tag).join("tiny-embed");
    copy_dir(&fixture_model("tiny-embed"), &dir);
    std::fs::copy(generated_qwen3_tokenizer(), dir.join("tokenizer.json")).unwrap();
    dir
}
