//! Constrained decoding on the tiny random model with the real Qwen3.5 vocabulary. Random weights
//! would write anything, so whatever comes out valid is the constraint's doing: every output is
//! checked with an independent validator (the `jsonschema` crate, the `regex` crate, the tool-call
//! parser), over many seeds.

mod common;

use std::sync::Arc;

use qwenrt::chat::Message;
use qwenrt::tool_calls::parse;
use qwenrt::{
    ChatParams, ChatSession, Constraint, Event, FinishReason, LanguageModel, Reply, SamplingParams,
};
use serde_json::{json, Value};

fn lm() -> Arc<LanguageModel> {
    common::tiny_vl_lm()
}

fn params(constraint: Constraint, seed: u64, max_tokens: usize) -> ChatParams {
    let sampling = if seed == 0 {
        SamplingParams::greedy()
    } else {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: Some(seed), ..Default::default() }
    };
    ChatParams {
        sampling,
        max_tokens,
        enable_thinking: Some(false),
        constraint: Some(constraint),
        ..Default::default()
    }
}

fn ask(lm: &Arc<LanguageModel>, question: &str, params: &ChatParams) -> Reply {
    let mut session = ChatSession::new(lm.clone());
    session.send(Message::user(question), params, |_| {}).unwrap()
}

/// Schemas that cover what structured output is used for. Strings and arrays are bounded so that
/// a random model, which picks a closing quote about once in a thousand tokens, finishes.
fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "nested objects",
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "address": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "minLength": 1, "maxLength": 10},
                            "zip": {"type": "string", "pattern": "^[0-9]{5}$"}
                        },
                        "required": ["city", "zip"],
                        "additionalProperties": false
                    }
                },
                "required": ["name", "address"],
                "additionalProperties": false
            }),
        ),
        (
            "arrays with min/max items",
            json!({
                "type": "object",
                "properties": {
                    "scores": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 100}, "minItems": 1, "maxItems": 3},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2}
                },
                "required": ["scores", "tags"],
                "additionalProperties": false
            }),
        ),
        (
            "enums and consts with escapes and unicode",
            json!({
                "type": "object",
                "properties": {
                    "colour": {"enum": ["red", "green", "blue \"sky\"", "naïve\\path"]},
                    "unit": {"const": "°C ü-ñ 日本"},
                    "level": {"enum": [1, 2.5, null, true]}
                },
                "required": ["colour", "unit", "level"],
                "additionalProperties": false
            }),
        ),
        (
            "numbers with bounds",
            json!({
                "type": "object",
                "properties": {
                    "ratio": {"type": "number", "minimum": 0, "maximum": 1},
                    "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 9},
                    "temp": {"type": "number", "exclusiveMaximum": -10.5}
                },
                "required": ["ratio", "count", "temp"],
                "additionalProperties": false
            }),
        ),
        (
            "required and optional fields",
            json!({
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 0, "maximum": 999},
                    "note": {"type": "string", "maxLength": 6},
                    "done": {"type": "boolean"}
                },
                "required": ["id"],
                "additionalProperties": false
            }),
        ),
        (
            "pattern, unanchored and anchored",
            json!({
                "type": "object",
                "properties": {
                    "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
                    "has_x": {"type": "string", "pattern": "x", "maxLength": 5},
                    "quoted": {"type": "string", "pattern": "^[\"\\\\é]{1,3}$"}
                },
                "required": ["code", "has_x", "quoted"],
                "additionalProperties": false
            }),
        ),
        (
            "anyOf",
            json!({
                "type": "object",
                "properties": {
                    "value": {"anyOf": [
                        {"type": "integer", "minimum": 0, "maximum": 10},
                        {"type": "string", "maxLength": 5},
                        {"type": "null"}
                    ]}
                },
                "required": ["value"],
                "additionalProperties": false
            }),
        ),
        (
            "$ref and $defs",
            json!({
                "$defs": {
                    "point": {
                        "type": "object",
                        "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9}, "y": {"type": "integer", "minimum": -9, "maximum": 9}},
                        "required": ["x", "y"],
                        "additionalProperties": false
                    }
                },
                "type": "object",
                "properties": {
                    "start": {"$ref": "#/$defs/point"},
                    "path": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 2}
                },
                "required": ["start", "path"],
                "additionalProperties": false
            }),
        ),
        (
            "a top-level array of short strings",
            json!({"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 3}, "minItems": 2, "maxItems": 4}),
        ),
    ]
}

const SEEDS: [u64; 6] = [0, 1, 2, 3, 4, 5];

#[test]
fn json_schema_outputs_validate_for_every_seed() {
    let lm = lm();
    let mut failures = Vec::new();
    for (name, schema) in schemas() {
        let validator = jsonschema::validator_for(&schema).unwrap();
        for seed in SEEDS {
            let reply =
                ask(&lm, "Fill in the form.", &params(Constraint::JsonSchema(schema.clone()), seed, 400));
            let parsed: Result<Value, _> = serde_json::from_str(&reply.content);
            let ok = reply.finish_reason == FinishReason::Stop
                && parsed.as_ref().is_ok_and(|value| validator.is_valid(value));
            if !ok {
                failures.push(format!("{name}, seed {seed}: {:?} {:?}", reply.finish_reason, reply.content));
            }
        }
    }
    assert!(failures.is_empty(), "{} outputs do not validate:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn outputs_differ_across_seeds() {
    // The matrix above means something only if sampling really explores within the mask.
    let lm = lm();
    let (_, schema) = &schemas()[0];
    let outputs: std::collections::HashSet<String> = SEEDS
        .iter()
        .map(|&seed| {
            ask(&lm, "Fill in the form.", &params(Constraint::JsonSchema(schema.clone()), seed, 400)).content
        })
        .collect();
    assert!(outputs.len() >= 4, "only {} distinct outputs over {} seeds", outputs.len(), SEEDS.len());
}

#[test]
fn any_json_object() {
    let lm = lm();
    for seed in SEEDS {
        let reply = ask(&lm, "Anything.", &params(Constraint::Json, seed, 300));
        if reply.finish_reason == FinishReason::Stop {
            let value: Value =
                serde_json::from_str(&reply.content).unwrap_or_else(|e| panic!("{e}: {:?}", reply.content));
            assert!(value.is_object(), "{:?}", reply.content);
        } else {
            // Unbounded keys and strings may run out of tokens; what was written is still a prefix.
            assert_eq!(reply.finish_reason, FinishReason::Length);
            assert!(reply.content.trim_start().starts_with('{'), "{:?}", reply.content);
        }
    }
}

#[test]
fn regex_outputs_match() {
    let lm = lm();
    for rx in [
        r"[0-9]{3}-[A-Z][a-z]{1,4}",
        r"(yes|no|maybe)( indeed)?",
        r"\w{2,6}@[a-z]{1,5}\.(com|org)",
        r"[αβγ]+ ?😀",
    ] {
        let whole = regex::Regex::new(&format!("^(?:{rx})$")).unwrap();
        for seed in SEEDS {
            let reply = ask(&lm, "Answer.", &params(Constraint::Regex(rx.into()), seed, 64));
            assert_eq!(reply.finish_reason, FinishReason::Stop, "{rx} seed {seed}: {:?}", reply.content);
            assert!(whole.is_match(&reply.content), "{rx} seed {seed}: {:?}", reply.content);
        }
    }
}

#[test]
fn lark_outputs_match() {
    // A small arithmetic language; the regex is an independent statement of the same language.
    let grammar = r#"
start: expr
expr: term (("+" | "-") term){0,3}
term: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
"#;
    let flat = regex::Regex::new(r"^[0-9()+\-]+$").unwrap();
    let lm = lm();
    for seed in SEEDS {
        let reply = ask(&lm, "Compute.", &params(Constraint::Grammar(grammar.into()), seed, 80));
        assert_eq!(reply.finish_reason, FinishReason::Stop, "seed {seed}: {:?}", reply.content);
        assert!(flat.is_match(&reply.content), "seed {seed}: {:?}", reply.content);
        assert!(balanced(&reply.content), "seed {seed}: {:?}", reply.content);
    }
}

fn balanced(text: &str) -> bool {
    let mut depth = 0i32;
    for c in text.chars() {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        if depth < 0 {
            return false;
        }
    }
    depth == 0 && !text.contains("()") && !text.contains("+)") && !text.contains("-)")
}

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 12},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city", "days"]
            }
        }}),
        json!({"type": "function", "function": {
            "name": "set_alarm",
            "parameters": {
                "type": "object",
                "properties": {
                    "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                    "repeat": {"type": "array", "items": {"enum": ["mon", "tue", "wed"]}, "maxItems": 2},
                    "loud": {"type": "boolean"}
                },
                "required": ["time"]
            }
        }}),
    ]
}

fn check_calls(reply: &Reply, tools: &[Value], only: Option<&str>) {
    assert_eq!(reply.finish_reason, FinishReason::Stop, "{:?}", reply.content);
    let parsed = parse(&reply.content, Some(tools));
    assert!(!parsed.calls.is_empty(), "no call parsed from {:?}", reply.content);
    assert!(parsed.content.trim().is_empty(), "text outside the calls: {:?}", parsed.content);
    for call in &parsed.calls {
        if let Some(name) = only {
            assert_eq!(call.name, name);
        }
        let tool =
            tools.iter().find(|t| t["function"]["name"] == call.name.as_str()).expect("a known function");
        let validator = jsonschema::validator_for(&tool["function"]["parameters"]).unwrap();
        assert!(
            validator.is_valid(&call.arguments),
            "{}: {} from {:?}",
            call.name,
            call.arguments,
            reply.content
        );
    }
}

#[test]
fn required_tool_calls_parse_and_validate() {
    let lm = lm();
    let tools = tools();
    for seed in SEEDS {
        let constraint = Constraint::ToolCalls { tools: tools.clone(), function: None };
        let reply = ask(&lm, "What now?", &params(constraint, seed, 300));
        check_calls(&reply, &tools, None);
    }
}

#[test]
fn a_named_tool_is_the_only_one_called() {
    let lm = lm();
    let tools = tools();
    for seed in SEEDS {
        let constraint = Constraint::ToolCalls { tools: tools.clone(), function: Some("set_alarm".into()) };
        let reply = ask(&lm, "Wake me.", &params(constraint, seed, 300));
        check_calls(&reply, &tools, Some("set_alarm"));
    }
}

#[test]
fn thinking_is_free_and_the_answer_validates() {
    let lm = lm();
    let schema = schemas()[1].1.clone();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for seed in SEEDS {
        let mut p = params(Constraint::JsonSchema(schema.clone()), seed, 400);
        p.enable_thinking = Some(true);
        p.max_thinking_tokens = Some(24);
        let reply = ask(&lm, "Think, then fill in the form.", &p);
        assert!(!reply.reasoning.is_empty());
        // A random model does not write JSON by itself: a free thought is not JSON.
        assert!(serde_json::from_str::<Value>(&reply.reasoning).is_err(), "{:?}", reply.reasoning);
        assert_eq!(reply.finish_reason, FinishReason::Stop, "{:?}", reply.content);
        let value: Value =
            serde_json::from_str(&reply.content).unwrap_or_else(|e| panic!("{e}: {:?}", reply.content));
        assert!(validator.is_valid(&value), "{:?}", reply.content);
    }
}

#[test]
fn the_answer_after_the_model_closes_its_thought_validates() {
    // Bias the model towards `</think>` so that it closes the thought itself, at once.
    let lm = lm();
    let think_end = lm.tokenizer.token_id("</think>").unwrap();
    let schema = schemas()[4].1.clone();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut p = params(Constraint::JsonSchema(schema), 3, 200);
    p.enable_thinking = Some(true);
    p.sampling.logit_bias = vec![(think_end, 100.0)];
    let reply = ask(&lm, "Think, then fill in the form.", &p);
    assert!(reply.tokens.contains(&think_end));
    assert_eq!(reply.finish_reason, FinishReason::Stop, "{:?}", reply.content);
    let value: Value =
        serde_json::from_str(&reply.content).unwrap_or_else(|e| panic!("{e}: {:?}", reply.content));
    assert!(validator.is_valid(&value), "{:?}", reply.content);
    // The template's blank line after the thought was fed, not left to the model.
    let end = reply.tokens.iter().position(|&t| t == think_end).unwrap();
    assert_eq!(
        &reply.tokens[end + 1..end + 1 + lm.encode("\n\n").unwrap().len()],
        lm.encode("\n\n").unwrap()
    );
}

#[test]
fn greedy_takes_the_best_allowed_token() {
    // The reference: at each step, the token with the largest logit among those that keep the text
    // a prefix of "yes" or "no", computed from the raw logits without the constraint machinery.
    let lm = lm();
    let words = ["yes", "no"];
    let texts: Vec<String> = (0..lm.tokenizer.vocab_size() as u32)
        .map(|id| lm.tokenizer.decode(&[id]).unwrap_or_default())
        .collect();
    let prompt =
        lm.encode(&lm.render_chat(&[Message::user("Yes or no?")], true, Some(false)).unwrap()).unwrap();
    let mut state = lm.model.new_state();
    let mut logits = lm.model.forward(&mut state, &prompt, qwenrt::Logits::Last).unwrap().to_vec();
    let mut written = String::new();
    let mut expected = Vec::new();
    while !words.contains(&written.as_str()) {
        let best = (0..texts.len())
            .filter(|&id| {
                let text = format!("{written}{}", texts[id]);
                !texts[id].is_empty() && words.iter().any(|w| w.starts_with(&text))
            })
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        expected.push(best);
        written.push_str(&texts[best as usize]);
        logits = lm.model.forward(&mut state, &[best], qwenrt::Logits::Last).unwrap().to_vec();
    }
    let reply = ask(&lm, "Yes or no?", &params(Constraint::Regex("yes|no".into()), 0, 8));
    assert_eq!(reply.content, written);
    // No stop token was sampled: the turn ends as soon as nothing else can follow.
    assert_eq!(reply.tokens, expected);
    assert_eq!(reply.finish_reason, FinishReason::Stop);
}

#[test]
fn max_tokens_cuts_an_answer_as_length() {
    let lm = lm();
    let schema = schemas()[0].1.clone();
    let reply = ask(&lm, "Fill in the form.", &params(Constraint::JsonSchema(schema), 1, 5));
    assert_eq!(reply.finish_reason, FinishReason::Length);
    assert!(serde_json::from_str::<Value>(&reply.content).is_err(), "{:?}", reply.content);
}

#[test]
fn batched_turns_with_different_constraints_equal_solo_runs() {
    let lm = lm();
    let schema = schemas()[7].1.clone();
    let tools = tools();
    let all: Vec<(&str, ChatParams)> = vec![
        ("Fill in the form.", params(Constraint::JsonSchema(schema), 2, 200)),
        ("Count.", params(Constraint::Regex("[0-9]{2,8}".into()), 3, 40)),
        ("Call.", params(Constraint::ToolCalls { tools, function: None }, 4, 200)),
        ("Chat freely.", ChatParams { constraint: None, ..params(Constraint::Json, 5, 30) }),
        ("Any object.", params(Constraint::Json, 0, 60)),
    ];
    let solo: Vec<Reply> = all.iter().map(|(q, p)| ask(&lm, q, p)).collect();

    let mut sessions: Vec<ChatSession> = all.iter().map(|_| ChatSession::new(lm.clone())).collect();
    let mut turns: Vec<qwenrt::Turn> = sessions
        .iter_mut()
        .zip(&all)
        .map(|(session, (q, p))| {
            session.push(Message::user(*q));
            let prompt =
                lm.encode(&lm.render_chat(session.messages(), true, p.enable_thinking).unwrap()).unwrap();
            session.begin_deferred(&prompt, p).unwrap()
        })
        .collect();
    loop {
        let mut s: Vec<&mut ChatSession> = sessions.iter_mut().collect();
        let mut t: Vec<&mut qwenrt::Turn> = turns.iter_mut().collect();
        if ChatSession::advance_many(&mut s, &mut t, |_, _| {}).unwrap() == 0 {
            break;
        }
    }
    for ((turn, solo), (q, _)) in turns.into_iter().zip(&solo).zip(&all) {
        let batched = turn.finish(&mut |_: Event<'_>| {});
        assert_eq!(batched.tokens, solo.tokens, "{q}");
        assert_eq!(batched.content, solo.content, "{q}");
        assert_eq!(batched.finish_reason, solo.finish_reason, "{q}");
    }
}

#[test]
fn invalid_constraints_are_errors_before_generation() {
    let lm = lm();
    let cases = [
        (Constraint::JsonSchema(json!({"type": "strng"})), "JSON Schema"),
        (Constraint::JsonSchema(json!({"type": "integer", "minimum": 5, "maximum": 1})), "JSON Schema"),
        (Constraint::JsonSchema(json!({"$ref": "#/$defs/missing"})), "JSON Schema"),
        (Constraint::JsonSchema(json!([1, 2])), "JSON Schema"),
        (Constraint::Regex("[a-".into()), "regular expression"),
        (Constraint::Grammar("start: undefined_rule".into()), "grammar"),
        (Constraint::Grammar("start: \"a\" (".into()), "grammar"),
        (Constraint::ToolCalls { tools: vec![], function: None }, "tool definitions"),
        (Constraint::ToolCalls { tools: tools(), function: Some("nope".into()) }, "tool definitions"),
    ];
    for (constraint, what) in cases {
        let err = lm.check_constraint(&constraint).expect_err(&format!("{constraint:?} accepted"));
        assert!(err.to_string().contains(what), "{constraint:?}: {err}");
        let mut session = ChatSession::new(lm.clone());
        let mut events = 0;
        let result = session.send(Message::user("Hi"), &params(constraint.clone(), 0, 8), |_| events += 1);
        assert!(result.is_err(), "{constraint:?} generated");
        assert_eq!(events, 0, "{constraint:?}: events before the error");
        assert_eq!(session.context_tokens(), 0, "{constraint:?}: the state was touched");
    }
}

/// A constraint that allows only "7", with "7" banned by a bias: no token is possible.
fn impossible(lm: &LanguageModel) -> ChatParams {
    let seven = lm.encode("7").unwrap()[0];
    let mut p = params(Constraint::Regex("7".into()), 0, 8);
    p.sampling.logit_bias = vec![(seven, f32::NEG_INFINITY)];
    p
}

#[test]
fn a_bias_banning_every_allowed_token_is_an_error_not_a_wrong_token() {
    let lm = lm();
    let mut session = ChatSession::new(lm.clone());
    let err =
        session.send(Message::user("Seven?"), &impossible(&lm), |_| {}).expect_err("no token is possible");
    assert!(err.to_string().contains("allows no token"), "{err}");
}

#[test]
fn a_turn_that_fails_in_a_batch_fails_alone() {
    let lm = lm();
    let impossible = impossible(&lm);
    let fine = params(Constraint::Regex("[0-9]{2,6}".into()), 1, 20);
    let free = ChatParams { constraint: None, ..params(Constraint::Json, 2, 12) };
    let solo_fine = ask(&lm, "Count.", &fine);
    let solo_free = ask(&lm, "Chat.", &free);

    let all = [("Seven?", &impossible), ("Count.", &fine), ("Chat.", &free)];
    let mut sessions: Vec<ChatSession> = all.iter().map(|_| ChatSession::new(lm.clone())).collect();
    let mut turns: Vec<qwenrt::Turn> = sessions
        .iter_mut()
        .zip(&all)
        .map(|(session, (q, p))| {
            let prompt =
                lm.encode(&lm.render_chat(&[Message::user(*q)], true, p.enable_thinking).unwrap()).unwrap();
            session.begin_deferred(&prompt, p).unwrap()
        })
        .collect();
    loop {
        let mut s: Vec<&mut ChatSession> = sessions.iter_mut().collect();
        let mut t: Vec<&mut qwenrt::Turn> = turns.iter_mut().collect();
        if ChatSession::advance_many(&mut s, &mut t, |_, _| {}).expect("the batch goes on") == 0 {
            break;
        }
    }
    let mut turns = turns.into_iter();
    let mut failed = turns.next().unwrap();
    let err = failed.take_error().expect("the impossible turn failed");
    assert!(err.to_string().contains("allows no token"), "{err}");
    assert!(failed.take_error().is_none(), "reported once");
    for (turn, solo) in turns.zip([solo_fine, solo_free]) {
        let mut turn = turn;
        assert!(turn.take_error().is_none());
        let reply = turn.finish(&mut |_: Event<'_>| {});
        assert_eq!((reply.tokens, reply.content), (solo.tokens, solo.content));
    }
}
