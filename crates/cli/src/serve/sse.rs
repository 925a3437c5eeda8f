//! Streamed answers: Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`.
//!
//! The stream owns the job's handle: when the client goes away, hyper drops the stream, the
//! handle goes with it and the job is cancelled.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};

use super::engine::{Completion, JobEvent, JobHandle};
use super::errors::ApiError;
use super::openai::{finish_reason, ChatLogprobs, TokenLogprobBody, ToolCallBody, UsageBody};
use super::output::{ChatDelta, ChatTranslator, CompletionText};

/// What every chunk of one answer repeats.
#[derive(Debug, Clone)]
pub struct AnswerMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// Send a last chunk with the usage (`stream_options.include_usage`).
    pub include_usage: bool,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageBody>,
}

#[derive(Serialize)]
struct ChunkChoice {
    index: usize,
    delta: Delta,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCallBody>>,
}

fn data(value: &impl Serialize) -> Event {
    // Serializing these plain structs cannot fail.
    Event::default().data(serde_json::to_string(value).unwrap_or_default())
}

fn done() -> Event {
    Event::default().data("[DONE]")
}

fn error_event(error: &ApiError) -> Event {
    data(&error.body())
}

/// Turns `events` (one batch per step, `None` when over) into an SSE response.
fn sse_response<S>(events: S) -> Response
where
    S: Stream<Item = Vec<Event>> + Send + 'static,
{
    let events = events.flat_map(|batch| stream::iter(batch.into_iter().map(Ok::<_, Infallible>)));
    // Comments every 15 s keep proxies from closing a stream that waits on a long prompt, and
    // let the server notice a client that left.
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// A streamed chat completion.
pub fn chat_stream(handle: JobHandle, translator: ChatTranslator, meta: AnswerMeta) -> Response {
    let state = ChatStream { handle, translator, meta, logprobs: Vec::new(), started: false, over: false };
    sse_response(stream::unfold(state, |mut state| async move {
        let events = state.step().await?;
        Some((events, state))
    }))
}

struct ChatStream {
    handle: JobHandle,
    translator: ChatTranslator,
    meta: AnswerMeta,
    /// Log-probs of tokens whose text has not been sent yet: they go with the next chunk.
    logprobs: Vec<TokenLogprobBody>,
    started: bool,
    over: bool,
}

impl ChatStream {
    /// The events of the next job event (or the first chunk); `None` once the stream is over.
    async fn step(&mut self) -> Option<Vec<Event>> {
        if self.over {
            return None;
        }
        if !self.started {
            self.started = true;
            let role = Delta { role: Some("assistant"), content: Some(String::new()), ..Delta::default() };
            return Some(vec![self.chunk(role, None)]);
        }
        let event = self.handle.next().await;
        let mut out = Vec::new();
        match event {
            Some(JobEvent::Done(completion)) => {
                let deltas = self.translator.finish();
                self.deltas(deltas, &mut out);
                self.finish(&completion, &mut out);
            }
            Some(JobEvent::Failed(error)) => self.fail(&ApiError::from(error), &mut out),
            Some(event) => {
                let deltas = self.translator.event(event);
                self.deltas(deltas, &mut out);
            }
            None => self.fail(&ApiError::shutting_down(), &mut out),
        }
        Some(out)
    }

    fn deltas(&mut self, deltas: Vec<ChatDelta>, out: &mut Vec<Event>) {
        for delta in deltas {
            let delta = match delta {
                ChatDelta::Logprob(entry) => {
                    self.logprobs.push(entry);
                    continue;
                }
                ChatDelta::Reasoning(text) => Delta { reasoning_content: Some(text), ..Delta::default() },
                ChatDelta::Content(text) => Delta { content: Some(text), ..Delta::default() },
                ChatDelta::ToolCall(call) => Delta { tool_calls: Some(vec![call]), ..Delta::default() },
            };
            out.push(self.chunk(delta, None));
        }
    }

    fn finish(&mut self, completion: &Completion, out: &mut Vec<Event>) {
        self.over = true;
        if completion.finish_reason == qwenrt::FinishReason::Cancelled {
            // The client is still here, so the server stopped the job: it is shutting down.
            out.push(error_event(&ApiError::shutting_down()));
            out.push(done());
            return;
        }
        let reason = finish_reason(completion.finish_reason, self.translator.called_tools());
        out.push(self.chunk(Delta::default(), Some(reason)));
        if self.meta.include_usage {
            let usage = ChatChunk {
                id: &self.meta.id,
                object: "chat.completion.chunk",
                created: self.meta.created,
                model: &self.meta.model,
                choices: Vec::new(),
                usage: Some(UsageBody::from(&completion.usage)),
            };
            out.push(data(&usage));
        }
        out.push(done());
    }

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Event>) {
        self.over = true;
        out.push(error_event(error));
        out.push(done());
    }

    fn chunk(&mut self, delta: Delta, finish_reason: Option<&'static str>) -> Event {
        let logprobs =
            (!self.logprobs.is_empty()).then(|| ChatLogprobs { content: std::mem::take(&mut self.logprobs) });
        data(&ChatChunk {
            id: &self.meta.id,
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: &self.meta.model,
            choices: vec![ChunkChoice { index: 0, delta, logprobs, finish_reason }],
            usage: None,
        })
    }
}

/// A streamed `/v1/completions` answer.
pub fn completion_stream(handle: JobHandle, meta: AnswerMeta, logprobs: bool) -> Response {
    let state = CompletionStream {
        handle,
        meta,
        text: CompletionText::default(),
        logprobs: logprobs.then(Vec::new),
        offset: 0,
        over: false,
    };
    sse_response(stream::unfold(state, |mut state| async move {
        let events = state.step().await?;
        Some((events, state))
    }))
}

struct CompletionStream {
    handle: JobHandle,
    meta: AnswerMeta,
    text: CompletionText,
    /// Tokens waiting for their text, when log-probs were asked for.
    logprobs: Option<Vec<qwenrt::TokenLogprob>>,
    /// Bytes of text sent so far (`text_offset` of the next token).
    offset: usize,
    over: bool,
}

impl CompletionStream {
    async fn step(&mut self) -> Option<Vec<Event>> {
        if self.over {
            return None;
        }
        let mut out = Vec::new();
        match self.handle.next().await {
            Some(JobEvent::Token(info)) => {
                if let Some(waiting) = &mut self.logprobs {
                    waiting.push(info);
                }
            }
            Some(JobEvent::Done(completion)) => {
                self.over = true;
                if completion.finish_reason == qwenrt::FinishReason::Cancelled {
                    out.push(error_event(&ApiError::shutting_down()));
                } else {
                    out.push(self.chunk(String::new(), Some(finish_reason(completion.finish_reason, false))));
                    if self.meta.include_usage {
                        out.push(data(&json!({
                            "id": self.meta.id,
                            "object": "text_completion",
                            "created": self.meta.created,
                            "model": self.meta.model,
                            "choices": [],
                            "usage": UsageBody::from(&completion.usage),
                        })));
                    }
                }
                out.push(done());
            }
            Some(JobEvent::Failed(error)) => {
                self.over = true;
                out.push(error_event(&ApiError::from(error)));
                out.push(done());
            }
            Some(event) => {
                if let Some(text) = self.text.event(&event) {
                    out.push(self.chunk(text, None));
                }
            }
            None => {
                self.over = true;
                out.push(error_event(&ApiError::shutting_down()));
                out.push(done());
            }
        }
        Some(out)
    }

    fn chunk(&mut self, text: String, finish_reason: Option<&'static str>) -> Event {
        let logprobs = match &mut self.logprobs {
            Some(waiting) if !waiting.is_empty() => {
                let mut body = super::openai::CompletionLogprobs::default();
                let mut offset = self.offset;
                for info in waiting.drain(..) {
                    body.push(&info, offset);
                    offset += info.text.len();
                }
                serde_json::to_value(body).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        };
        self.offset += text.len();
        data(&json!({
            "id": self.meta.id,
            "object": "text_completion",
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}],
        }))
    }
}
