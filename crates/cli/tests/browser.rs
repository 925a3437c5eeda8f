//! The chat page of `qwenrt serve`, end to end in headless Chromium: `tests/browser/chat_page.mjs`
//! (playwright-core) starts the servers it needs on the tiny multimodal model and drives the
//! page as a person would: a streamed answer, stop, an attached image, a reload, a 503, an API
//! key.
//!
//! It needs Node.js, Debian's `chromium` (or `CHROMIUM=path`) and `npm ci` run in
//! `tests/browser`. scripts/test runs `npm ci` and sets QWENRT_REQUIRE_BROWSER=1, so a missing
//! tool fails the suite there; elsewhere the test says loudly that it skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn browser_folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// What is missing to run the page test, if anything.
fn missing_tools() -> Option<String> {
    let chromium =
        std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.is_file() {
        return Some(format!("{} not found (apt-get install chromium, or set CHROMIUM)", chromium.display()));
    }
    if Command::new("node").arg("--version").output().map_or(true, |o| !o.status.success()) {
        return Some("node not found (install Node.js)".to_owned());
    }
    if !browser_folder().join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "playwright-core not installed: run `npm ci` in {}",
            browser_folder().display()
        ));
    }
    None
}

#[test]
fn the_chat_page_works_in_chromium() {
    if let Some(missing) = missing_tools() {
        assert!(
            std::env::var_os("QWENRT_REQUIRE_BROWSER").is_none(),
            "QWENRT_REQUIRE_BROWSER is set but {missing}"
        );
        eprintln!("SKIPPED the chat page test: {missing}");
        return;
    }
    let model = common::model_folder();
    let shots = common::temp_dir("browser-shots");
    let output = Command::new("node")
        .arg(browser_folder().join("chat_page.mjs"))
        .args(["--bin", env!("CARGO_BIN_EXE_qwenrt")])
        .arg("--model")
        .arg(&model)
        .arg("--screenshots")
        .arg(&shots)
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the page test failed:\n{stdout}\n{stderr}\n(screenshots in {})",
        shots.display()
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(shots.join("chat.png").is_file() && shots.join("busy.png").is_file());
}
