//! The OpenAI request and response bodies, and their translation to and from qwenrt's types.
//!
//! Requests are read in parts ([`GenerationFields`] plus the endpoint's own fields) from one
//! parsed JSON value, so a field of the wrong type is reported by its name. Fields this server
//! does not know are ignored, as OpenAI clients send many.
//!
//! Images arrive as `image_url` parts (OpenAI) or `{"type": "image", "image": ...}` parts
//! (transformers); videos as `video_url` / `video` parts. [`resolve_media`] decodes `data:` URLs
//! (base64) and, only when the server was started with `--allow-local-files`, reads local paths
//! and `file://` URLs; remote URLs are never fetched.

use std::collections::HashMap;

use base64::Engine as _;
use qwenrt::chat::{ContentPart, FunctionCall, Message, MessageContent};
use qwenrt::sampling::SamplingOverrides;
use qwenrt::vision::{ImageInput, VideoInput, DEFAULT_MAX_INPUT_PIXELS};
use qwenrt::{ChatParams, Constraint, FinishReason, LanguageModel, SpeculativeOptions, TokenLogprob, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::errors::ApiError;

/// Sampling and length fields shared by `/v1/chat/completions` and `/v1/completions`.
///
/// `model` is not read: any name is accepted (as llama.cpp does), the server having one chat
/// model; `/v1/models` tells its name.
#[derive(Debug, Default, Deserialize)]
pub struct GenerationFields {
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// 0 or a negative value turns top-k off (vLLM uses -1).
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// Token id (as a string, JSON keys being strings) to a bias in [-100, 100].
    pub logit_bias: Option<HashMap<String, f32>>,
    /// `false` decodes this request one token per pass although the server was started with
    /// `--speculative`.
    pub speculative: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The fields of `/v1/chat/completions` besides [`GenerationFields`].
#[derive(Debug, Deserialize)]
pub struct ChatFields {
    pub messages: Vec<Message>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    /// Extra variables for the chat template; `enable_thinking` switches reasoning on or off.
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Most reasoning tokens before the thought is closed (Qwen's `thinking_budget`).
    #[serde(alias = "max_thinking_tokens")]
    pub thinking_budget: Option<i64>,
}

/// What the answer must be: OpenAI's `response_format`, and llama.cpp's top-level `json_schema`
/// and `grammar` (Lark, as llguidance reads it). Read by both generation endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct ConstraintFields {
    pub response_format: Option<Value>,
    pub json_schema: Option<Value>,
    pub grammar: Option<String>,
}

impl ConstraintFields {
    /// The constraint these fields ask for, checked against the model (a schema, regex or
    /// grammar that does not compile is a 400 naming the field).
    pub fn constraint(&self) -> Result<Option<(Constraint, &'static str)>, ApiError> {
        let mut asked = Vec::new();
        if let Some(format) = &self.response_format {
            let bad = |message: String| ApiError::invalid_request(message).with_param("response_format");
            match format.get("type").and_then(Value::as_str) {
                Some("text") => {}
                // llama.cpp also accepts a schema beside json_object.
                Some("json_object") => asked.push((
                    match format.get("schema") {
                        Some(schema) => Constraint::JsonSchema(schema.clone()),
                        None => Constraint::Json,
                    },
                    "response_format",
                )),
                Some("json_schema") => {
                    let schema = format
                        .pointer("/json_schema/schema")
                        .or_else(|| format.get("schema"))
                        .ok_or_else(|| bad("response_format json_schema needs json_schema.schema".into()))?;
                    asked.push((Constraint::JsonSchema(schema.clone()), "response_format"));
                }
                other => {
                    return Err(bad(format!(
                        "unknown response_format type {}: use text, json_object or json_schema",
                        other.map_or_else(|| "(none)".to_owned(), |t| format!("{t:?}"))
                    )))
                }
            }
        }
        if let Some(schema) = &self.json_schema {
            asked.push((Constraint::JsonSchema(schema.clone()), "json_schema"));
        }
        if let Some(grammar) = &self.grammar {
            asked.push((Constraint::Grammar(grammar.clone()), "grammar"));
        }
        if asked.len() > 1 {
            let fields: Vec<&str> = asked.iter().map(|(_, field)| *field).collect();
            return Err(ApiError::invalid_request(format!(
                "give one of response_format, json_schema and grammar, not {}",
                fields.join(" and ")
            ))
            .with_param(fields[1]));
        }
        Ok(asked.pop())
    }
}

/// Compiles a constraint before the request is queued; its errors name the request field.
pub fn check_constraint(lm: &LanguageModel, constraint: &Constraint, field: &str) -> Result<(), ApiError> {
    lm.check_constraint(constraint).map_err(|e| ApiError::invalid_request(e.to_string()).with_param(field))
}

/// The fields of `/v1/completions` besides [`GenerationFields`].
#[derive(Debug, Deserialize)]
pub struct CompletionFields {
    pub prompt: Value,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
}

/// Most alternatives per token OpenAI allows in `top_logprobs`.
pub const MAX_TOP_LOGPROBS: i64 = 20;

impl GenerationFields {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    /// Refuses what cannot be served before any work is done.
    pub fn check_supported(&self) -> Result<(), ApiError> {
        match self.n {
            Some(n) if n != 1 => {
                Err(ApiError::invalid_request(format!("only n=1 is supported, got n={n}")).with_param("n"))
            }
            _ => Ok(()),
        }
    }

    /// The model's defaults with these fields applied, for a prompt of `prompt_len` tokens
    /// (already checked to fit) in a context of `max_context`. Without a token limit the answer
    /// may fill the context; a larger limit is lowered to what fits, as llama.cpp does.
    pub fn params(
        &self,
        lm: &LanguageModel,
        prompt_len: usize,
        max_context: usize,
        speculative: Option<&SpeculativeOptions>,
    ) -> Result<ChatParams, ApiError> {
        let room = max_context.saturating_sub(prompt_len);
        let mut params = lm.default_params();
        params.max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(n) if n < 1 => {
                return Err(ApiError::invalid_request(format!("max_tokens must be at least 1, got {n}"))
                    .with_param("max_tokens"))
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(room),
            None => room,
        };
        let s = &mut params.sampling;
        SamplingOverrides {
            temperature: self.temperature,
            top_p: self.top_p,
            // 0 or negative: off.
            top_k: self.top_k.map(|k| usize::try_from(k).unwrap_or(0)),
            min_p: self.min_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repetition_penalty: self.repetition_penalty,
        }
        .apply_to(s);
        // Negative seeds are valid in the API; any 64 bits do for the generator.
        s.seed = self.seed.map(|seed| seed as u64);
        for (key, &bias) in self.logit_bias.iter().flatten() {
            let bad = |why: &str| {
                ApiError::invalid_request(format!("logit_bias {key:?}: {why}")).with_param("logit_bias")
            };
            let id: u32 = key.trim().parse().map_err(|_| bad("keys must be token ids"))?;
            if id as usize >= lm.model.vocab_size() {
                return Err(bad(&format!("the vocabulary has {} tokens", lm.model.vocab_size())));
            }
            if !(-100.0..=100.0).contains(&bias) {
                return Err(bad("biases must be between -100 and 100"));
            }
            // As with OpenAI, -100 bans the token outright.
            s.logit_bias.push((id, if bias <= -100.0 { f32::NEG_INFINITY } else { bias }));
        }
        params.stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop.clone()],
            Some(Stop::Many(stops)) => stops.clone(),
        };
        params.speculative = match (self.speculative, speculative) {
            (Some(true), None) => {
                return Err(ApiError::invalid_request(
                    "speculative: the server was started without --speculative",
                )
                .with_param("speculative"))
            }
            (Some(false), _) => None,
            (_, server) => server.cloned(),
        };
        params.validate().map_err(|e| ApiError::invalid_request(e.to_string()))?;
        Ok(params)
    }
}

/// How `tool_choice` shapes the prompt and the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// Tools are offered; the model decides.
    Auto,
    /// Tools are offered and the answer is one or more calls (constrained).
    Required,
    /// Tools are left out of the prompt.
    None,
    /// Only this function is offered, and the answer calls it (constrained).
    Function(String),
}

impl ChatFields {
    pub fn tool_choice(&self) -> Result<ToolChoice, ApiError> {
        let bad = |message: String| ApiError::invalid_request(message).with_param("tool_choice");
        let choice = match &self.tool_choice {
            None => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                "none" => ToolChoice::None,
                other => {
                    return Err(bad(format!(
                        "unknown tool_choice {other:?}: use auto, none, required or a function"
                    )))
                }
            },
            Some(value) => match value.pointer("/function/name").and_then(Value::as_str) {
                Some(name) => ToolChoice::Function(name.to_owned()),
                None => return Err(bad(
                    "tool_choice must be a string or {\"type\": \"function\", \"function\": {\"name\": …}}"
                        .into(),
                )),
            },
        };
        if let ToolChoice::Function(name) = &choice {
            if !self.tool_names().any(|n| n == name) {
                return Err(bad(format!(
                    "tool_choice names the function {name:?}, which is not among the tools"
                )));
            }
        }
        Ok(choice)
    }

    fn tool_names(&self) -> impl Iterator<Item = &str> {
        self.tools
            .iter()
            .flatten()
            .filter_map(|tool| tool.get("function").unwrap_or(tool).get("name").and_then(Value::as_str))
    }

    /// The tools to render into the prompt (and to parse calls against): `None` when there are
    /// none or `tool_choice` is `none`.
    pub fn offered_tools(&self) -> Result<Option<Vec<Value>>, ApiError> {
        let tools = self.tools.as_deref().unwrap_or_default();
        for (i, tool) in tools.iter().enumerate() {
            if tool.get("function").unwrap_or(tool).get("name").and_then(Value::as_str).is_none() {
                return Err(ApiError::invalid_request("each tool needs a function with a name")
                    .with_param(format!("tools[{i}]")));
            }
        }
        Ok(match self.tool_choice()? {
            _ if tools.is_empty() => None,
            ToolChoice::None => None,
            ToolChoice::Auto | ToolChoice::Required => Some(tools.to_vec()),
            ToolChoice::Function(name) => Some(
                tools
                    .iter()
                    .filter(|t| {
                        t.get("function").unwrap_or(t).get("name").and_then(Value::as_str) == Some(&name)
                    })
                    .cloned()
                    .collect(),
            ),
        })
    }

    /// The constraint `tool_choice` puts on the answer: calls for `required` or a named function
    /// (of the offered `tools`); a forced call with no tools is a 400.
    pub fn tool_constraint(&self, tools: Option<&[Value]>) -> Result<Option<Constraint>, ApiError> {
        let function = match self.tool_choice()? {
            ToolChoice::Auto | ToolChoice::None => return Ok(None),
            ToolChoice::Required => None,
            ToolChoice::Function(name) => Some(name),
        };
        match tools {
            Some(tools) if !tools.is_empty() => {
                Ok(Some(Constraint::ToolCalls { tools: tools.to_vec(), function }))
            }
            _ => Err(ApiError::invalid_request("tool_choice requires a tool call but no tools are given")
                .with_param("tool_choice")),
        }
    }

    /// `chat_template_kwargs` split into `enable_thinking` and the other variables.
    pub fn template_kwargs(&self) -> Result<(Option<bool>, Map<String, Value>), ApiError> {
        let mut extra = self.chat_template_kwargs.clone().unwrap_or_default();
        let thinking = match extra.remove("enable_thinking") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "chat_template_kwargs.enable_thinking must be true or false",
                )
                .with_param("chat_template_kwargs.enable_thinking"))
            }
        };
        Ok((thinking, extra))
    }

    pub fn thinking_budget(&self) -> Result<Option<usize>, ApiError> {
        match self.thinking_budget {
            Some(n) if n < 0 => {
                Err(ApiError::invalid_request("thinking_budget must be 0 or more")
                    .with_param("thinking_budget"))
            }
            other => Ok(other.map(|n| n as usize)),
        }
    }

    /// `logprobs`/`top_logprobs` as [`ChatParams::logprobs`].
    pub fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(k)) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => Err(ApiError::invalid_request(format!(
                "top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"
            ))
            .with_param("top_logprobs")),
            (false, Some(k)) if k > 0 => {
                Err(ApiError::invalid_request("top_logprobs needs logprobs: true").with_param("top_logprobs"))
            }
            (false, _) => Ok(None),
            (true, k) => Ok(Some(k.unwrap_or(0) as usize)),
        }
    }

    /// Checks what the template cannot render or this server cannot honour, and maps
    /// OpenAI's `developer` role to `system`.
    pub fn checked_messages(&self) -> Result<Vec<Message>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid_request("messages must not be empty").with_param("messages"));
        }
        let mut messages = self.messages.clone();
        for (i, message) in messages.iter_mut().enumerate() {
            match message.role.as_str() {
                "system" | "user" | "assistant" | "tool" => {}
                "developer" => message.role = "system".into(),
                other => {
                    return Err(ApiError::invalid_request(format!(
                        "unknown role {other:?}: use system, user, assistant or tool"
                    ))
                    .with_param(format!("messages[{i}].role")))
                }
            }
            if let MessageContent::Parts(parts) = &message.content {
                for (j, part) in parts.iter().enumerate() {
                    if let ContentPart::Other(raw) = part {
                        let kind = raw.get("type").and_then(Value::as_str).unwrap_or("");
                        let unsupported = ["input_audio", "audio", "file"];
                        if unsupported.contains(&kind) || unsupported.iter().any(|k| raw.contains_key(*k)) {
                            return Err(ApiError::invalid_request(format!(
                                "content parts of type {kind:?} are not supported: this server reads \
                                 text, images and videos"
                            ))
                            .with_param(format!("messages[{i}].content[{j}]")));
                        }
                    }
                }
            }
        }
        Ok(messages)
    }
}

/// Pixels one request's pictures may hold together by default (two images at the largest input
/// size; a video counts all its frames).
pub const DEFAULT_REQUEST_PIXELS: u64 = 2 * DEFAULT_MAX_INPUT_PIXELS;

/// Where the server may take pictures from, and how many pixels.
#[derive(Debug, Clone, Copy)]
pub struct MediaPolicy {
    /// Local paths and `file://` URLs (`--allow-local-files`); `data:` URLs are always accepted.
    pub allow_local_files: bool,
    /// Pixels of all the images and video frames of one request, as decoded (`--max-media-mpx`).
    pub request_pixels: u64,
}

impl Default for MediaPolicy {
    fn default() -> Self {
        MediaPolicy { allow_local_files: false, request_pixels: DEFAULT_REQUEST_PIXELS }
    }
}

/// Frame rate assumed for a video given as a local folder of frames.
const FOLDER_VIDEO_FPS: f64 = 2.0;

/// Replaces the image and video parts of `messages` by decoded pictures (CPU work: call it off
/// the async workers). Errors name the part (`messages[i].content[j]`).
pub fn resolve_media(
    messages: &mut [Message],
    lm: &LanguageModel,
    policy: MediaPolicy,
) -> Result<(), ApiError> {
    let mut pixels_left = policy.request_pixels;
    for (i, message) in messages.iter_mut().enumerate() {
        let MessageContent::Parts(parts) = &mut message.content else { continue };
        for (j, part) in parts.iter_mut().enumerate() {
            let ContentPart::Other(raw) = part else { continue };
            let Some((is_image, source)) = media_source(raw) else { continue };
            let name = format!("messages[{i}].content[{j}]");
            let fail = |message: String| ApiError::invalid_request(message).with_param(name.clone());
            lm.vision().map_err(|e| fail(e.to_string()))?;
            let source = source.ok_or_else(|| {
                fail(
                    "no URL: an image part needs image_url.url (or image), a video part video_url.url \
                     (or video)"
                        .to_owned(),
                )
            })?;
            // Each picture may use what the request has left: its header is checked against that
            // before it is decoded.
            let loaded = load_media(&source, is_image, &name, policy, pixels_left).map_err(|e| {
                if pixels_left < DEFAULT_MAX_INPUT_PIXELS && e.contains("exceeds the limit") {
                    fail(format!(
                        "{e}: the request's pictures may hold {} pixels together (--max-media-mpx)",
                        policy.request_pixels
                    ))
                } else {
                    fail(e)
                }
            })?;
            pixels_left = pixels_left.saturating_sub(media_pixels(&loaded));
            *part = loaded;
        }
    }
    Ok(())
}

/// Whether a raw part is an image (`true`) or a video, and its URL or path if it has one; `None`
/// for other parts. Keys as the Qwen3.5 template tests them (`'image' in item`, …).
fn media_source(raw: &Map<String, Value>) -> Option<(bool, Option<String>)> {
    let kind = raw.get("type").and_then(Value::as_str).unwrap_or("");
    let url_of = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("url").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    let first = |keys: &[&str]| keys.iter().find_map(|k| url_of(raw.get(*k)));
    if kind == "image_url" || kind == "image" || raw.contains_key("image_url") || raw.contains_key("image") {
        Some((true, first(&["image_url", "image", "url", "path"])))
    } else if kind == "video_url"
        || kind == "video"
        || raw.contains_key("video_url")
        || raw.contains_key("video")
    {
        Some((false, first(&["video_url", "video", "url", "path"])))
    } else {
        None
    }
}

/// Pixels a decoded picture holds (every frame of a video).
fn media_pixels(part: &ContentPart) -> u64 {
    match part {
        ContentPart::Image(image) => image.width() as u64 * image.height() as u64,
        ContentPart::Video(video) => {
            video.video().frames.iter().map(|f| f.width as u64 * f.height as u64).sum()
        }
        _ => 0,
    }
}

/// Decodes one picture of at most `budget` pixels (a video: all its frames together).
fn load_media(
    source: &str,
    is_image: bool,
    name: &str,
    policy: MediaPolicy,
    budget: u64,
) -> Result<ContentPart, String> {
    let image_limit = DEFAULT_MAX_INPUT_PIXELS.min(budget);
    // A video's frames may hold twice a frame's limit.
    let frame_limit =
        DEFAULT_MAX_INPUT_PIXELS.min(budget / qwenrt::vision::preprocess::VIDEO_PIXELS_PER_IMAGE_LIMIT);
    if let Some(data) = source.strip_prefix("data:") {
        let (header, payload) =
            data.split_once(',').ok_or_else(|| "a data: URL needs a comma before its payload".to_owned())?;
        let Some(mime) = header.strip_suffix(";base64") else {
            return Err("only base64 data: URLs are accepted (data:image/png;base64,...)".into());
        };
        if !mime.starts_with("image/") {
            return Err(format!("a data: URL of type {mime:?}: expected image/png, jpeg, webp or gif"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map_err(|e| format!("the data: URL is not valid base64: {e}"))?;
        let decoded = if is_image {
            ImageInput::decode(&bytes, name, image_limit).map(ContentPart::image)
        } else {
            VideoInput::decode_gif(&bytes, name, frame_limit).map(ContentPart::video)
        };
        return decoded.map_err(|e| e.to_string());
    }
    let path = match source.strip_prefix("file://") {
        // file:///abs/path, or file://localhost/abs/path; another host is another machine.
        Some(rest) => {
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            if !rest.starts_with('/') {
                return Err("a file: URL names a file of this machine: file:///path (no host)".into());
            }
            percent_decode(rest)?
        }
        None if source.contains("://") => {
            return Err("remote URLs are not fetched: send the picture in a data: URL".into());
        }
        None => source.to_owned(),
    };
    if !policy.allow_local_files {
        return Err("local files are not read unless the server runs with --allow-local-files; \
                    send the picture in a data: URL"
            .into());
    }
    let file = std::path::Path::new(&path);
    let loaded = if is_image {
        ImageInput::open_with_limit(file, image_limit).map(ContentPart::image)
    } else {
        VideoInput::open_with_limit(file, FOLDER_VIDEO_FPS, frame_limit).map(ContentPart::video)
    };
    // One answer for every failure: a client must not learn which paths exist, what kind of
    // file they are, or what a folder holds.
    loaded.map_err(|_| {
        let what = if is_image { "an image" } else { "a video (a GIF or a folder of frames)" };
        format!("{path:?} cannot be read as {what} (missing, not a readable file, or not a picture)")
    })
}

/// `%XX` escapes of a `file://` URL's path.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| format!("bad escape in the file URL {text:?}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("the file URL {text:?} is not UTF-8"))
}

/// `prompt` of `/v1/completions`: a string, or token ids; a list of one of those is accepted,
/// more than one is a batch, which is not supported.
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl CompletionFields {
    pub fn prompt(&self) -> Result<PromptInput, ApiError> {
        let bad = |message: &str| ApiError::invalid_request(message).with_param("prompt");
        let single = match &self.prompt {
            Value::Array(items) if items.iter().all(Value::is_number) => &self.prompt,
            Value::Array(items) if items.len() == 1 => &items[0],
            Value::Array(_) => return Err(bad("only one prompt per request is supported")),
            other => other,
        };
        match single {
            Value::String(text) => Ok(PromptInput::Text(text.clone())),
            Value::Array(ids) => ids
                .iter()
                .map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect::<Option<Vec<u32>>>()
                .map(PromptInput::Tokens)
                .ok_or_else(|| bad("token ids must be non-negative integers")),
            _ => Err(bad("prompt must be a string or a list of token ids")),
        }
    }

    pub fn check_supported(&self) -> Result<(), ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::invalid_request("echo is not supported").with_param("echo"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_request("suffix is not supported").with_param("suffix"));
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid_request("only best_of=1 is supported").with_param("best_of"));
        }
        Ok(())
    }

    pub fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        match self.logprobs {
            None => Ok(None),
            Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Ok(Some(k as usize)),
            Some(_) => {
                Err(ApiError::invalid_request(format!("logprobs must be between 0 and {MAX_TOP_LOGPROBS}"))
                    .with_param("logprobs"))
            }
        }
    }
}

/// Refuses a prompt that leaves no room for an answer in the context.
pub fn check_context(prompt_len: usize, max_context: usize, param: &str) -> Result<(), ApiError> {
    if prompt_len < max_context {
        return Ok(());
    }
    Err(context_exceeded(max_context, &prompt_len.to_string(), param))
}

/// The error for a prompt of `tokens` tokens (a count, or "more than N") that leaves no room.
pub fn context_exceeded(max_context: usize, tokens: &str, param: &str) -> ApiError {
    ApiError::invalid_request(format!(
        "this model's maximum context length is {max_context} tokens, but the prompt has {tokens} tokens \
         (and the answer needs at least one more); shorten the prompt"
    ))
    .with_code("context_length_exceeded")
    .with_param(param)
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(reason: FinishReason, called_tools: bool) -> &'static str {
    match reason {
        _ if called_tools => "tool_calls",
        FinishReason::Length => "length",
        FinishReason::Stop
        | FinishReason::StopString
        | FinishReason::Repetition
        | FinishReason::Cancelled => "stop",
    }
}

#[derive(Debug, Serialize)]
pub struct UsageBody {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
    pub completion_tokens_details: CompletionTokensDetails,
}

#[derive(Debug, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Serialize)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: usize,
    /// Drafts of the MTP head kept and discarded by speculative decoding (OpenAI's names for
    /// predicted tokens; 0 without speculation).
    pub accepted_prediction_tokens: usize,
    pub rejected_prediction_tokens: usize,
}

impl From<&Usage> for UsageBody {
    fn from(usage: &Usage) -> Self {
        UsageBody {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: usage.cached_prompt_tokens },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: usage.reasoning_tokens,
                accepted_prediction_tokens: usage.speculation.as_ref().map_or(0, |s| s.accepted),
                rejected_prediction_tokens: usage.speculation.as_ref().map_or(0, |s| s.drafted - s.accepted),
            },
        }
    }
}

/// A tool call in a response: `arguments` as a JSON-encoded string, as OpenAI sends it.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallBody {
    /// Position among the answer's calls; only in stream chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionBody,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionBody {
    pub name: String,
    pub arguments: String,
}

impl ToolCallBody {
    pub fn new(id: String, call: &FunctionCall) -> Self {
        let arguments = match &call.arguments {
            Value::Null => "{}".to_owned(),
            value => value.to_string(),
        };
        ToolCallBody {
            index: None,
            id,
            kind: "function",
            function: FunctionBody { name: call.name.clone(), arguments },
        }
    }
}

/// One token's entry in chat `logprobs.content`.
#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprobBody {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprobBody>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprobBody {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

/// A log-probability as JSON shows it: the shortest decimal that reads back as the same f32
/// (widening to f64 would print noise digits), and OpenAI's -9999 for an impossible token.
fn logprob_number(logprob: f32) -> f64 {
    if !logprob.is_finite() {
        return -9999.0;
    }
    logprob.to_string().parse().unwrap_or(f64::from(logprob))
}

impl From<&TokenLogprob> for TokenLogprobBody {
    fn from(info: &TokenLogprob) -> Self {
        TokenLogprobBody {
            token: info.text.clone(),
            logprob: logprob_number(info.logprob),
            bytes: info.text.as_bytes().to_vec(),
            top_logprobs: info
                .top
                .iter()
                .map(|(_, text, logprob)| TopLogprobBody {
                    token: text.clone(),
                    logprob: logprob_number(*logprob),
                    bytes: text.as_bytes().to_vec(),
                })
                .collect(),
        }
    }
}

/// Chat `logprobs`: `{"content": [...]}`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprobBody>,
}

/// `/v1/completions` `logprobs`, the legacy layout.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f64>,
    pub top_logprobs: Vec<Map<String, Value>>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Adds a token whose text starts at byte `offset` of the completion.
    pub fn push(&mut self, info: &TokenLogprob, offset: usize) {
        self.tokens.push(info.text.clone());
        self.token_logprobs.push(logprob_number(info.logprob));
        self.top_logprobs.push(
            info.top.iter().map(|(_, text, lp)| (text.clone(), Value::from(logprob_number(*lp)))).collect(),
        );
        self.text_offset.push(offset);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::serve::errors::parse_fields;

    fn chat(body: Value) -> ChatFields {
        parse_fields(&body).unwrap()
    }

    #[test]
    fn tool_choice_variants() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "g"}}]);
        let with = |choice: Value| chat(json!({"messages": [], "tools": tools, "tool_choice": choice}));
        assert_eq!(with(json!("auto")).offered_tools().unwrap().unwrap().len(), 2);
        assert_eq!(with(json!("none")).offered_tools().unwrap(), None);
        let only_g =
            with(json!({"type": "function", "function": {"name": "g"}})).offered_tools().unwrap().unwrap();
        assert_eq!(only_g, vec![tools[1].clone()]);
        let err = with(json!({"type": "function", "function": {"name": "h"}})).offered_tools().unwrap_err();
        assert_eq!(err.param.as_deref(), Some("tool_choice"));
        assert!(with(json!("sometimes")).offered_tools().is_err());
        assert_eq!(chat(json!({"messages": []})).offered_tools().unwrap(), None);
    }

    #[test]
    fn logprob_fields() {
        let lp = |body: Value| chat(body).logprobs();
        assert_eq!(lp(json!({"messages": []})).unwrap(), None);
        assert_eq!(lp(json!({"messages": [], "logprobs": true})).unwrap(), Some(0));
        assert_eq!(lp(json!({"messages": [], "logprobs": true, "top_logprobs": 3})).unwrap(), Some(3));
        assert!(lp(json!({"messages": [], "top_logprobs": 3})).is_err());
        assert!(lp(json!({"messages": [], "logprobs": true, "top_logprobs": 21})).is_err());
    }

    #[test]
    fn audio_parts_and_unknown_roles_are_refused() {
        let audio = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        ]}]});
        assert_eq!(
            chat(audio).checked_messages().unwrap_err().param.as_deref(),
            Some("messages[0].content[1]")
        );
        let image = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]}]});
        assert!(chat(image).checked_messages().is_ok(), "images are resolved later");
        let narrator = json!({"messages": [{"role": "narrator", "content": "x"}]});
        assert_eq!(chat(narrator).checked_messages().unwrap_err().param.as_deref(), Some("messages[0].role"));
        let developer = json!({"messages": [{"role": "developer", "content": "x"}]});
        assert_eq!(chat(developer).checked_messages().unwrap()[0].role, "system");
    }

    #[test]
    fn media_sources_and_policies() {
        let part = |v: Value| v.as_object().unwrap().clone();
        let source = |v: Value| media_source(&part(v));
        assert_eq!(
            source(json!({"type": "image_url", "image_url": {"url": "data:x"}})),
            Some((true, Some("data:x".into())))
        );
        assert_eq!(
            source(json!({"type": "image_url", "image_url": "a.png"})),
            Some((true, Some("a.png".into())))
        );
        assert_eq!(source(json!({"type": "image", "image": "a.png"})), Some((true, Some("a.png".into()))));
        assert_eq!(source(json!({"type": "image"})), Some((true, None)));
        assert_eq!(source(json!({"type": "video", "video": "v.gif"})), Some((false, Some("v.gif".into()))));
        assert_eq!(source(json!({"type": "text", "text": "x", "extra": 1})), None);

        let closed = MediaPolicy::default();
        let err = |s: &str, policy| load_media(s, true, "p", policy, DEFAULT_REQUEST_PIXELS).unwrap_err();
        assert!(err("https://example.com/a.png", closed).contains("not fetched"));
        assert!(err("/etc/hostname", closed).contains("--allow-local-files"));
        assert!(err("file:///etc/hostname", closed).contains("--allow-local-files"));
        assert!(err("data:image/png,abc", closed).contains("base64"));
        assert!(err("data:text/plain;base64,AAAA", closed).contains("image/png"));
        assert!(err("data:image/png;base64,!!", closed).contains("not valid base64"));
        assert!(err("data:image/png;base64,AAAA", closed).contains("not a PNG"));
        let open = MediaPolicy { allow_local_files: true, ..MediaPolicy::default() };
        assert!(err("file:///no/such%20file.png", open).contains("/no/such file.png"));
        assert!(err("file://other-host/etc/hostname", open).contains("no host"));
        // Missing, a folder, a device, not an image: the same answer, naming nothing else.
        let text = std::env::temp_dir().join(format!("qwenrt-not-an-image-{}.png", std::process::id()));
        std::fs::write(&text, "plain text").unwrap();
        let missing = err("/no/such/file.png", open).replace("/no/such/file.png", "P");
        let folder = std::env::temp_dir();
        for path in [folder.to_str().unwrap(), "/dev/zero", text.to_str().unwrap()] {
            assert_eq!(err(path, open).replace(path, "P"), missing, "{path}");
        }
        std::fs::remove_file(&text).unwrap();
        assert_eq!(percent_decode("/a%2Fb%20c").unwrap(), "/a/b c");
        assert!(percent_decode("/a%zz").is_err());
    }

    #[test]
    fn completion_prompts() {
        let prompt = |p: Value| parse_fields::<CompletionFields>(&json!({"prompt": p})).unwrap().prompt();
        assert!(matches!(prompt(json!("hi")), Ok(PromptInput::Text(t)) if t == "hi"));
        assert!(matches!(prompt(json!(["hi"])), Ok(PromptInput::Text(t)) if t == "hi"));
        assert!(matches!(prompt(json!([1, 2])), Ok(PromptInput::Tokens(t)) if t == [1, 2]));
        assert!(matches!(prompt(json!([[1, 2]])), Ok(PromptInput::Tokens(t)) if t == [1, 2]));
        assert!(prompt(json!(["a", "b"])).is_err());
        assert!(prompt(json!([-1])).is_err());
        assert!(prompt(json!(3)).is_err());
    }

    #[test]
    fn tool_call_arguments_are_json_strings() {
        let call = FunctionCall { name: "f".into(), arguments: json!({"a": 1, "b": "x"}) };
        let body = serde_json::to_value(ToolCallBody::new("call_1".into(), &call)).unwrap();
        assert_eq!(
            body,
            json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1,\"b\":\"x\"}"}})
        );
    }
}
