//! Tool calls parsed out of the model's answer: Qwen3.5's XML format, and the JSON format of
//! Qwen3 (`<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`), told apart by the block's
//! first character.
//!
//! The Qwen3.5 chat template asks the model to call functions like this, and renders the calls of
//! earlier assistant turns the same way:
//!
//! ```text
//! <tool_call>
//! <function=get_weather>
//! <parameter=city>
//! Paris
//! </parameter>
//! <parameter=days>
//! 3
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! [`parse`] splits a finished answer into its text and its calls; [`ToolCallParser`] does the
//! same incrementally while the answer streams, holding back only text that may be the start of a
//! `<tool_call>`. Both are lenient in one direction only: a block that does not parse is handed
//! back as text, so nothing the model wrote is ever lost.
//!
//! Parameter values are text in the XML; the template renders a call's arguments back with
//! `tojson` for objects and arrays and Python's `str()` for everything else. When the request's
//! tool schema declares a parameter's type, the value is converted to it (`"3"` → `3` for an
//! integer, `true`/`True` → `true` for a boolean); a `string` parameter is kept verbatim. Without
//! a declared type, a value becomes JSON only if the template would render that JSON back as the
//! very same text (`3`, `2.5`, `True`, `{"a": 1}`), so feeding the parsed call back in the next
//! turn reproduces the tokens the model generated; anything else stays a string.
//!
//! ```
//! use qwenrt::tool_calls::parse;
//!
//! let answer = "Let me look.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>";
//! let parsed = parse(answer, None);
//! assert_eq!(parsed.content, "Let me look.");
//! assert_eq!(parsed.calls[0].name, "get_weather");
//! assert_eq!(parsed.calls[0].arguments["city"], "Paris");
//! ```

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::chat::{ChatTemplate, FunctionCall, RenderRequest};

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// Qwen3.5: `<tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n…</function>\n</tool_call>`.
    Xml,
    /// Qwen3 (Hermes style): `<tool_call>\n{"name": NAME, "arguments": {…}}\n</tool_call>`.
    Json,
}

const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

/// A finished answer split into text and calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedAnswer {
    /// The text outside the calls: what came before them (without the blank line the template puts
    /// between text and a call), anything after them, and any block that did not parse.
    pub content: String,
    /// The calls, in order; `arguments` is always a JSON object.
    pub calls: Vec<FunctionCall>,
}

/// Parses the tool calls out of a whole answer. `tools` are the request's tool definitions
/// (OpenAI's `[{"type": "function", "function": {"name", "parameters"}}]`), used to convert
/// parameter values to their declared types.
pub fn parse(text: &str, tools: Option<&[Value]>) -> ParsedAnswer {
    let mut parser = ToolCallParser::new(tools);
    let mut answer = ParsedAnswer::default();
    let mut collect = |segments: Vec<Segment>| {
        for segment in segments {
            match segment {
                Segment::Text(text) => answer.content.push_str(&text),
                Segment::Call(call) => answer.calls.push(call),
            }
        }
    };
    collect(parser.push(text));
    collect(parser.finish());
    answer
}

/// A piece of a streamed answer, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Text(String),
    Call(FunctionCall),
}

/// Splits a streamed answer into text and tool calls as it arrives.
///
/// Text is released as soon as it cannot be part of a call: only a possible beginning of
/// `<tool_call>` at the end of what has arrived (and the whitespace before it, which separates
/// text from a call) waits for the next piece. A call is released whole when its `</tool_call>`
/// arrives; a block that turns out malformed, or is still open at [`finish`](Self::finish), is
/// released as text.
#[derive(Debug, Clone, Default)]
pub struct ToolCallParser {
    types: ParameterTypes,
    /// Arrived, not yet released.
    buffer: String,
    /// Whether `buffer` starts with an open `<tool_call>`.
    in_call: bool,
    /// The whitespace between the text and the open call: dropped if the call parses, given
    /// back with the block if it does not.
    separator: String,
}

impl ToolCallParser {
    pub fn new(tools: Option<&[Value]>) -> Self {
        ToolCallParser { types: ParameterTypes::from_tools(tools.unwrap_or_default()), ..Self::default() }
    }

    /// Adds the next piece of the answer; returns what can be released.
    pub fn push(&mut self, text: &str) -> Vec<Segment> {
        self.buffer.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.buffer.find(CALL_CLOSE).map(|i| i + CALL_CLOSE.len()) else {
                    break;
                };
                let block: String = self.buffer.drain(..end).collect();
                self.in_call = false;
                let separator = std::mem::take(&mut self.separator);
                match parse_block(&block, &self.types) {
                    Some(call) => out.push(Segment::Call(call)),
                    None => push_text(&mut out, separator + &block),
                }
            } else if let Some(start) = self.buffer.find(CALL_OPEN) {
                let text_end = self.buffer[..start].trim_end().len();
                push_text(&mut out, self.buffer[..text_end].to_owned());
                self.separator = self.buffer[text_end..start].to_owned();
                self.buffer.drain(..start);
                self.in_call = true;
            } else {
                let keep = held_back_len(&self.buffer);
                let ready: String = self.buffer.drain(..self.buffer.len() - keep).collect();
                push_text(&mut out, ready);
                break;
            }
        }
        out
    }

    /// The answer is over: releases whatever is held, an unfinished call as text.
    pub fn finish(&mut self) -> Vec<Segment> {
        self.in_call = false;
        let mut out = Vec::new();
        push_text(&mut out, std::mem::take(&mut self.separator) + &self.buffer);
        self.buffer.clear();
        out
    }
}

fn push_text(out: &mut Vec<Segment>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Segment::Text(last)) = out.last_mut() {
        last.push_str(&text);
    } else {
        out.push(Segment::Text(text));
    }
}

/// How much of the end of `text` must wait: a proper prefix of `<tool_call>` and the whitespace
/// before it (dropped if a call follows), or trailing whitespace that a call may still follow.
fn held_back_len(text: &str) -> usize {
    let partial = (1..CALL_OPEN.len()).rev().find(|&k| text.ends_with(&CALL_OPEN[..k])).unwrap_or(0);
    let before = &text[..text.len() - partial];
    partial + (before.len() - before.trim_end().len())
}

/// Parses one `<tool_call>…</tool_call>` block; `None` if it is not a well-formed call.
fn parse_block(block: &str, types: &ParameterTypes) -> Option<FunctionCall> {
    let inner = block.strip_prefix(CALL_OPEN)?.strip_suffix(CALL_CLOSE)?.trim();
    if inner.starts_with('{') {
        return parse_json_call(inner);
    }
    let rest = inner.strip_prefix("<function=")?;
    let (name, rest) = rest.split_once('>')?;
    let name = name.trim();
    if name.is_empty() || name.contains(['<', '\n']) {
        return None;
    }
    let mut rest = rest.trim_start().strip_suffix("</function>")?.trim_end();
    let mut arguments = Map::new();
    while !rest.is_empty() {
        let after_open = rest.strip_prefix("<parameter=")?;
        let (key, after_key) = after_open.split_once('>')?;
        let key = key.trim();
        if key.is_empty() || key.contains(['<', '\n']) {
            return None;
        }
        let (raw, after_value) = after_key.split_once("</parameter>")?;
        // The template writes each value between a newline after the tag and one before the
        // closing tag; anything else around it is the value's own.
        let raw = raw.strip_prefix('\n').unwrap_or(raw);
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        arguments.insert(key.to_owned(), types.convert(name, key, raw));
        rest = after_value.trim_start();
    }
    Some(FunctionCall { name: name.to_owned(), arguments: Value::Object(arguments) })
}

/// The body of a call in the JSON format of Qwen3 (and Hermes-style templates):
/// `{"name": "get_weather", "arguments": {"city": "Paris"}}`.
fn parse_json_call(body: &str) -> Option<FunctionCall> {
    let Value::Object(mut call) = serde_json::from_str::<Value>(body).ok()? else { return None };
    let name = match call.remove("name")? {
        Value::String(name) if !name.trim().is_empty() => name,
        _ => return None,
    };
    let arguments = match call.remove("arguments").unwrap_or_else(|| Value::Object(Map::new())) {
        Value::String(text) => serde_json::from_str::<Value>(&text).ok().filter(Value::is_object)?,
        arguments @ Value::Object(_) => arguments,
        _ => return None,
    };
    call.is_empty().then_some(FunctionCall { name, arguments })
}

/// The JSON-schema types the request's tools declare, by function and parameter.
#[derive(Debug, Clone, Default)]
struct ParameterTypes(HashMap<String, HashMap<String, Vec<String>>>);

impl ParameterTypes {
    fn from_tools(tools: &[Value]) -> Self {
        let mut functions = HashMap::new();
        for tool in tools {
            // OpenAI nests the definition under `function`; some clients send it bare.
            let function = tool.get("function").unwrap_or(tool);
            let Some(name) = function.get("name").and_then(Value::as_str) else {
                continue;
            };
            let root = function.get("parameters").unwrap_or(&Value::Null);
            let properties = root.get("properties").and_then(Value::as_object);
            let params = properties
                .into_iter()
                .flatten()
                .map(|(key, schema)| (key.clone(), schema_types(schema, root)))
                .filter(|(_, types)| !types.is_empty())
                .collect();
            functions.insert(name.to_owned(), params);
        }
        ParameterTypes(functions)
    }

    fn declared(&self, function: &str, parameter: &str) -> Option<&[String]> {
        self.0.get(function)?.get(parameter).map(Vec::as_slice)
    }

    fn convert(&self, function: &str, parameter: &str, raw: &str) -> Value {
        match self.declared(function, parameter) {
            Some(types) => convert_declared(raw, types),
            None => convert_undeclared(raw),
        }
    }
}

/// A `$ref` to `#/$defs/NAME` or `#/definitions/NAME` of `root` (a tool's `parameters`), looked
/// up; any other schema as it is.
pub(crate) fn resolve_ref<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    let Some(reference) = schema.get("$ref").and_then(Value::as_str) else { return schema };
    for key in ["$defs", "definitions"] {
        let target = reference
            .strip_prefix("#/")
            .and_then(|r| r.strip_prefix(key))
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|name| root.get(key)?.get(name));
        if let Some(target) = target {
            return target;
        }
    }
    schema
}

/// `"type": "integer"`, `"type": ["string", "null"]`, or the types of `anyOf`/`oneOf` branches,
/// `$ref`s into `root` followed.
pub(crate) fn schema_types(schema: &Value, root: &Value) -> Vec<String> {
    let schema = resolve_ref(schema, root);
    let mut types = Vec::new();
    match schema.get("type") {
        Some(Value::String(t)) => types.push(t.clone()),
        Some(Value::Array(list)) => types.extend(list.iter().filter_map(Value::as_str).map(str::to_owned)),
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        for branch in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            types.extend(schema_types(branch, root));
        }
    }
    if types.is_empty() && schema.get("enum").is_some() {
        // An enum without a type is almost always a list of strings.
        types.push("string".to_owned());
    }
    types
}

/// Converts to the first declared type the text is a valid value of; text that fits none (or a
/// parameter that may be a string) stays a string.
fn convert_declared(raw: &str, types: &[String]) -> Value {
    let text = raw.trim();
    for ty in types {
        let value = match ty.as_str() {
            "integer" => serde_json::from_str::<Value>(text).ok().filter(|v| v.is_i64() || v.is_u64()),
            "number" => serde_json::from_str::<Value>(text).ok().filter(Value::is_number),
            "boolean" => match text {
                "true" | "True" => Some(Value::Bool(true)),
                "false" | "False" => Some(Value::Bool(false)),
                _ => None,
            },
            "null" => matches!(text, "null" | "None").then_some(Value::Null),
            "object" => serde_json::from_str::<Value>(text).ok().filter(Value::is_object),
            "array" => serde_json::from_str::<Value>(text).ok().filter(Value::is_array),
            _ => None,
        };
        if let Some(value) = value {
            return value;
        }
    }
    Value::String(raw.to_owned())
}

/// JSON if the template renders it back as exactly `raw`, else the string.
fn convert_undeclared(raw: &str) -> Value {
    let candidate = match raw {
        // Python's str() of booleans and None: what the template printed for them.
        "True" => Some(Value::Bool(true)),
        "False" => Some(Value::Bool(false)),
        "None" => Some(Value::Null),
        _ => serde_json::from_str::<Value>(raw).ok().filter(|v| !v.is_string()),
    };
    match candidate {
        Some(value) if render_argument(&value).as_deref() == Some(raw) => value,
        _ => Value::String(raw.to_owned()),
    }
}

/// The Qwen3.5 template's own expression for printing an argument value, evaluated with the
/// crate's Python-compatible Jinja environment (Python's `str()` and `json.dumps`).
const ARGUMENT_TEMPLATE: &str = "{{- value | tojson | safe if value is mapping or (value is sequence and \
     value is not string) else value | string -}}";

/// How the template prints `value` as a tool-call argument (`None` if it cannot).
fn render_argument(value: &Value) -> Option<String> {
    static TEMPLATE: OnceLock<Option<ChatTemplate>> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| ChatTemplate::new(ARGUMENT_TEMPLATE).ok()).as_ref()?;
    let mut request = RenderRequest::new(&[]);
    request.extra.insert("value".to_owned(), value.clone());
    template.render(&request).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::chat::{Message, ToolCall};

    const WEATHER: &str = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";

    fn call(name: &str, arguments: Value) -> FunctionCall {
        FunctionCall { name: name.to_owned(), arguments }
    }

    fn weather_tools() -> Vec<Value> {
        vec![json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "zip": {"type": "string"},
                "hours": {"type": "array", "items": {"type": "integer"}},
                "ratio": {"type": ["number", "null"]},
            },
        }}})]
    }

    #[test]
    fn a_call_after_text() {
        let parsed = parse(&format!("Let me check.\n\n{WEATHER}"), None);
        assert_eq!(parsed.content, "Let me check.");
        assert_eq!(parsed.calls, vec![call("get_weather", json!({"city": "Paris", "days": 3}))]);
    }

    #[test]
    fn several_calls_and_multiline_values() {
        let text = format!(
            "{WEATHER}\n<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n<parameter=body>\nline one\n\nline two\n</parameter>\n</function>\n</tool_call>"
        );
        let parsed = parse(&text, None);
        assert_eq!(parsed.content, "");
        assert_eq!(parsed.calls.len(), 2);
        assert_eq!(
            parsed.calls[1],
            call("write_file", json!({"path": "a.txt", "body": "line one\n\nline two"}))
        );
    }

    #[test]
    fn a_call_without_arguments() {
        let parsed = parse("<tool_call>\n<function=now>\n</function>\n</tool_call>", None);
        assert_eq!(parsed.calls, vec![call("now", json!({}))]);
    }

    #[test]
    fn plain_text_is_untouched() {
        for text in ["", "Hello", "a < b and x<tool", "ends with space  ", "<tool_response>x</tool_response>"]
        {
            assert_eq!(
                parse(text, None),
                ParsedAnswer { content: text.to_owned(), calls: vec![] },
                "{text:?}"
            );
        }
    }

    #[test]
    fn malformed_calls_come_back_as_text() {
        for bad in [
            "<tool_call>\n<function=f>\n<parameter=x>\n1\n</function>\n</tool_call>",
            "<tool_call>\nnot xml at all\n</tool_call>",
            "<tool_call>\n<function=>\n</function>\n</tool_call>",
            "<tool_call>\n<function=f>\n</function>\ntrailing\n</tool_call>",
            "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\nstray\n</function>\n</tool_call>",
        ] {
            let parsed = parse(&format!("Before. {bad} After."), None);
            assert!(parsed.calls.is_empty(), "{bad:?}");
            assert_eq!(parsed.content, format!("Before. {bad} After."), "{bad:?}");
        }
        // Cut off by the token limit: kept as text.
        let cut = &WEATHER[..WEATHER.len() - 20];
        assert_eq!(parse(cut, None), ParsedAnswer { content: cut.to_owned(), calls: vec![] });
    }

    #[test]
    fn a_good_call_next_to_a_bad_one() {
        let bad = "<tool_call>\n<function=f>\noops\n</tool_call>";
        let parsed = parse(&format!("{bad}\n{WEATHER}"), None);
        assert_eq!(parsed.content, bad, "the newline before the good call separates it");
        assert_eq!(parsed.calls.len(), 1);
    }

    #[test]
    fn declared_types_convert_values() {
        let tools = weather_tools();
        let value = |name: &str, raw: &str| {
            let text = format!("<tool_call>\n<function=get_weather>\n<parameter={name}>\n{raw}\n</parameter>\n</function>\n</tool_call>");
            parse(&text, Some(&tools)).calls[0].arguments[name].clone()
        };
        assert_eq!(value("days", "3"), json!(3));
        assert_eq!(value("days", "three"), json!("three"), "not an integer: kept as text");
        assert_eq!(value("zip", "01234"), json!("01234"));
        assert_eq!(value("zip", "75001"), json!("75001"), "a string parameter stays a string");
        assert_eq!(value("metric", "true"), json!(true));
        assert_eq!(value("metric", "False"), json!(false));
        assert_eq!(value("hours", "[1, 2]"), json!([1, 2]));
        assert_eq!(value("hours", "[1,2]"), json!([1, 2]));
        assert_eq!(value("ratio", "0.5"), json!(0.5));
        assert_eq!(value("ratio", "None"), json!(null));
        assert_eq!(value("city", "{\"a\": 1}"), json!("{\"a\": 1}"));
    }

    #[test]
    fn undeclared_values_become_json_only_when_they_render_back_identically() {
        let value = |raw: &str| convert_undeclared(raw);
        assert_eq!(value("3"), json!(3));
        assert_eq!(value("-2.5"), json!(-2.5));
        assert_eq!(value("True"), json!(true));
        assert_eq!(value("None"), json!(null));
        assert_eq!(value("{\"a\": [1, \"x\"]}"), json!({"a": [1, "x"]}));
        assert_eq!(value("[]"), json!([]));
        // These would come back differently, so they stay text.
        assert_eq!(value("true"), json!("true"));
        assert_eq!(value("null"), json!("null"));
        assert_eq!(value("{\"a\":1}"), json!("{\"a\":1}"));
        assert_eq!(value("1e3"), json!("1e3"));
        assert_eq!(value("007"), json!("007"));
        assert_eq!(value("\"quoted\""), json!("\"quoted\""));
        assert_eq!(value("Paris"), json!("Paris"));
    }

    /// Rendering the parsed call in the next turn gives back what the model wrote.
    #[test]
    fn parsed_calls_render_back_identically() {
        let source = include_str!("../../../fixtures/models/tiny-vl/chat_template.jinja");
        let template = ChatTemplate::new(source).unwrap();
        let generated = "<tool_call>\n<function=run>\n<parameter=cmd>\nls -la\n</parameter>\n<parameter=n>\n12\n</parameter>\n<parameter=opts>\n{\"deep\": True, \"x\": [1, 2.5]}\n</parameter>\n<parameter=flag>\nFalse\n</parameter>\n<parameter=note>\n  spaced  \n</parameter>\n</function>\n</tool_call>";
        let parsed = parse(generated, None);
        assert_eq!(parsed.calls.len(), 1);
        let mut answer = Message::assistant("");
        answer.tool_calls = Some(
            parsed
                .calls
                .into_iter()
                .map(|function| ToolCall { id: None, r#type: "function".into(), function })
                .collect(),
        );
        let messages = [Message::user("hi"), answer];
        let rendered = template.render(&RenderRequest::new(&messages)).unwrap();
        assert!(rendered.contains(&format!("<think>\n\n</think>\n\n{generated}<|im_end|>")), "{rendered}");
    }

    /// Feeds `text` in pieces cut at every `step` bytes (on character boundaries).
    fn stream(text: &str, step: usize, tools: Option<&[Value]>) -> Vec<Segment> {
        let mut parser = ToolCallParser::new(tools);
        let mut out = Vec::new();
        let mut start = 0;
        while start < text.len() {
            let mut end = (start + step).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            for segment in parser.push(&text[start..end]) {
                push_segment(&mut out, segment);
            }
            start = end;
        }
        for segment in parser.finish() {
            push_segment(&mut out, segment);
        }
        out
    }

    /// Joins consecutive text segments, which the stream may split anywhere.
    fn push_segment(out: &mut Vec<Segment>, segment: Segment) {
        match segment {
            Segment::Text(text) => push_text(out, text),
            call => out.push(call),
        }
    }

    /// Qwen3's (Hermes-style) JSON calls.
    const JSON_CALL: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>";

    #[test]
    fn json_calls_parse_like_xml_ones() {
        let parsed = parse(&format!("Let me check.\n\n{JSON_CALL}\n{JSON_CALL}"), None);
        assert_eq!(parsed.content, "Let me check.");
        assert_eq!(parsed.calls, vec![call("get_weather", json!({"city": "Paris", "days": 3})); 2]);
        // Arguments as a JSON-encoded string, as OpenAI sends them back.
        let encoded = "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}\n</tool_call>";
        assert_eq!(parse(encoded, None).calls, vec![call("f", json!({"a": 1}))]);
        for bad in [
            "<tool_call>\n{\"name\": \"\", \"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"arguments\": {}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"f\", \"arguments\": [1]}\n</tool_call>",
            "<tool_call>\n{\"name\": \"f\", \"extra\": 1}\n</tool_call>",
            "<tool_call>\n{\"name\": \"f\"\n</tool_call>",
        ] {
            let parsed = parse(bad, None);
            assert!(parsed.calls.is_empty(), "{bad:?}");
            assert_eq!(parsed.content, bad);
        }
    }

    #[test]
    fn streaming_gives_the_same_result_however_the_text_is_split() {
        let texts = [
            format!("Checking the weather… \n\n{WEATHER}"),
            format!("{JSON_CALL}\n{WEATHER} and {JSON_CALL}"),
            format!("{WEATHER}\n{WEATHER}"),
            format!("Before <tool_call>\n<function=f>\nbroken</tool_call> after {WEATHER} tail"),
            "No calls here, just < and <tool and <tool_cal".to_owned(),
            WEATHER[..WEATHER.len() - 3].to_owned(),
            "émoji 🙂 <tool_call>".to_owned(),
        ];
        for text in &texts {
            let whole = parse(text, None);
            let mut expected = Vec::new();
            for step in [1, 2, 3, 5, 7, 11, 64, 4096] {
                let segments = stream(text, step, None);
                let content: String = segments
                    .iter()
                    .filter_map(|s| match s {
                        Segment::Text(t) => Some(t.as_str()),
                        Segment::Call(_) => None,
                    })
                    .collect();
                let calls: Vec<_> = segments
                    .iter()
                    .filter_map(|s| match s {
                        Segment::Call(c) => Some(c.clone()),
                        Segment::Text(_) => None,
                    })
                    .collect();
                assert_eq!(content, whole.content, "{text:?} in steps of {step}");
                assert_eq!(calls, whole.calls, "{text:?} in steps of {step}");
                if step == 1 {
                    expected = segments;
                } else {
                    assert_eq!(segments, expected, "{text:?} in steps of {step}");
                }
            }
        }
    }

    #[test]
    fn streaming_releases_text_before_a_call_and_holds_only_a_possible_tag() {
        let mut parser = ToolCallParser::new(None);
        assert_eq!(parser.push("Sure"), vec![Segment::Text("Sure".into())]);
        assert_eq!(parser.push(", one moment.\n\n<tool"), vec![Segment::Text(", one moment.".into())]);
        assert_eq!(parser.push("_call>\n<function=now>\n"), vec![]);
        assert_eq!(parser.push("</function>\n</tool_call>"), vec![Segment::Call(call("now", json!({})))]);
        assert_eq!(parser.push("\n"), vec![]);
        assert_eq!(parser.finish(), vec![Segment::Text("\n".into())]);

        let mut parser = ToolCallParser::new(None);
        assert_eq!(parser.push("x <tool"), vec![Segment::Text("x".into())]);
        assert_eq!(parser.push("box"), vec![Segment::Text(" <toolbox".into())], "not a tag after all");
    }
}
