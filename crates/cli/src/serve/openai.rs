//! The OpenAI request and response bodies, and their translation to and from qwenrt's types.
//!
//! Requests are read in parts ([`GenerationFields`] plus the endpoint's own fields) from one
//! parsed JSON value, so a field of the wrong type is reported by its name. Fields this server
//! does not know are ignored, as OpenAI clients send many.

use std::collections::HashMap;

use qwenrt::chat::{ContentPart, FunctionCall, Message, MessageContent};
use qwenrt::{ChatParams, FinishReason, LanguageModel, TokenLogprob, Usage};
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
    pub response_format: Option<Value>,
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
        s.temperature = self.temperature.unwrap_or(s.temperature);
        s.top_p = self.top_p.unwrap_or(s.top_p);
        s.top_k = match self.top_k {
            Some(k) => usize::try_from(k).unwrap_or(0),
            None => s.top_k,
        };
        s.min_p = self.min_p.unwrap_or(s.min_p);
        s.presence_penalty = self.presence_penalty.unwrap_or(s.presence_penalty);
        s.frequency_penalty = self.frequency_penalty.unwrap_or(s.frequency_penalty);
        s.repetition_penalty = self.repetition_penalty.unwrap_or(s.repetition_penalty);
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
        params.validate().map_err(|e| ApiError::invalid_request(e.to_string()))?;
        Ok(params)
    }
}

/// How `tool_choice` shapes the prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// Tools are offered; the model decides (`auto`, and `required`, which cannot be enforced
    /// without constrained decoding).
    Auto,
    /// Tools are left out of the prompt.
    None,
    /// Only this function is offered.
    Function(String),
}

impl ChatFields {
    pub fn tool_choice(&self) -> Result<ToolChoice, ApiError> {
        let bad = |message: String| ApiError::invalid_request(message).with_param("tool_choice");
        let choice = match &self.tool_choice {
            None => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" | "required" => ToolChoice::Auto,
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
            ToolChoice::Auto => Some(tools.to_vec()),
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
        if let Some(format) = &self.response_format {
            if format.get("type").and_then(Value::as_str) != Some("text") {
                return Err(ApiError::invalid_request(
                    "response_format other than {\"type\": \"text\"} is not supported (no constrained decoding)",
                )
                .with_param("response_format"));
            }
        }
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
                        let media =
                            ["image", "image_url", "video", "video_url", "input_audio", "audio", "file"];
                        if media.contains(&kind) || media.iter().any(|k| raw.contains_key(*k)) {
                            return Err(ApiError::invalid_request(format!(
                                "content parts of type {kind:?} are not supported: this server reads text only"
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
    Err(ApiError::invalid_request(format!(
        "this model's maximum context length is {max_context} tokens, but the prompt has {prompt_len} tokens \
         (and the answer needs at least one more); shorten the prompt"
    ))
    .with_code("context_length_exceeded")
    .with_param(param))
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
}

impl From<&Usage> for UsageBody {
    fn from(usage: &Usage) -> Self {
        UsageBody {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: usage.cached_prompt_tokens },
            completion_tokens_details: CompletionTokensDetails { reasoning_tokens: usage.reasoning_tokens },
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
    fn media_parts_and_unknown_roles_are_refused() {
        let image = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]}]});
        assert_eq!(
            chat(image).checked_messages().unwrap_err().param.as_deref(),
            Some("messages[0].content[1]")
        );
        let narrator = json!({"messages": [{"role": "narrator", "content": "x"}]});
        assert_eq!(chat(narrator).checked_messages().unwrap_err().param.as_deref(), Some("messages[0].role"));
        let developer = json!({"messages": [{"role": "developer", "content": "x"}]});
        assert_eq!(chat(developer).checked_messages().unwrap()[0].role, "system");
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
