//! The chat template renderer against transformers' own output (fixtures made by
//! scripts/make_chat_goldens.py) and the template lookup of `ChatTemplate::from_model_dir`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use qwenrt::chat::{ChatTemplate, ChatTemplateError, Message, MessageContent, RenderRequest};
use serde_json::{json, Map, Value};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/chat/qwen3_5")
}

fn load_json(name: &str) -> Vec<Value> {
    let path = fixture_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn qwen_template() -> ChatTemplate {
    let source = std::fs::read_to_string(fixture_dir().join("chat_template.jinja")).unwrap();
    ChatTemplate::new(&source).unwrap()
}

/// Where two renderings part, with a little context on each side, so a failure is readable.
fn diff_report(expected: &str, got: &str) -> String {
    let pos = expected
        .char_indices()
        .zip(got.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| expected.len().min(got.len()));
    let window = |s: &str| {
        let mut start = pos.saturating_sub(60).min(s.len());
        while !s.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (pos + 60).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        format!("{:?}", &s[start..end])
    };
    format!(
        "first difference at byte {pos} (expected {} bytes, got {})\n  expected: …{}…\n  got:      …{}…",
        expected.len(),
        got.len(),
        window(expected),
        window(got)
    )
}

struct Case {
    name: String,
    messages: Vec<Message>,
    tools: Option<Vec<Value>>,
    add_generation_prompt: bool,
    enable_thinking: Option<bool>,
    extra: Map<String, Value>,
}

fn parse_case(raw: &Value) -> Case {
    let name = raw["name"].as_str().unwrap().to_owned();
    let messages: Vec<Message> = serde_json::from_value(raw["messages"].clone())
        .unwrap_or_else(|e| panic!("{name}: messages do not deserialize: {e}"));
    Case {
        tools: raw["tools"].as_array().cloned(),
        add_generation_prompt: raw["add_generation_prompt"].as_bool().unwrap(),
        enable_thinking: raw["enable_thinking"].as_bool(),
        extra: raw["extra"].as_object().cloned().unwrap_or_default(),
        messages,
        name,
    }
}

fn render_case(template: &ChatTemplate, case: &Case) -> Result<String, ChatTemplateError> {
    template.render(&RenderRequest {
        messages: &case.messages,
        tools: case.tools.as_deref(),
        add_generation_prompt: case.add_generation_prompt,
        enable_thinking: case.enable_thinking,
        extra: case.extra.clone(),
    })
}

#[test]
fn golden_cases_match_transformers() {
    let template = qwen_template();
    let cases = load_json("cases.json");
    assert!(cases.len() >= 12, "expected at least 12 golden cases");
    let mut failures = Vec::new();
    for raw in &cases {
        let case = parse_case(raw);
        let result = render_case(&template, &case);
        if raw["error"].as_bool().unwrap() {
            let want = raw["expected_error"].as_str().unwrap();
            match result {
                Err(err @ ChatTemplateError::Raised(_)) if err.to_string().contains(want) => {}
                Err(err) => failures.push(format!("{}: error {err:?} does not carry {want:?}", case.name)),
                Ok(text) => {
                    failures.push(format!("{}: expected error {want:?}, rendered {text:?}", case.name))
                }
            }
            continue;
        }
        let expected = raw["expected"].as_str().unwrap();
        match result {
            Ok(got) if got == expected => {}
            Ok(got) => failures.push(format!("{}: {}", case.name, diff_report(expected, &got))),
            Err(err) => failures.push(format!("{}: render failed: {err}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// OpenAI clients send tool-call arguments as a JSON string; they must render like the parsed object.
#[test]
fn string_tool_arguments_render_like_objects() {
    let template = qwen_template();
    let cases = load_json("cases.json");
    let raw = cases.iter().find(|c| c["name"] == "tools_with_system_call_and_response").unwrap();
    let mut stringified = raw["messages"].clone();
    for message in stringified.as_array_mut().unwrap() {
        if let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for call in calls {
                let args = &mut call["function"]["arguments"];
                *args = Value::String(args.to_string());
            }
        }
    }
    let mut case = parse_case(raw);
    case.messages = serde_json::from_value(stringified).unwrap();
    assert_eq!(render_case(&template, &case).unwrap(), raw["expected"].as_str().unwrap());
}

/// The filters and printing rules transformers' environment has (tojson = json.dumps, str(), str.strip()).
#[test]
fn filters_match_python() {
    let mut failures = Vec::new();
    for raw in load_json("filters.json") {
        let name = raw["name"].as_str().unwrap();
        let template = ChatTemplate::new(raw["template"].as_str().unwrap()).unwrap();
        let mut req = RenderRequest::new(&[]);
        req.extra.insert("value".to_owned(), raw["value"].clone());
        let expected = raw["expected"].as_str().unwrap();
        match template.render(&req) {
            Ok(got) if got == expected => {}
            Ok(got) => failures.push(format!("{name}: {}", diff_report(expected, &got))),
            Err(err) => failures.push(format!("{name}: {err}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn render_value(source: &str, value: Value) -> String {
    let template = ChatTemplate::new(source).unwrap();
    let mut req = RenderRequest::new(&[]);
    req.extra.insert("value".to_owned(), value);
    template.render(&req).unwrap()
}

/// Expected strings are Python's `json.dumps(value, ensure_ascii=False, ...)`.
#[test]
fn tojson_is_python_json_dumps() {
    let value: Value = serde_json::from_str(
        r#"{"f": [1e-07, 0.1, 1.0, 2.5e20, 9007199254740993], "s": "</script> & 'q' \"é\" 🚀\u0001", "n": {"z": null, "a": [true, {}]}}"#,
    )
    .unwrap();
    assert_eq!(
        render_value("{{ value | tojson }}", value.clone()),
        r#"{"f": [1e-07, 0.1, 1.0, 2.5e+20, 9007199254740993], "s": "</script> & 'q' \"é\" 🚀\u0001", "n": {"z": null, "a": [true, {}]}}"#
    );
    assert_eq!(
        render_value("{{ value.n | tojson(indent=2) }}", value.clone()),
        "{\n  \"z\": null,\n  \"a\": [\n    true,\n    {}\n  ]\n}"
    );
    assert_eq!(
        render_value("{{ value.n | tojson(sort_keys=true) }}", value),
        r#"{"a": [true, {}], "z": null}"#
    );
}

#[test]
fn raise_exception_carries_the_template_message() {
    let template =
        ChatTemplate::new("{{ raise_exception('Bad conversation: ' ~ messages|length) }}").unwrap();
    let err = template.render(&RenderRequest::new(&[])).unwrap_err();
    match &err {
        ChatTemplateError::Raised(message) => assert_eq!(message, "Bad conversation: 0"),
        other => panic!("expected Raised, got {other:?}"),
    }
    // The Qwen template's own check, which transformers never reaches because it rejects empty chats first.
    let err = qwen_template().render(&RenderRequest::new(&[])).unwrap_err();
    assert!(err.to_string().contains("No messages provided."), "{err}");
}

#[test]
fn environment_extras() {
    let year: i32 = render_value("{{ strftime_now('%Y') }}", Value::Null).parse().unwrap();
    assert!(year >= 2024, "{year}");
    assert_eq!(
        render_value("{% for x in value %}{% if x == 3 %}{% break %}{% endif %}{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}", json!([0, 1, 2, 3, 4])),
        "02"
    );
    // transformers' assistant-tracking tag renders its body unchanged.
    assert_eq!(render_value("a\n{% generation %}\nb\n{% endgeneration %}\nc", Value::Null), "a\nb\nc");
    assert_eq!(render_value("{{ '<&>' }}|{{ value }}", json!("<b>")), "<&>|<b>");
}

#[test]
fn extra_cannot_replace_messages() {
    let template = qwen_template();
    let messages = [Message::user("hi")];
    let mut req = RenderRequest::new(&messages);
    req.extra.insert("messages".to_owned(), json!([]));
    assert!(matches!(template.render(&req), Err(ChatTemplateError::InvalidRequest(_))));
}

#[test]
fn message_serde_follows_openai_shapes() {
    let message: Message = serde_json::from_value(json!({
        "role": "assistant", "content": null, "reasoning": "why",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"b\": 1, \"a\": [2]}"}}]
    }))
    .unwrap();
    assert_eq!(message.content, MessageContent::Null);
    assert_eq!(message.reasoning_content.as_deref(), Some("why"));
    let args = &message.tool_calls.as_ref().unwrap()[0].function.arguments;
    assert_eq!(args.to_string(), r#"{"b":1,"a":[2]}"#);
    // Absent fields stay absent, so templates see them as undefined, as after transformers drops `None`s.
    let back = serde_json::to_value(&message).unwrap();
    assert!(back.get("content").is_none() && back.get("name").is_none());

    // Servers that echo several names for the reasoning are accepted; the standard name wins.
    let both: Message = serde_json::from_value(
        json!({"role": "assistant", "content": "a", "reasoning": "r", "reasoning_content": "rc"}),
    )
    .unwrap();
    assert_eq!(both.reasoning_content.as_deref(), Some("rc"));

    let parts: Message = serde_json::from_value(json!({"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u"}}
    ]}))
    .unwrap();
    assert_eq!(
        serde_json::to_value(&parts).unwrap(),
        json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u"}}]})
    );
}

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("qwenrt-chat-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, name: &str, contents: &str) {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn render_dir(dir: &TempDir, tools: Option<&[Value]>) -> Result<String, ChatTemplateError> {
    let template = ChatTemplate::from_model_dir(&dir.0)?;
    let messages = [Message::user("hi")];
    template.render(&RenderRequest { tools, ..RenderRequest::new(&messages) })
}

#[test]
fn model_dir_prefers_chat_template_jinja() {
    let dir = TempDir::new();
    // Python reads the file with universal newlines, so CRLF line ends must not reach the output.
    dir.write("chat_template.jinja", "jinja:{{ messages[0].content }}\r\n{{ eos_token }}\r\n");
    dir.write(
        "tokenizer_config.json",
        r#"{"chat_template": "config", "eos_token": "<|im_end|>", "pad_token": {"content": "<pad>", "__type": "AddedToken"}, "bos_token": null}"#,
    );
    assert_eq!(render_dir(&dir, None).unwrap(), "jinja:hi\n<|im_end|>");

    // The real Qwen3.5 template loads from a folder too.
    let qwen = ChatTemplate::from_model_dir(&fixture_dir()).unwrap();
    let messages = [Message::user("Hello!")];
    let got =
        qwen.render(&RenderRequest { add_generation_prompt: true, ..RenderRequest::new(&messages) }).unwrap();
    assert_eq!(got, "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

#[test]
fn model_dir_reads_tokenizer_config_string() {
    let dir = TempDir::new();
    dir.write(
        "tokenizer_config.json",
        r#"{"chat_template": "config:{{ messages[0].content }}|{{ pad_token }}|{{ bos_token is defined }}", "pad_token": {"content": "<pad>"}, "bos_token": null}"#,
    );
    // A null token is no special token, and printed booleans are Python's.
    assert_eq!(render_dir(&dir, None).unwrap(), "config:hi|<pad>|False");
}

#[test]
fn model_dir_reads_tokenizer_config_list() {
    let dir = TempDir::new();
    dir.write(
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "default", "template": "default:{{ messages[0].content }}"}, {"name": "tool_use", "template": "tools:{{ tools|length }}"}]}"#,
    );
    assert_eq!(render_dir(&dir, None).unwrap(), "default:hi");
    // Like transformers' get_chat_template: a request with tools uses the `tool_use` template.
    assert_eq!(render_dir(&dir, Some(&[json!({"name": "f"})])).unwrap(), "tools:1");

    let no_default = TempDir::new();
    no_default.write("tokenizer_config.json", r#"{"chat_template": [{"name": "rag", "template": "x"}]}"#);
    match render_dir(&no_default, None) {
        Err(ChatTemplateError::NoDefault(names)) => assert_eq!(names, ["rag"]),
        other => panic!("expected NoDefault, got {other:?}"),
    }
}

#[test]
fn model_dir_without_template_names_the_folder() {
    let dir = TempDir::new();
    dir.write("tokenizer_config.json", r#"{"eos_token": "</s>"}"#);
    let err = ChatTemplate::from_model_dir(&dir.0).unwrap_err();
    assert!(matches!(err, ChatTemplateError::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains(&dir.0.display().to_string()), "{err}");

    let empty = TempDir::new();
    let err = ChatTemplate::from_model_dir(&empty.0).unwrap_err();
    assert!(err.to_string().contains(&empty.0.display().to_string()), "{err}");
}

#[test]
fn syntax_errors_are_reported_at_compile_time() {
    let err = ChatTemplate::new("{% if %}").unwrap_err();
    assert!(matches!(err, ChatTemplateError::Syntax { .. }), "{err:?}");
}
