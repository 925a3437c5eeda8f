//! From job events to what a chat answer says: reasoning, content, tool calls and log-probs.
//! Streaming and non-streaming answers go through the same [`ChatTranslator`], so they agree.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use qwenrt::tool_calls::{Segment, ToolCallParser};
use serde_json::Value;

use super::engine::JobEvent;
use super::openai::{TokenLogprobBody, ToolCallBody};

/// One piece of a chat answer.
#[derive(Debug, Clone)]
pub enum ChatDelta {
    Reasoning(String),
    Content(String),
    /// A whole tool call, with its position among the answer's calls.
    ToolCall(ToolCallBody),
    Logprob(TokenLogprobBody),
}

/// Splits the answer's content into text and tool calls (when tools were offered) and names the
/// calls.
pub struct ChatTranslator {
    parser: Option<ToolCallParser>,
    call_id_prefix: String,
    calls: usize,
}

impl ChatTranslator {
    /// `tools`: those rendered into the prompt; without them the content is plain text.
    pub fn new(tools: Option<&[Value]>) -> Self {
        ChatTranslator {
            parser: tools.map(|t| ToolCallParser::new(Some(t))),
            call_id_prefix: new_id("call"),
            calls: 0,
        }
    }

    /// The deltas an event gives (`Done` and `Failed` give none: the caller ends the answer).
    pub fn event(&mut self, event: JobEvent) -> Vec<ChatDelta> {
        match event {
            JobEvent::Token(info) => vec![ChatDelta::Logprob(TokenLogprobBody::from(&info))],
            JobEvent::Reasoning(text) => vec![ChatDelta::Reasoning(text)],
            JobEvent::Content(text) => match &mut self.parser {
                Some(parser) => {
                    let segments = parser.push(&text);
                    self.segments(segments)
                }
                None => vec![ChatDelta::Content(text)],
            },
            JobEvent::Done(_) | JobEvent::Failed(_) => Vec::new(),
        }
    }

    /// What the tool-call parser still holds, once the answer is over. Whitespace left after
    /// the calls (the newline before `<|im_end|>`) is dropped.
    pub fn finish(&mut self) -> Vec<ChatDelta> {
        let Some(parser) = &mut self.parser else { return Vec::new() };
        let mut segments = parser.finish();
        if self.calls > 0 {
            segments.retain(|s| !matches!(s, Segment::Text(text) if text.trim().is_empty()));
        }
        self.segments(segments)
    }

    pub fn called_tools(&self) -> bool {
        self.calls > 0
    }

    fn segments(&mut self, segments: Vec<Segment>) -> Vec<ChatDelta> {
        segments
            .into_iter()
            .map(|segment| match segment {
                Segment::Text(text) => ChatDelta::Content(text),
                Segment::Call(call) => {
                    let mut body =
                        ToolCallBody::new(format!("{}-{}", self.call_id_prefix, self.calls), &call);
                    body.index = Some(self.calls);
                    self.calls += 1;
                    ChatDelta::ToolCall(body)
                }
            })
            .collect()
    }
}

/// A whole chat answer, gathered from its deltas.
#[derive(Debug, Default)]
pub struct ChatAnswer {
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<ToolCallBody>,
    pub logprobs: Vec<TokenLogprobBody>,
}

impl ChatAnswer {
    pub fn push(&mut self, delta: ChatDelta) {
        match delta {
            ChatDelta::Reasoning(text) => self.reasoning.push_str(&text),
            ChatDelta::Content(text) => self.content.push_str(&text),
            ChatDelta::ToolCall(mut call) => {
                // The position is implied by the list outside stream chunks.
                call.index = None;
                self.tool_calls.push(call);
            }
            ChatDelta::Logprob(entry) => self.logprobs.push(entry),
        }
    }
}

/// A unique id such as `chatcmpl-5f0c…`: random bits (std's per-process random hasher keys) and
/// a counter, which is all an OpenAI id needs to be.
pub fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(count);
    format!("{prefix}-{:016x}{:04x}", hasher.finish(), count & 0xffff)
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Turns the text of a raw completion back into one string: when the prompt opened a thought,
/// the session streams the thought and the answer apart; the answer follows the thought as the
/// chat template writes it (`\n</think>\n\n`).
#[derive(Debug, Default)]
pub struct CompletionText {
    thought_open: bool,
}

impl CompletionText {
    pub fn event(&mut self, event: &JobEvent) -> Option<String> {
        match event {
            JobEvent::Reasoning(text) => {
                self.thought_open = true;
                Some(text.clone())
            }
            JobEvent::Content(text) if std::mem::take(&mut self.thought_open) => {
                Some(format!("\n</think>\n\n{text}"))
            }
            JobEvent::Content(text) => Some(text.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn texts(deltas: &[ChatDelta]) -> String {
        deltas
            .iter()
            .map(|d| match d {
                ChatDelta::Content(t) => format!("[{t}]"),
                ChatDelta::ToolCall(c) => format!("<{}:{}>", c.index.unwrap(), c.function.name),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn content_is_split_into_text_and_numbered_calls_only_when_tools_were_offered() {
        let tools = [json!({"type": "function", "function": {"name": "f"}})];
        let mut t = ChatTranslator::new(Some(&tools));
        let mut out = Vec::new();
        for piece in [
            "Hi.\n\n<tool_",
            "call>\n<function=f>\n</function>\n</tool_call>",
            "\n<tool_call>\n<function=g>\n</function>\n</tool_call>",
        ] {
            out.extend(t.event(JobEvent::Content(piece.into())));
        }
        out.extend(t.finish());
        assert_eq!(texts(&out), "[Hi.]<0:f><1:g>");
        assert!(t.called_tools());

        let mut plain = ChatTranslator::new(None);
        let out = plain.event(JobEvent::Content("<tool_call>".into()));
        assert_eq!(texts(&out), "[<tool_call>]");
        assert!(!plain.called_tools());
    }

    #[test]
    fn ids_are_unique() {
        let a = new_id("chatcmpl");
        assert!(a.starts_with("chatcmpl-"));
        assert_ne!(a, new_id("chatcmpl"));
    }

    #[test]
    fn completion_text_closes_the_thought() {
        let mut c = CompletionText::default();
        let out: String = [
            JobEvent::Reasoning("hmm".into()),
            JobEvent::Content("yes".into()),
            JobEvent::Content("!".into()),
        ]
        .iter()
        .filter_map(|e| c.event(e))
        .collect();
        assert_eq!(out, "hmm\n</think>\n\nyes!");
    }
}
