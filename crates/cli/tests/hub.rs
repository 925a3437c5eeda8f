//! `--model` given as a hub id, `qwenrt pull` and `qwenrt list`, against a stand-in hub on
//! 127.0.0.1 and a private Hugging Face cache (nothing here reaches the internet).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use qwenrt_test_support::hub::{Commit, StandInHub};

/// The binary with the hub environment of one test: its own cache and token file, the stand-in
/// as the endpoint, and no token or offline switch inherited from the caller.
fn qwenrt(hub: &str, home: &Path, extra_env: &[(&str, &str)], args: &[&str]) -> Output {
    hub_command(hub, home, extra_env, args).output().unwrap()
}

fn hub_command(hub: &str, home: &Path, extra_env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qwenrt"));
    command
        .args(args)
        .env("HF_HOME", home)
        .env("HF_ENDPOINT", hub)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("TRANSFORMERS_OFFLINE");
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", String::from_utf8_lossy(&out.stdout));
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!e.contains("panicked"), "{e}");
    e
}

const RUN: &[&str] = &["--dtype", "f32", "--raw", "--temperature", "0", "--max-tokens", "8", "Hello"];

#[test]
fn pull_list_and_run_by_hub_id() {
    let hub = StandInHub::start();
    let folder = common::model_folder();
    hub.add_repo("test/tiny-vl", vec![Commit::from_dir(&folder, &["main"], "")]);
    let home = common::temp_dir("cli-hub-home");

    let out = qwenrt(&hub.url, &home, &[], &["pull", "test/tiny-vl"]);
    let snapshot = stdout(&out).trim().to_owned();
    assert!(Path::new(&snapshot).starts_with(home.join("hub/models--test--tiny-vl/snapshots")), "{snapshot}");

    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&qwenrt(&hub.url, &home, &[], &["list", "--json"]))).unwrap();
    assert_eq!(listed["models"][0]["id"], "test/tiny-vl");
    assert_eq!(listed["models"][0]["kind"], "safetensors");
    assert_eq!(listed["models"][0]["refs"][0]["name"], "main");
    let table = stdout(&qwenrt(&hub.url, &home, &[], &["list"]));
    assert!(
        table.starts_with("MODEL") && table.contains("test/tiny-vl") && table.contains("main ("),
        "{table}"
    );

    // Offline, and with the hub gone: the cached snapshot answers as the folder does.
    let by_folder =
        stdout(&qwenrt(&hub.url, &home, &[], &[&["run", "--model", folder.to_str().unwrap()], RUN].concat()));
    let by_id = stdout(&qwenrt(
        "http://127.0.0.1:9",
        &home,
        &[("HF_HUB_OFFLINE", "1")],
        &[&["run", "--model", "test/tiny-vl"], RUN].concat(),
    ));
    assert_eq!(by_id, by_folder);
    let inspected = stdout(&qwenrt(
        "http://127.0.0.1:9",
        &home,
        &[("HF_HUB_OFFLINE", "1")],
        &["inspect", "--model", "test/tiny-vl", "--json"],
    ));
    assert!(inspected.contains("\"layout\":\"ConditionalGeneration\""), "{inspected}");
}

#[test]
fn hub_errors_say_what_is_wrong() {
    let hub = StandInHub::start();
    let folder = common::model_folder();
    hub.add_repo("test/tiny-vl", vec![Commit::from_dir(&folder, &["main"], "")]);
    hub.add_repo("test/gated", vec![Commit::from_dir(&folder, &["main"], "")]);
    hub.gate("test/gated", "hf_secret");
    let gguf = common::temp_dir("cli-hub-gguf");
    std::fs::write(gguf.join("Tiny-Q4_K_M.gguf"), b"GGUF not really").unwrap();
    std::fs::write(gguf.join("Tiny-Q8_0.gguf"), b"GGUF not really").unwrap();
    hub.add_repo("test/tiny-GGUF", vec![Commit::from_dir(&gguf, &["main"], "")]);
    let home = common::temp_dir("cli-hub-home");
    let run = |env: &[(&str, &str)], args: &[&str]| qwenrt(&hub.url, &home, env, args);

    let e = stderr(&run(&[], &[&["run", "--model", "test/no-such-model"], RUN].concat()));
    assert!(e.contains("no folder of that name here, and no such repository"), "{e}");
    let e = stderr(&run(&[], &[&["run", "--model", "./no/such/folder"], RUN].concat()));
    assert!(e.contains("no such model folder, and not a hub id"), "{e}");
    let e = stderr(&run(&[], &["pull", "not an id"]));
    assert!(e.contains("is not a hub id"), "{e}");
    let e = stderr(&run(&[("HF_HUB_OFFLINE", "1")], &["pull", "test/tiny-vl"]));
    assert!(e.contains("not in the cache") && e.contains("HF_HUB_OFFLINE"), "{e}");
    let e = stderr(&run(&[], &["pull", "test/gated"]));
    assert!(e.contains("gated or private") && e.contains("HF_TOKEN"), "{e}");
    stdout(&run(&[("HF_TOKEN", "hf_secret")], &["pull", "test/gated"]));
    // The token file `hf auth login` writes is read too.
    std::fs::write(home.join("token"), "hf_secret\n").unwrap();
    stdout(&run(&[], &["pull", "test/gated@main"]));

    let e = stderr(&run(&[], &["pull", "test/tiny-GGUF"]));
    assert!(e.contains("name one quantization, e.g. test/tiny-GGUF:Q4_K_M or :Q8_0"), "{e}");
    let path = stdout(&run(&[], &["pull", "test/tiny-GGUF:q8_0"]));
    assert!(path.trim().ends_with("Tiny-Q8_0.gguf"), "{path}");
    let e = stderr(&run(&[], &[&["run", "--model", "test/tiny-GGUF:Q8_0"], RUN].concat()));
    assert!(e.contains("is a GGUF file, which qwenrt cannot load yet"), "{e}");

    let e = stderr(&qwenrt("http://127.0.0.1:9", &home, &[], &["pull", "test/elsewhere"]));
    assert!(e.contains("cannot reach http://127.0.0.1:9") && e.contains("HF_HUB_OFFLINE=1"), "{e}");
}

#[test]
fn two_processes_pulling_one_model_agree() {
    let hub = StandInHub::start();
    let folder = common::model_folder();
    hub.add_repo("test/tiny-vl", vec![Commit::from_dir(&folder, &["main"], "")]);
    let home = common::temp_dir("cli-hub-home");
    let pull = || {
        hub_command(&hub.url, &home, &[], &["pull", "test/tiny-vl"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (pull(), pull());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(stdout(&a), stdout(&b));
    let snapshot = Path::new(stdout(&a).trim()).to_owned();
    for file in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(snapshot.join(file)).unwrap(),
            std::fs::read(folder.join(file)).unwrap(),
            "{file}"
        );
    }
}
