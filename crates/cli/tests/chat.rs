//! `qwenrt chat` driven through piped stdin on the tiny model folder, and the generation flags
//! `qwenrt run` shares with it.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{model_folder, qwenrt_output, temp_dir};

fn qwenrt(args: &[&str], stdin: &str) -> Output {
    let out = qwenrt_output(args, stdin);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The `[turn N: P prompt tokens (C cached), …]` status lines: (P, C, line).
fn turns(stderr: &str) -> Vec<(usize, usize, String)> {
    stderr
        .lines()
        .filter(|l| l.starts_with("[turn "))
        .map(|l| {
            let after = |key: &str| l.split(key).nth(1).unwrap();
            let prompt = after(": ").split(' ').next().unwrap().parse().unwrap();
            let cached = after("tokens (").split(' ').next().unwrap().parse().unwrap();
            (prompt, cached, l.to_owned())
        })
        .collect()
}

#[test]
fn chat_repl_turns_commands_and_state_reuse() {
    let dir = model_folder();
    let work = temp_dir("chat-work");
    let saved = work.join("conversation.json");
    let resaved = work.join("again.json");
    let script = format!(
        "Hello there\nHow are you?\n/save {0}\n/reset\n/think on\nThink about it\n/think off\n/load {0}\nAnd now?\n/system Be brief.\nOk\n/bogus\n/save {1}\n",
        saved.display(),
        resaved.display()
    );
    let args = [
        "chat",
        "--model",
        dir.to_str().unwrap(),
        "--dtype",
        "f32",
        "--temperature",
        "0",
        "--max-tokens",
        "6",
    ];
    let out = qwenrt(&args, &script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let t = turns(&stderr);
    assert_eq!(t.len(), 5, "{stderr}");
    assert_eq!(t[0].1, 0, "first turn: nothing cached");
    // Turn 2 continues the state prefilled during and after turn 1: only the new message is new.
    assert!(t[1].1 > t[0].0, "turn 2 should reuse all of turn 1: {}", t[1].2);
    assert!(t[1].2.contains("1 hits in 2 turns"), "{}", t[1].2);
    // After /reset the thinking turn starts over.
    assert!(t[2].0 < t[1].0);
    assert!(t[2].2.contains("reasoning"), "thinking on: {}", t[2].2);
    // After /load the conversation is turns 1-2 again, so its prefix comes from the cache.
    assert!(t[3].1 >= t[1].0 - 8 && t[3].0 > t[1].0, "{}\n{}", t[1].2, t[3].2);
    // A new system message changes the very beginning; the history is prefilled again while
    // the next line is read, so the turn itself still only processes the new message.
    assert!(t[4].0 > t[3].0 && t[4].0 - t[4].1 < 20, "{}", t[4].2);
    assert!(stderr.contains("unknown command /bogus"));

    let messages: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let roles: Vec<&str> = messages.as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(messages[2]["content"], "How are you?");
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&resaved).unwrap()).unwrap();
    assert_eq!(again[0]["role"], "system");
    assert_eq!(again[0]["content"], "Be brief.");
    assert_eq!(again.as_array().unwrap().len(), 9, "system + 4 loaded + 2 turns after the load");

    // Each answer ends with a newline; the hidden reasoning is not printed.
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.matches('\n').count() >= 5, "{stdout:?}");
    assert!(!stdout.contains("<|im_end|>") && !stdout.contains("</think>"));
}

#[test]
fn chat_answers_match_run_and_cache_off_changes_nothing_but_reuse() {
    let dir = model_folder();
    let common =
        ["--model", dir.to_str().unwrap(), "--dtype", "f32", "--temperature", "0", "--max-tokens", "12"];
    let mut run_args = vec!["run"];
    run_args.extend(common);
    run_args.push("Hello there");
    let run = qwenrt(&run_args, "");
    let mut chat_args = vec!["chat"];
    chat_args.extend(common);
    let with_cache = qwenrt(&chat_args, "Hello there\nMore\n");
    chat_args.extend(["--cache-mib", "0"]);
    let without = qwenrt(&chat_args, "Hello there\nMore\n");
    let first_answer = String::from_utf8(run.stdout).unwrap();
    let chat_out = String::from_utf8(with_cache.stdout).unwrap();
    assert!(chat_out.starts_with(&first_answer), "run printed {first_answer:?}, chat {chat_out:?}");
    assert_eq!(
        chat_out,
        String::from_utf8(without.stdout).unwrap(),
        "state reuse must not change the answers"
    );
    let t = turns(&String::from_utf8_lossy(&without.stderr));
    assert_eq!((t[0].1, t[1].1), (0, 0));
}

#[test]
fn run_takes_stops_system_and_thinking_budget() {
    let dir = model_folder();
    let model = dir.to_str().unwrap();
    let base =
        ["run", "--model", model, "--dtype", "f32", "--temperature", "0", "--json", "--max-tokens", "24"];
    let json = |extra: &[&str]| -> serde_json::Value {
        let mut args = base.to_vec();
        args.extend(extra);
        serde_json::from_slice(&qwenrt(&args, "").stdout).unwrap()
    };
    let plain = json(&["Tell me a story"]);
    let text = plain["text"].as_str().unwrap();
    let stop: String = text.chars().skip(text.chars().count() / 2).take(3).collect();
    let stopped = json(&["--stop", &stop, "Tell me a story"]);
    assert_eq!(stopped["finish_reason"], "stop_string");
    assert_eq!(stopped["text"].as_str().unwrap(), &text[..text.find(&stop).unwrap()]);

    let with_system = json(&["--system", "You are a pirate.", "Tell me a story"]);
    assert!(
        with_system["prompt_tokens"].as_array().unwrap().len()
            > plain["prompt_tokens"].as_array().unwrap().len()
    );

    let thought = json(&["--think", "--max-thinking-tokens", "3", "Tell me a story"]);
    let tokens: Vec<u64> =
        thought["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(tokens[4], 248069, "</think> after 3 reasoning tokens and a newline: {tokens:?}");
    assert!(!thought["reasoning"].as_str().unwrap().is_empty());

    let biased = json(&["--logit-bias", "248046=100", "Tell me a story"]);
    assert_eq!((biased["finish_reason"].as_str(), biased["text"].as_str()), (Some("stop"), Some("")));
}

#[cfg(unix)]
#[test]
fn ctrl_c_cancels_the_answer_and_the_conversation_goes_on() {
    use std::io::Read;
    let dir = model_folder();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwenrt"))
        .args(["chat", "--model", dir.to_str().unwrap(), "--dtype", "f32", "--max-tokens", "200000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Talk forever\n").unwrap();
    stdin.flush().unwrap();
    // Wait until the answer is streaming, then press Ctrl-C.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    // The REPL survives: a second message is answered, then end of input ends it normally.
    stdin.write_all(b"/think off\n").unwrap();
    drop(stdin);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let t = turns(&stderr);
    assert_eq!(t.len(), 1, "{stderr}");
    assert!(t[0].2.contains("finish: cancelled"), "{}", t[0].2);
    assert!(stderr.contains("[thinking off]"), "the REPL went on after the cancel: {stderr}");
}

#[test]
fn every_turn_of_a_chat_follows_the_constraint() {
    let dir = model_folder();
    let out = qwenrt(
        &[
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--dtype",
            "f32",
            "--temperature",
            "1",
            "--seed",
            "3",
            "--regex",
            "(ok|fine|sure)!{1,2}",
        ],
        "Hi\nAgain\nOnce more\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(answers.len(), 3, "{stdout:?}");
    for answer in answers {
        let word = answer.trim_end_matches('!');
        assert!(["ok", "fine", "sure"].contains(&word) && answer.len() - word.len() <= 2, "{answer:?}");
    }
}
