//! OpenAI request bodies through the server's whole request handling (`qwenrt_cli::serve::
//! fuzzing`): the first byte picks the route, the rest is the body. Whatever the body, the answer
//! is a success or a client error, never a 5xx, and nothing panics or hangs.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qwenrt_cli::serve::fuzzing::{Server, ROUTES};

/// A folder holding links to a fixture model's files and its generated tokenizer.json (made by
/// the test suite's `scripts/test`).
fn model_folder(fixture: &str, tokenizer: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("qwenrt-fuzz-requests-{}/{fixture}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(root.join("fixtures/models").join(fixture)).unwrap() {
        let entry = entry.unwrap();
        let _ = std::os::unix::fs::symlink(entry.path().canonicalize().unwrap(), dir.join(entry.file_name()));
    }
    let generated = root.join("fixtures-gen").join(tokenizer).join("tokenizer.json");
    assert!(generated.is_file(), "{} is missing: run scripts/test first", generated.display());
    let _ = std::os::unix::fs::symlink(generated.canonicalize().unwrap(), dir.join("tokenizer.json"));
    dir
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        Server::new(&model_folder("tiny-vl", "qwen3_5-tokenizer"), &model_folder("tiny-embed", "qwen3-tokenizer"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else { return };
    let path = ROUTES[route as usize % ROUTES.len()];
    let (status, answer) = server().post(path, body);
    assert!(
        status < 500,
        "{path} answered {status}: {}\nto {}",
        String::from_utf8_lossy(&answer),
        String::from_utf8_lossy(body)
    );
});
