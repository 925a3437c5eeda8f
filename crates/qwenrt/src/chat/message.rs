//! Chat messages as OpenAI and transformers write them, and the media attached to them.

use super::*;

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
pub(super) struct MessageWire {
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

pub(super) fn function_type() -> String {
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

pub(super) fn deserialize_arguments<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<serde_json::Value, D::Error> {
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
