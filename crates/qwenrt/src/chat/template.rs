//! Finding, compiling and rendering a model's chat template.

use super::*;

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

/// Most bytes a rendered prompt may have: a 262k-token context holds about 1 MB of text.
const MAX_PROMPT_BYTES: usize = 64 << 20;

/// Collects a rendering, refusing to grow past [`MAX_PROMPT_BYTES`].
struct CappedWriter {
    bytes: Vec<u8>,
    full: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, piece: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + piece.len() > MAX_PROMPT_BYTES {
            self.full = true;
            return Err(std::io::Error::other("the rendered prompt is too large"));
        }
        self.bytes.extend_from_slice(piece);
        Ok(piece.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

pub(super) const DEFAULT_NAME: &str = "default";
pub(super) const TOOL_USE_NAME: &str = "tool_use";

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
        let config = match crate::files::read_to_string(&config_path, crate::files::CONFIG_LIMIT) {
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
        let mut out = CappedWriter { bytes: Vec::new(), full: false };
        let rendered = template.render_captured_to(context, &mut out).map(drop);
        if out.full {
            return Err(ChatTemplateError::Limit(format!(
                "its output passed {} MiB (far more than any context holds)",
                MAX_PROMPT_BYTES >> 20
            )));
        }
        if let Err(err) = rendered {
            return Err(match raised_message(&err) {
                Some(message) => ChatTemplateError::Raised(message),
                None if err.kind() == minijinja::ErrorKind::OutOfFuel => ChatTemplateError::Limit(format!(
                    "it ran more than {} steps (an endless or enormous loop?)",
                    super::python::TEMPLATE_FUEL
                )),
                None => ChatTemplateError::Render(err),
            });
        }
        // Every piece written came from a Rust string.
        String::from_utf8(out.bytes)
            .map_err(|e| ChatTemplateError::Limit(format!("its output is not UTF-8: {e}")))
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
pub(super) fn alias_reasoning(message: serde_json::Value) -> serde_json::Value {
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
pub(super) fn read_template_file(path: &Path) -> Result<String, ChatTemplateError> {
    let text = crate::files::read_to_string(path, crate::files::CONFIG_LIMIT)
        .map_err(|source| ChatTemplateError::Io { path: path.to_path_buf(), source })?;
    Ok(if text.contains('\r') { text.replace("\r\n", "\n").replace('\r', "\n") } else { text })
}

pub(super) fn config_templates(
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
pub(super) fn special_tokens_of(config: &Map<String, serde_json::Value>) -> Map<String, serde_json::Value> {
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
pub(super) fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // The close is searched after the open: in `{%}` the `%}` overlaps it.
        let Some(end) = tag[2..].find("%}").map(|i| i + 2) else {
            rest = tag;
            break;
        };
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

pub(super) fn split_marker_start(s: &str) -> (&str, &str) {
    match s.as_bytes().first() {
        Some(b'-' | b'+') => (&s[..1], &s[1..]),
        _ => ("", s),
    }
}

pub(super) fn split_marker_end(s: &str) -> (&str, &str) {
    match s.as_bytes().last() {
        Some(b'-' | b'+') => (&s[..s.len() - 1], &s[s.len() - 1..]),
        _ => (s, ""),
    }
}

/// The error `raise_exception` attaches, so a template's own message can be told apart from engine errors.
#[derive(Debug)]
pub(super) struct TemplateRaised(pub(super) String);

impl std::fmt::Display for TemplateRaised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateRaised {}

pub(super) fn raised_message(err: &Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(raised) = e.downcast_ref::<TemplateRaised>() {
            return Some(raised.0.clone());
        }
        current = e.source();
    }
    None
}
