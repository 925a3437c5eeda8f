//! Chat templates: render a model's own Jinja chat template exactly as Hugging Face transformers does.
//!
//! Models ship their prompt format as a Jinja template (`chat_template.jinja` or the `chat_template` entry of
//! `tokenizer_config.json`). Prompts must match what the model was trained on byte for byte, so this module
//! reproduces the environment of transformers' `apply_chat_template(..., tokenize=False)`:
//!
//! * `trim_blocks` and `lstrip_blocks` on, loop controls (`break`/`continue`), no auto-escaping;
//! * `raise_exception(msg)`, `strftime_now(fmt)` and a `tojson` filter that is Python's
//!   `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`;
//! * Python string/dict/list methods (`str.split`, `dict.items`, ...), and Python's `str()` wherever a value
//!   is printed or passed through the `string` filter (`True`, `None`, `1e-07`);
//! * the context transformers passes: `messages` (with `None` fields dropped and `reasoning_content` aliased),
//!   `tools`, `documents`, `add_generation_prompt`, the tokenizer's special tokens (`eos_token`, ...),
//!   `enable_thinking` only when set, and any other `chat_template_kwargs`.
//!
//! Known gaps: `strftime_now` formats the current time in UTC, where Python uses the local time zone; the `~`
//! operator prints booleans and `none` the Jinja way (`true`, `none`) rather than Python's `True`/`None`;
//! integers wider than 64 bits arriving through JSON become floats.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{from_args, Kwargs, Rest, Serde, ValueKind, ValueOrKwargs};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, Value};
use serde::de::Deserializer;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Map;

use crate::vision::{ImageInput, VideoInput};

/// What can go wrong finding, compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template source is not valid Jinja (as far as minijinja understands it).
    #[error("chat template `{name}` does not compile: {source:#}")]
    Syntax { name: String, source: minijinja::Error },

    /// The template itself called `raise_exception(message)`: the conversation is not one it accepts.
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),

    /// Rendering failed for another reason (undefined attribute, type error, ...).
    #[error("chat template failed to render: {0:#}")]
    Render(#[source] minijinja::Error),

    /// The model folder has neither `chat_template.jinja` nor a `chat_template` in `tokenizer_config.json`.
    #[error(
        "no chat template in {}: expected chat_template.jinja or a `chat_template` entry in tokenizer_config.json",
        .0.display()
    )]
    NotFound(PathBuf),

    /// The model has several named templates and none fits this request (no `default`, and no `tool_use`
    /// for a request with tools).
    #[error("the model has several chat templates but none named `default`; available: {}", .0.join(", "))]
    NoDefault(Vec<String>),

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// `tokenizer_config.json` exists but is not what transformers would accept.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    /// The request itself is inconsistent (e.g. `extra` overrides `messages`).
    #[error("invalid chat template request: {0}")]
    InvalidRequest(String),
}

/// A message as the OpenAI API and the Qwen templates know it.
///
/// Absent optional fields are left out of what the template sees, as transformers drops `None`-valued keys
/// before rendering: `message.reasoning_content is defined` is false, not "defined as none".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "MessageWire")]
pub struct Message {
    pub role: String,
    #[serde(skip_serializing_if = "MessageContent::is_null")]
    pub content: MessageContent,
    /// The model's thinking for an assistant turn. On input, `thinking` and `reasoning` are accepted as other
    /// names for it, as transformers accepts them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What clients send. Serde aliases would reject a message carrying both `reasoning_content` and
/// `reasoning` (some servers echo both), so each name gets its own field.
#[derive(Deserialize)]
struct MessageWire {
    role: String,
    #[serde(default)]
    content: MessageContent,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl From<MessageWire> for Message {
    fn from(wire: MessageWire) -> Self {
        Message {
            role: wire.role,
            content: wire.content,
            // transformers' order of preference.
            reasoning_content: wire.reasoning_content.or(wire.thinking).or(wire.reasoning),
            tool_calls: wire.tool_calls,
            tool_call_id: wire.tool_call_id,
            name: wire.name,
        }
    }
}

impl Message {
    /// A message with just a role and text content.
    pub fn new(role: impl Into<String>, content: impl Into<MessageContent>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            reasoning_content: None,
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }

    pub fn system(content: impl Into<MessageContent>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<MessageContent>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<MessageContent>) -> Self {
        Self::new("assistant", content)
    }

    /// A tool result answering the call with id `tool_call_id`.
    pub fn tool(content: impl Into<MessageContent>, tool_call_id: impl Into<String>) -> Self {
        Message { tool_call_id: Some(tool_call_id.into()), ..Self::new("tool", content) }
    }
}

/// A message body: plain text, a list of parts (text, images, videos), or nothing.
///
/// `Null` (JSON `null` or a missing `content`, as OpenAI sends for assistant turns that only call tools) is
/// hidden from the template, so it sees `content` as undefined exactly as it does under transformers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
    #[default]
    Null,
}

impl MessageContent {
    pub fn is_null(&self) -> bool {
        matches!(self, MessageContent::Null)
    }
}

impl From<&str> for MessageContent {
    fn from(text: &str) -> Self {
        MessageContent::Text(text.to_owned())
    }
}

impl From<String> for MessageContent {
    fn from(text: String) -> Self {
        MessageContent::Text(text)
    }
}

impl From<Vec<ContentPart>> for MessageContent {
    fn from(parts: Vec<ContentPart>) -> Self {
        MessageContent::Parts(parts)
    }
}

/// One part of a multi-part message.
///
/// `Image` and `Video` carry decoded pictures; the template sees them as `{"type": "image"}` /
/// `{"type": "video"}` (plus `"image"`/`"video"`: the file path when they were read from a file,
/// which also makes a saved conversation name its files). JSON input never produces them: any
/// part but a plain `{"type": "text", "text": ...}` (images, image URLs, videos, text parts with
/// extra keys) is kept as the raw JSON object, because templates test for keys (`'image' in
/// item`) and must see exactly what the client sent; turning a URL or path into pixels is the
/// caller's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentPart {
    Text { text: String },
    Image(ImageInput),
    Video(VideoInput),
    Other(Map<String, serde_json::Value>),
}

impl ContentPart {
    pub fn text(text: impl Into<String>) -> Self {
        ContentPart::Text { text: text.into() }
    }

    pub fn image(image: ImageInput) -> Self {
        ContentPart::Image(image)
    }

    pub fn video(video: VideoInput) -> Self {
        ContentPart::Video(video)
    }
}

impl Serialize for ContentPart {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ContentPart::Text { text } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("type", "text")?;
                map.serialize_entry("text", text)?;
                map.end()
            }
            ContentPart::Image(image) => {
                let path = image.path().map(|p| p.to_string_lossy());
                let mut map = serializer.serialize_map(Some(1 + path.is_some() as usize))?;
                map.serialize_entry("type", "image")?;
                if let Some(path) = path {
                    map.serialize_entry("image", &path)?;
                }
                map.end()
            }
            ContentPart::Video(video) => {
                let path = video.path().map(|p| p.to_string_lossy());
                let mut map = serializer.serialize_map(Some(1 + path.is_some() as usize))?;
                map.serialize_entry("type", "video")?;
                if let Some(path) = path {
                    map.serialize_entry("video", &path)?;
                }
                map.end()
            }
            ContentPart::Other(raw) => raw.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ContentPart {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let plain_text = raw.len() == 2 && raw.get("type").and_then(|t| t.as_str()) == Some("text");
        match raw.get("text") {
            Some(serde_json::Value::String(text)) if plain_text => {
                Ok(ContentPart::Text { text: text.clone() })
            }
            _ => Ok(ContentPart::Other(raw)),
        }
    }
}

/// A function call made by the assistant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default = "function_type")]
    pub r#type: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_owned()
}

/// The function name and arguments of a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// Normally a JSON object. OpenAI clients send it as a JSON-encoded string; such a string is parsed here
    /// (an empty one meaning no arguments) because the templates iterate `arguments|items`. A string that
    /// is not a JSON object stays a string.
    #[serde(
        default,
        deserialize_with = "deserialize_arguments",
        skip_serializing_if = "serde_json::Value::is_null"
    )]
    pub arguments: serde_json::Value,
}

fn deserialize_arguments<'de, D: Deserializer<'de>>(deserializer: D) -> Result<serde_json::Value, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(match value {
        serde_json::Value::String(text) if text.trim().is_empty() => serde_json::Value::Object(Map::new()),
        serde_json::Value::String(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(parsed @ serde_json::Value::Object(_)) => parsed,
            _ => serde_json::Value::String(text),
        },
        other => other,
    })
}

/// Everything one rendering needs besides the template.
#[derive(Debug, Clone, Default)]
pub struct RenderRequest<'a> {
    pub messages: &'a [Message],
    /// JSON-schema tool definitions, passed to the template as they are (key order matters for `tojson`).
    pub tools: Option<&'a [serde_json::Value]>,
    /// Append the header that makes the model start an assistant turn.
    pub add_generation_prompt: bool,
    /// Passed as the `enable_thinking` variable only when set; the Qwen3.5 template disables thinking when it
    /// is absent.
    pub enable_thinking: Option<bool>,
    /// Other `chat_template_kwargs` (e.g. `add_vision_id`). They override the tokenizer's special tokens of
    /// the same name, as in transformers.
    pub extra: Map<String, serde_json::Value>,
}

impl<'a> RenderRequest<'a> {
    pub fn new(messages: &'a [Message]) -> Self {
        RenderRequest { messages, ..Default::default() }
    }
}

/// A compiled chat template (or the set of named templates a model ships), ready to render many times.
pub struct ChatTemplate {
    env: Environment<'static>,
    names: Vec<String>,
    special_tokens: Map<String, serde_json::Value>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("names", &self.names)
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

const DEFAULT_NAME: &str = "default";
const TOOL_USE_NAME: &str = "tool_use";

impl ChatTemplate {
    /// Compiles one template source.
    pub fn new(source: &str) -> Result<Self, ChatTemplateError> {
        Self::from_named(vec![(DEFAULT_NAME.to_owned(), source.to_owned())], Map::new())
    }

    /// Finds and compiles the template of a Hugging Face model folder, the way transformers loads it:
    /// `chat_template.jinja` (plus any `additional_chat_templates/*.jinja`) first; otherwise the
    /// `chat_template` of `tokenizer_config.json`, a string or a list of `{name, template}`. Special tokens
    /// (`eos_token`, `pad_token`, ...) in `tokenizer_config.json` become template variables.
    pub fn from_model_dir(dir: &Path) -> Result<Self, ChatTemplateError> {
        let config_path = dir.join("tokenizer_config.json");
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(map)) => Some(map),
                Ok(_) => {
                    return Err(ChatTemplateError::Config {
                        path: config_path,
                        message: "expected a JSON object".to_owned(),
                    })
                }
                Err(err) => {
                    return Err(ChatTemplateError::Config {
                        path: config_path,
                        message: format!("invalid JSON: {err}"),
                    })
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(ChatTemplateError::Io { path: config_path, source }),
        };

        // Template files take priority over the config, as in transformers' from_pretrained.
        let mut named = Vec::new();
        let main_file = dir.join("chat_template.jinja");
        if main_file.is_file() {
            named.push((DEFAULT_NAME.to_owned(), read_template_file(&main_file)?));
        }
        let extra_dir = dir.join("additional_chat_templates");
        if extra_dir.is_dir() {
            let entries = std::fs::read_dir(&extra_dir)
                .map_err(|source| ChatTemplateError::Io { path: extra_dir.clone(), source })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|ext| ext == "jinja"))
                .collect();
            files.sort();
            for file in files {
                let name = file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                named.push((name, read_template_file(&file)?));
            }
        }
        if named.is_empty() {
            if let Some(config) = &config {
                named = config_templates(config, &config_path)?;
            }
        }
        if named.is_empty() {
            return Err(ChatTemplateError::NotFound(dir.to_path_buf()));
        }
        let special_tokens = config.as_ref().map(special_tokens_of).unwrap_or_default();
        Self::from_named(named, special_tokens)
    }

    fn from_named(
        named: Vec<(String, String)>,
        special_tokens: Map<String, serde_json::Value>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = build_environment();
        let mut names = Vec::with_capacity(named.len());
        for (name, source) in named {
            let source = rewrite_generation_tags(&source);
            env.add_template_owned(name.clone(), source)
                .map_err(|source| ChatTemplateError::Syntax { name: name.clone(), source })?;
            names.push(name);
        }
        Ok(ChatTemplate { env, names, special_tokens })
    }

    /// Renders a conversation to the prompt text.
    pub fn render(&self, req: &RenderRequest) -> Result<String, ChatTemplateError> {
        let name = self.pick_template(req.tools.is_some())?;
        let template = self.env.get_template(name).map_err(ChatTemplateError::Render)?;
        let context = Value::from(Serde(self.context(req)?));
        template.render(context).map_err(|err| match raised_message(&err) {
            Some(message) => ChatTemplateError::Raised(message),
            None => ChatTemplateError::Render(err),
        })
    }

    /// Same choice as transformers' `get_chat_template`: `tool_use` when tools are passed, else `default`.
    fn pick_template(&self, has_tools: bool) -> Result<&str, ChatTemplateError> {
        let has = |wanted: &str| self.names.iter().any(|n| n == wanted);
        if has_tools && has(TOOL_USE_NAME) {
            Ok(TOOL_USE_NAME)
        } else if has(DEFAULT_NAME) {
            Ok(DEFAULT_NAME)
        } else {
            let mut names = self.names.clone();
            names.sort();
            Err(ChatTemplateError::NoDefault(names))
        }
    }

    fn context(&self, req: &RenderRequest) -> Result<Map<String, serde_json::Value>, ChatTemplateError> {
        const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];
        if let Some(key) = req.extra.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(ChatTemplateError::InvalidRequest(format!(
                "`{key}` cannot be passed as an extra template variable"
            )));
        }
        let mut messages = Vec::with_capacity(req.messages.len());
        for message in req.messages {
            let value = serde_json::to_value(message)
                .map_err(|err| ChatTemplateError::InvalidRequest(format!("unserializable message: {err}")))?;
            messages.push(alias_reasoning(value));
        }
        let mut ctx = self.special_tokens.clone();
        ctx.extend(req.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(enable) = req.enable_thinking {
            ctx.insert("enable_thinking".to_owned(), enable.into());
        }
        ctx.insert("messages".to_owned(), serde_json::Value::Array(messages));
        ctx.insert(
            "tools".to_owned(),
            req.tools.map_or(serde_json::Value::Null, |t| serde_json::Value::Array(t.to_vec())),
        );
        ctx.insert("documents".to_owned(), serde_json::Value::Null);
        ctx.insert("add_generation_prompt".to_owned(), req.add_generation_prompt.into());
        Ok(ctx)
    }
}

/// transformers copies the reasoning under `thinking` too (first key), for templates that read that name.
fn alias_reasoning(message: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Object(map) = message else {
        return message;
    };
    let Some(reasoning) = map.get("reasoning_content").cloned() else {
        return serde_json::Value::Object(map);
    };
    let mut aliased = Map::with_capacity(map.len() + 1);
    aliased.insert("thinking".to_owned(), reasoning);
    aliased.extend(map);
    serde_json::Value::Object(aliased)
}

/// Python's `open(path, encoding="utf-8").read()` translates `\r\n` and `\r` to `\n`.
fn read_template_file(path: &Path) -> Result<String, ChatTemplateError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ChatTemplateError::Io { path: path.to_path_buf(), source })?;
    Ok(if text.contains('\r') { text.replace("\r\n", "\n").replace('\r', "\n") } else { text })
}

fn config_templates(
    config: &Map<String, serde_json::Value>,
    path: &Path,
) -> Result<Vec<(String, String)>, ChatTemplateError> {
    let invalid =
        |message: &str| ChatTemplateError::Config { path: path.to_path_buf(), message: message.to_owned() };
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::String(source)) => Ok(vec![(DEFAULT_NAME.to_owned(), source.clone())]),
        Some(serde_json::Value::Array(entries)) => entries
            .iter()
            .map(|entry| {
                let name = entry.get("name").and_then(|v| v.as_str());
                let template = entry.get("template").and_then(|v| v.as_str());
                match (name, template) {
                    (Some(name), Some(template)) => Ok((name.to_owned(), template.to_owned())),
                    _ => Err(invalid("`chat_template` list entries need string `name` and `template`")),
                }
            })
            .collect(),
        Some(_) => Err(invalid("`chat_template` must be a string or a list of {name, template}")),
    }
}

/// The `*_token` entries transformers turns into special tokens (plain strings or `AddedToken` objects); they
/// reach the template as variables through `special_tokens_map`.
fn special_tokens_of(config: &Map<String, serde_json::Value>) -> Map<String, serde_json::Value> {
    config
        .iter()
        .filter(|(key, _)| key.ends_with("_token"))
        .filter_map(|(key, value)| {
            let content = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(obj) => obj.get("content")?.as_str()?.to_owned(),
                _ => return None,
            };
            Some((key.clone(), serde_json::Value::String(content)))
        })
        .collect()
}

/// transformers registers a `{% generation %}...{% endgeneration %}` block (to track assistant tokens) that
/// renders its body unchanged. minijinja has no such tag, so it becomes an always-true `if`, which keeps the
/// whitespace-control markers and therefore the exact whitespace behaviour.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else { break };
        let inner = &tag[2..end];
        let (open_mark, body) = split_marker_start(inner);
        let (body, close_mark) = split_marker_end(body);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(keyword) => {
                let _ = write!(out, "{{%{open_mark} {keyword} {close_mark}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn split_marker_start(s: &str) -> (&str, &str) {
    match s.as_bytes().first() {
        Some(b'-' | b'+') => (&s[..1], &s[1..]),
        _ => ("", s),
    }
}

fn split_marker_end(s: &str) -> (&str, &str) {
    match s.as_bytes().last() {
        Some(b'-' | b'+') => (&s[..s.len() - 1], &s[s.len() - 1..]),
        _ => (s, ""),
    }
}

/// The error `raise_exception` attaches, so a template's own message can be told apart from engine errors.
#[derive(Debug)]
struct TemplateRaised(String);

impl std::fmt::Display for TemplateRaised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateRaised {}

fn raised_message(err: &Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(raised) = e.downcast_ref::<TemplateRaised>() {
            return Some(raised.0.clone());
        }
        current = e.source();
    }
    None
}

fn build_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    // minijinja picks auto-escaping from the template name; transformers' sandbox never escapes.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(|out, _state, value| {
        match value.as_str() {
            Some(s) => out.write_str(s)?,
            None => out.write_str(&py::str_of(value))?,
        }
        Ok(())
    });
    env.set_unknown_method_callback(py::method);
    env.add_filter("tojson", tojson_filter);
    env.add_filter("string", |value: &Value| -> Value {
        match value.kind() {
            ValueKind::String => value.clone(),
            _ => Value::from(py::str_of(value)),
        }
    });
    env.add_filter("trim", |value: &Value, chars: Option<Value>| -> Result<Value, Error> {
        let text = match value.as_str() {
            Some(s) => s.to_owned(),
            None => py::str_of(value),
        };
        let trimmed = py::strip(&text, chars.as_ref(), py::Side::Both)?;
        Ok(if value.is_safe() { Value::from_safe_string(trimmed.to_owned()) } else { Value::from(trimmed) })
    });
    env.add_function("raise_exception", |message: Value| -> Result<Value, Error> {
        let message = message.as_str().map(str::to_owned).unwrap_or_else(|| py::str_of(&message));
        Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(TemplateRaised(message)))
    });
    env.add_function("strftime_now", |state: &State, format: String| -> Result<Value, Error> {
        let kwargs = Kwargs::from_iter([("format", Value::from(format))]);
        minijinja_contrib::filters::datetimeformat(state, minijinja_contrib::globals::now(), kwargs)
            .map(Value::from)
    });
    env.add_function("cycler", minijinja_contrib::globals::cycler);
    env.add_function("joiner", minijinja_contrib::globals::joiner);
    env
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, positional
/// arguments in that order.
fn tojson_filter(value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    let args = args.into_values();
    let (positional, kwargs): (&[Value], Kwargs) = from_args(&args)?;
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(Error::from(ErrorKind::TooManyArguments));
    }
    let mut slots: [Option<Value>; 4] = Default::default();
    for (slot, arg) in slots.iter_mut().zip(positional) {
        *slot = Some(arg.clone());
    }
    for (slot, name) in slots.iter_mut().zip(NAMES) {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            if slot.is_some() {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson got multiple values for `{name}`"),
                ));
            }
            *slot = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = slots;
    let opts = py::JsonOptions::new(
        ensure_ascii.is_some_and(|v| v.is_true()),
        indent.filter(|v| !v.is_none()),
        separators.filter(|v| !v.is_none()),
        sort_keys.is_some_and(|v| v.is_true()),
    )?;
    Ok(Value::from(py::dumps(value, &opts)?))
}

/// Python semantics for the values templates print, compare and serialise.
mod py {
    use super::*;

    /// `str.isspace()`: Rust's `char::is_whitespace` plus the ASCII information separators 0x1c..=0x1f.
    pub fn is_space(c: char) -> bool {
        matches!(c, '\t'..='\r' | '\x1c'..='\x20' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}')
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}')
    }

    #[derive(Clone, Copy)]
    pub enum Side {
        Left,
        Right,
        Both,
    }

    /// `str.strip/lstrip/rstrip(chars)`; `chars` none means whitespace.
    pub fn strip<'s>(s: &'s str, chars: Option<&Value>, side: Side) -> Result<&'s str, Error> {
        let set: Option<Vec<char>> = match chars {
            None => None,
            Some(v) if v.is_none() || v.is_undefined() => None,
            Some(v) => match v.as_str() {
                Some(chars) => Some(chars.chars().collect()),
                None => return Err(Error::new(ErrorKind::InvalidOperation, "strip arg must be None or str")),
            },
        };
        let matches = |c: char| match &set {
            None => is_space(c),
            Some(set) => set.contains(&c),
        };
        Ok(match side {
            Side::Left => s.trim_start_matches(matches),
            Side::Right => s.trim_end_matches(matches),
            Side::Both => s.trim_matches(matches),
        })
    }

    /// `str.split(None, maxsplit)`.
    pub fn split_whitespace(s: &str, maxsplit: Option<usize>) -> Vec<&str> {
        let mut parts = Vec::new();
        let mut rest = s.trim_start_matches(is_space);
        while !rest.is_empty() {
            if maxsplit == Some(parts.len()) {
                parts.push(rest);
                break;
            }
            match rest.find(is_space) {
                Some(i) => {
                    parts.push(&rest[..i]);
                    rest = rest[i..].trim_start_matches(is_space);
                }
                None => {
                    parts.push(rest);
                    break;
                }
            }
        }
        parts
    }

    /// Python string methods whose whitespace rules differ from Rust's, then minijinja-contrib's
    /// Python compatibility layer for the rest.
    pub fn method(state: &mut State, value: &Value, name: &str, args: &[Value]) -> Result<Value, Error> {
        if let Some(s) = value.as_str() {
            let side = match name {
                "strip" => Some(Side::Both),
                "lstrip" => Some(Side::Left),
                "rstrip" => Some(Side::Right),
                _ => None,
            };
            if let Some(side) = side {
                let (chars,): (Option<Value>,) = from_args(args)?;
                return Ok(Value::from(strip(s, chars.as_ref(), side)?));
            }
            if name == "split" && args.first().is_none_or(|sep| sep.is_none()) {
                let (_, maxsplit): (Option<Value>, Option<i64>) = from_args(args)?;
                let maxsplit = maxsplit.and_then(|n| usize::try_from(n).ok());
                return Ok(Value::from_iter(split_whitespace(s, maxsplit).into_iter().map(Value::from)));
            }
        }
        minijinja_contrib::pycompat::unknown_method_callback(state, value, name, args)
    }

    /// `float.__repr__`: shortest round-trip digits, exponent form below 1e-4 and from 1e16 on.
    pub fn float_repr(x: f64) -> String {
        if x.is_nan() {
            return "nan".to_owned();
        }
        if x.is_infinite() {
            return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
        }
        let sign = if x.is_sign_negative() { "-" } else { "" };
        if x == 0.0 {
            return format!("{sign}0.0");
        }
        let sci = format!("{:e}", x.abs());
        let (mantissa, exp) = sci.split_once('e').expect("LowerExp always has an exponent");
        let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        let decpt = exp + 1;
        if !(-4 < decpt && decpt <= 16) {
            let (first, rest) = digits.split_at(1);
            let dot = if rest.is_empty() { String::new() } else { format!(".{rest}") };
            let esign = if exp < 0 { '-' } else { '+' };
            format!("{sign}{first}{dot}e{esign}{:02}", exp.unsigned_abs())
        } else if decpt <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
        } else {
            let decpt = decpt as usize;
            if decpt >= digits.len() {
                format!("{sign}{digits}{}.0", "0".repeat(decpt - digits.len()))
            } else {
                format!("{sign}{}.{}", &digits[..decpt], &digits[decpt..])
            }
        }
    }

    fn number_str(value: &Value) -> String {
        if value.is_integer() {
            value.to_string()
        } else {
            f64::try_from(value.clone()).map(float_repr).unwrap_or_else(|_| value.to_string())
        }
    }

    /// Python's `str(value)`, which Jinja2 uses to print values and for the `string` filter.
    pub fn str_of(value: &Value) -> String {
        match value.kind() {
            ValueKind::Undefined => String::new(),
            ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
            _ => repr(value),
        }
    }

    /// Python's `repr(value)` for the JSON-like values templates handle.
    pub fn repr(value: &Value) -> String {
        match value.kind() {
            ValueKind::Undefined => "Undefined".to_owned(),
            ValueKind::None => "None".to_owned(),
            ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_owned(),
            ValueKind::Number => number_str(value),
            ValueKind::String => str_repr(value.as_str().unwrap_or_default()),
            ValueKind::Seq => {
                let items: Vec<String> =
                    value.try_iter().map(|it| it.map(|v| repr(&v)).collect()).unwrap_or_default();
                format!("[{}]", items.join(", "))
            }
            ValueKind::Map => {
                let items: Vec<String> = value
                    .try_iter()
                    .map(|keys| {
                        keys.map(|k| {
                            let v = value.get_item(&k).unwrap_or_default();
                            format!("{}: {}", repr(&k), repr(&v))
                        })
                        .collect()
                    })
                    .unwrap_or_default();
                format!("{{{}}}", items.join(", "))
            }
            _ => value.to_string(),
        }
    }

    /// Approximates `str.isprintable()` without Unicode tables: separators, format characters and private
    /// use characters that show up in practice are treated as unprintable.
    fn is_printable(c: char) -> bool {
        !matches!(c,
            '\0'..='\x1f' | '\x7f'..='\u{a0}' | '\u{ad}' | '\u{1680}' | '\u{180e}' | '\u{2000}'..='\u{200f}'
            | '\u{2028}'..='\u{202f}' | '\u{205f}'..='\u{206f}' | '\u{3000}' | '\u{e000}'..='\u{f8ff}'
            | '\u{feff}' | '\u{fff9}'..='\u{fffb}' | '\u{f0000}'..='\u{10ffff}')
    }

    fn str_repr(s: &str) -> String {
        let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
        let mut out = String::with_capacity(s.len() + 2);
        out.push(quote);
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c == quote => {
                    out.push('\\');
                    out.push(c);
                }
                c if is_printable(c) => out.push(c),
                c if (c as u32) < 0x100 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if (c as u32) < 0x10000 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
        }
        out.push(quote);
        out
    }

    pub struct JsonOptions {
        ensure_ascii: bool,
        indent: Option<String>,
        item_separator: String,
        key_separator: String,
        sort_keys: bool,
    }

    impl JsonOptions {
        pub fn new(
            ensure_ascii: bool,
            indent: Option<Value>,
            separators: Option<Value>,
            sort_keys: bool,
        ) -> Result<Self, Error> {
            let indent = match indent {
                None => None,
                Some(v) => Some(match v.as_str() {
                    Some(s) => s.to_owned(),
                    // json.dumps repeats a space `indent` times (`True` counting as 1, negatives as 0).
                    None if v.kind() == ValueKind::Bool => if v.is_true() { " " } else { "" }.to_owned(),
                    None if v.is_integer() => {
                        let n = i64::try_from(v.clone())?;
                        " ".repeat(usize::try_from(n).unwrap_or(0))
                    }
                    None => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson indent must be an int or str",
                        ))
                    }
                }),
            };
            // json.dumps drops the space after "," when indenting, so lines carry no trailing blanks.
            let (item_separator, key_separator) = match separators {
                None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
                None => (", ".to_owned(), ": ".to_owned()),
                Some(pair) => {
                    let parts: Vec<Value> = pair.try_iter()?.collect();
                    match parts.as_slice() {
                        [item, key] if item.as_str().is_some() && key.as_str().is_some() => (
                            item.as_str().unwrap_or_default().to_owned(),
                            key.as_str().unwrap_or_default().to_owned(),
                        ),
                        _ => {
                            return Err(Error::new(
                                ErrorKind::InvalidOperation,
                                "tojson separators must be a pair of strings",
                            ))
                        }
                    }
                }
            };
            Ok(JsonOptions { ensure_ascii, indent, item_separator, key_separator, sort_keys })
        }

        fn newline(&self, out: &mut String, level: usize) {
            if let Some(indent) = &self.indent {
                out.push('\n');
                for _ in 0..level {
                    out.push_str(indent);
                }
            }
        }
    }

    /// `json.dumps(value, ...)` with Python's escaping, number formatting and layout.
    pub fn dumps(value: &Value, opts: &JsonOptions) -> Result<String, Error> {
        let mut out = String::new();
        write_json(&mut out, value, opts, 0)?;
        Ok(out)
    }

    fn not_serializable(value: &Value) -> Error {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("Object of type {} is not JSON serializable", value.kind()),
        )
    }

    fn write_json(out: &mut String, value: &Value, opts: &JsonOptions, level: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
            ValueKind::Number => {
                let x = f64::try_from(value.clone())?;
                match x {
                    x if x.is_nan() => out.push_str("NaN"),
                    x if x == f64::INFINITY => out.push_str("Infinity"),
                    x if x == f64::NEG_INFINITY => out.push_str("-Infinity"),
                    x => out.push_str(&float_repr(x)),
                }
            }
            ValueKind::String => write_json_str(out, value.as_str().unwrap_or_default(), opts.ensure_ascii),
            ValueKind::Seq => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&opts.item_separator);
                    }
                    opts.newline(out, level + 1);
                    write_json(out, item, opts, level + 1)?;
                }
                opts.newline(out, level);
                out.push(']');
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((json_key(&key)?, item));
                }
                if entries.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if opts.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                out.push('{');
                for (i, (key, item)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&opts.item_separator);
                    }
                    opts.newline(out, level + 1);
                    write_json_str(out, key, opts.ensure_ascii);
                    out.push_str(&opts.key_separator);
                    write_json(out, item, opts, level + 1)?;
                }
                opts.newline(out, level);
                out.push('}');
            }
            _ => return Err(not_serializable(value)),
        }
        Ok(())
    }

    /// json.dumps turns non-string keys into their JSON spelling (`true`, `null`, `1.5`).
    fn json_key(key: &Value) -> Result<String, Error> {
        match key.kind() {
            ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
            ValueKind::None => Ok("null".to_owned()),
            ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
            ValueKind::Number => Ok(number_str(key)),
            _ => Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {}", key.kind()),
            )),
        }
    }

    fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// The images and videos attached to `messages`, in the order the chat template writes their
/// placeholders (message by message, part by part). Image or video parts given as raw JSON
/// (`ContentPart::Other`, e.g. an OpenAI `image_url`) are refused: their pixels are not here.
pub fn message_media(messages: &[Message]) -> crate::Result<(Vec<ImageInput>, Vec<VideoInput>)> {
    let (mut images, mut videos) = (Vec::new(), Vec::new());
    for (i, message) in messages.iter().enumerate() {
        let MessageContent::Parts(parts) = &message.content else { continue };
        for (j, part) in parts.iter().enumerate() {
            match part {
                ContentPart::Image(image) => images.push(image.clone()),
                ContentPart::Video(video) => videos.push(video.clone()),
                ContentPart::Other(raw) => {
                    // The Qwen3.5 template's tests: 'image' in item or 'image_url' in item or
                    // item.type == 'image' (then the same for video).
                    let kind = raw.get("type").and_then(|t| t.as_str()).unwrap_or("");
                    let media = ["image", "image_url", "video"].iter().any(|k| raw.contains_key(*k))
                        || kind == "image"
                        || kind == "video";
                    if media {
                        return Err(crate::Error::InvalidInput(format!(
                            "message {i}, content part {j}: an image or video given as raw JSON \
                             (type {kind:?}); attach it decoded, as ContentPart::Image or ContentPart::Video"
                        )));
                    }
                }
                ContentPart::Text { .. } => {}
            }
        }
    }
    Ok((images, videos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-7, "1e-07"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (2.5e20, "2.5e+20"),
            (-0.0, "-0.0"),
            (123.456, "123.456"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-1.5, "-1.5"),
            (100.0, "100.0"),
        ];
        for (x, want) in cases {
            assert_eq!(py::float_repr(x), want, "repr({x:e})");
        }
    }

    #[test]
    fn python_whitespace_split_and_strip() {
        assert_eq!(py::split_whitespace("  a b  c  ", Some(1)), ["a", "b  c  "]);
        assert_eq!(py::split_whitespace(" a b ", Some(0)), ["a b "]);
        assert_eq!(py::split_whitespace("\x1fa\x1cb", None), ["a", "b"]);
        assert!(py::split_whitespace(" \t ", None).is_empty());
        assert_eq!(py::strip("\x1f x \x1c", None, py::Side::Both).unwrap(), "x");
    }

    #[test]
    fn generation_tags_become_transparent_blocks() {
        let src = "a{% generation %}b{%- endgeneration -%}c{% if x %}{% endif %}";
        assert_eq!(rewrite_generation_tags(src), "a{% if true %}b{%- endif -%}c{% if x %}{% endif %}");
    }
}
