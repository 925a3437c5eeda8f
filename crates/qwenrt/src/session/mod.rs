//! Chat sessions: a conversation over a shared model, streamed as reasoning and content deltas,
//! with per-turn sampling, thinking control, stop strings, a repetition guard, cancellation from
//! another thread, and reuse of saved states across turns so the history is not prefilled again.
//!
//! ```no_run
//! use std::sync::Arc;
//! use qwenrt::chat::Message;
//! use qwenrt::{ChatSession, Event, LanguageModel};
//!
//! let lm = Arc::new(LanguageModel::load("Qwen3.5-0.8B".as_ref())?);
//! let mut session = ChatSession::new(lm.clone()); // as many sessions as you like share `lm`
//! let mut params = lm.default_params();
//! params.max_tokens = 256;
//! params.enable_thinking = Some(true);
//! params.max_thinking_tokens = Some(128);
//! for question in ["What is a delta rule?", "Shorter, please."] {
//!     let reply = session.send(Message::user(question), &params, |event| match event {
//!         Event::Reasoning(text) => eprint!("{text}"),
//!         Event::Content(text) => print!("{text}"),
//!         Event::Done(_) => println!(),
//!         Event::Token(_) => {}
//!     })?;
//!     // The second turn reuses the state saved at the end of the first prompt.
//!     eprintln!("{} of {} prompt tokens cached", reply.usage.cached_prompt_tokens, reply.usage.prompt_tokens);
//! }
//! # Ok::<(), qwenrt::Error>(())
//! ```
//!
//! Messages may carry images and videos ([`crate::chat::ContentPart::Image`] / `Video`, decoded
//! when attached). A turn runs the vision tower only on the attachments its prefill needs: those
//! in earlier turns come back with the saved state, whose key includes a hash of their pixels,
//! so another picture at the same token positions is never mistaken for one already seen.
//!
//! ```no_run
//! # use std::sync::Arc;
//! use qwenrt::chat::{ContentPart, Message};
//! use qwenrt::vision::ImageInput;
//! # use qwenrt::{ChatSession, LanguageModel};
//! # let lm = Arc::new(LanguageModel::load("Qwen3.5-0.8B".as_ref())?);
//! let mut session = ChatSession::new(lm.clone());
//! let photo = ImageInput::open("photo.jpg".as_ref())?;
//! let question = Message::user(vec![ContentPart::image(photo), ContentPart::text("What is this?")]);
//! let reply = session.send(question, &lm.default_params(), |_| {})?;
//! let again = session.send(Message::user("And its colour?"), &lm.default_params(), |_| {})?;
//! # Ok::<(), qwenrt::Error>(())
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::chat::message_media;
use crate::chat::Message;
use crate::constraint::GuidedText;
use crate::error::{Error, Result};
use crate::generate::FinishReason;
use crate::lm::LanguageModel;
use crate::model::{Logits, Model, SessionState};
pub use crate::params::{ChatParams, RepetitionGuard};
use crate::prompt_cache::{
    is_prefix, media_before, CacheStats, MediaMark, PromptCache, DEFAULT_PROMPT_CACHE_BYTES,
};
use crate::sampling::Sampler;
use crate::speculative::{SpeculationStats, Speculator};
use crate::tokenizer::Tokenizer;
use crate::vision::{EncodedMedia, Prompt};

mod text;
mod turn;

use text::TextOut;
use turn::{feed_prompt_rest, Guided, PendingMedia};
pub use turn::{TokenLogprob, Turn};

/// Stops a generation from another thread: clone it, move the clone anywhere, call
/// [`cancel`](Self::cancel). The generation in progress ends before its next token (or the next
/// one to start, if none is running); the request is consumed by the generation that honours it.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use qwenrt::{chat::Message, ChatSession, FinishReason, LanguageModel};
/// # let lm = Arc::new(LanguageModel::load("Qwen3.5-0.8B".as_ref())?);
/// let mut session = ChatSession::new(lm.clone());
/// let cancel = session.cancel_token();
/// let timer = std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_secs(2));
///     cancel.cancel(); // e.g. the user pressed "stop"
/// });
/// let reply = session.send(Message::user("Write a long essay."), &lm.default_params(), |_| {})?;
/// assert!(matches!(reply.finish_reason, FinishReason::Cancelled | FinishReason::Stop | FinishReason::Length));
/// timer.join().unwrap();
/// # Ok::<(), qwenrt::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// What a turn streams.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Text the model writes inside `<think>…</think>`.
    Reasoning(&'a str),
    /// Answer text. Deltas never split a UTF-8 character and never contain `<|im_end|>`.
    Content(&'a str),
    /// A token was sampled (only with [`ChatParams::logprobs`]); its text follows in
    /// `Reasoning`/`Content` events.
    Token(&'a TokenLogprob),
    /// The turn is over.
    Done(&'a Reply),
}

/// Token counts and timings of a turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Tokens of the rendered prompt (the whole conversation so far).
    pub prompt_tokens: usize,
    /// Of those, how many came from a saved state instead of being prefilled.
    pub cached_prompt_tokens: usize,
    /// Tokens sampled, reasoning included (the forced `</think>` is not counted).
    pub completion_tokens: usize,
    pub reasoning_tokens: usize,
    /// From the call to the first sampled token: state restore, prefill, first sample.
    pub time_to_first_token: Duration,
    /// Time spent computing the token masks of a constrained answer (part of the decode time).
    pub constraint_time: Duration,
    /// From the first sampled token to the end.
    pub decode_time: Duration,
    /// What speculative decoding did, for a turn that used it ([`ChatParams::speculative`]).
    pub speculation: Option<SpeculationStats>,
}

impl Usage {
    /// Decode speed over the tokens after the first (the first comes out of the prefill).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.completion_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// The result of a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub content: String,
    /// The thought, without `<think>` tags; empty when the turn did not think.
    pub reasoning: String,
    /// Every token after the prompt: sampled ones, forced ones (closing a thought on budget) and
    /// the stop token if one ended the turn.
    pub tokens: Vec<u32>,
    /// One entry per sampled token when [`ChatParams::logprobs`] asked for them.
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: FinishReason,
    /// The stop string that ended the turn, for [`FinishReason::StopString`].
    pub stop_string: Option<String>,
    pub usage: Usage,
}

/// How a session is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Byte budget of the prompt cache; 0 disables it.
    pub prompt_cache_bytes: usize,
    /// Most tokens the conversation may hold (bounds KV memory); `None` is the model's context.
    pub max_context: Option<usize>,
    /// Keep, from the first token on, what the checkpoint's MTP head drafts from, so that turns
    /// can decode speculatively ([`ChatParams::speculative`]). It costs the head's cache (one
    /// more attention layer, in saved states too) and, at a turn's first draft, a pass of the
    /// head over the tokens fed since the last one. A model without the head ignores it.
    pub drafting: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { prompt_cache_bytes: DEFAULT_PROMPT_CACHE_BYTES, max_context: None, drafting: false }
    }
}

/// Bytes held, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFootprint {
    /// The model's weights (shared by all sessions).
    pub weights: usize,
    /// This session's live state (KV caches, DeltaNet conv and recurrent states).
    pub state: usize,
    /// This session's saved states.
    pub prompt_cache: usize,
}

/// Token sequences a session needs to recognise, encoded once.
struct Markers {
    /// `<|im_start|>assistant\n`: what every rendering of an assistant turn starts with, so the
    /// state just after it survives re-rendering of the conversation.
    assistant_header: Vec<u32>,
    /// `<think>\n`: a prompt ending so opens a thought.
    think_open: Vec<u32>,
    think_end: Option<u32>,
    /// What closes a thought on budget, as the template renders `reasoning + '\n</think>\n\n'`,
    /// and the same when the reasoning already ends with a newline.
    close: Vec<u32>,
    close_after_newline: Vec<u32>,
    /// `\n\n`: what the template puts between `</think>` and the answer.
    answer_start: Vec<u32>,
}

impl Markers {
    fn new(lm: &LanguageModel) -> Result<Self> {
        let m = lm.model.config().family.chat_markers();
        Ok(Markers {
            assistant_header: lm.encode(m.assistant_header)?,
            think_open: lm.encode(m.think_open)?,
            think_end: lm.tokenizer.token_id(m.think_close),
            close: lm.encode(&format!("\n{}{}", m.think_close, m.answer_separator))?,
            close_after_newline: lm.encode(&format!("{}{}", m.think_close, m.answer_separator))?,
            answer_start: lm.encode(m.answer_separator)?,
        })
    }
}

/// A conversation with a shared [`LanguageModel`]: its messages, the model state, and a cache
/// of states saved at points that survive re-rendering the conversation.
///
/// Each turn renders the whole conversation with the chat template (as transformers would),
/// then continues from the longest prefix of it that the session still holds (the live state or
/// a saved one) and prefills only the rest. The Qwen3.5 template drops the reasoning of earlier
/// turns and re-renders their answers, so the state saved right after each prompt's
/// `<|im_start|>assistant\n` is what the next turn reuses; [`prepare`](Self::prepare) goes
/// further and prefills the previous answer as the next turn will render it.
pub struct ChatSession {
    lm: Arc<LanguageModel>,
    messages: Vec<Message>,
    state: SessionState,
    /// The tokens `state` has consumed.
    state_tokens: Vec<u32>,
    /// The images and videos among them (where they start, their pixels' hash).
    state_media: Vec<MediaMark>,
    cache: PromptCache,
    stats: CacheStats,
    cancel: CancelToken,
    markers: Arc<Markers>,
}

impl std::fmt::Debug for ChatSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatSession")
            .field("messages", &self.messages.len())
            .field("context_tokens", &self.state_tokens.len())
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl ChatSession {
    pub fn new(lm: Arc<LanguageModel>) -> Self {
        Self::with_options(lm, SessionOptions::default())
    }

    pub fn with_options(lm: Arc<LanguageModel>, options: SessionOptions) -> Self {
        let mut state = match options.max_context {
            Some(n) => lm.model.new_state_with_limit(n),
            None => lm.model.new_state(),
        };
        if options.drafting && lm.model.has_mtp() {
            // A fresh state of this model with a head: nothing to refuse.
            let _ = lm.model.enable_drafting(&mut state);
        }
        // Encoding these short literals cannot fail with a loaded tokenizer; empty markers would
        // only disable the features that use them.
        let markers = Arc::new(Markers::new(&lm).unwrap_or(Markers {
            assistant_header: Vec::new(),
            think_open: Vec::new(),
            think_end: None,
            close: Vec::new(),
            close_after_newline: Vec::new(),
            answer_start: Vec::new(),
        }));
        ChatSession {
            lm,
            messages: Vec::new(),
            state,
            state_tokens: Vec::new(),
            state_media: Vec::new(),
            cache: PromptCache::new(options.prompt_cache_bytes),
            stats: CacheStats::default(),
            cancel: CancelToken::new(),
            markers,
        }
    }

    pub fn model(&self) -> &Arc<LanguageModel> {
        &self.lm
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Replaces the conversation (e.g. one loaded from a file). Saved states stay usable for
    /// whatever prefix the new conversation shares with them.
    pub fn set_messages(&mut self, messages: Vec<Message>) {
        self.messages = messages;
    }

    /// Appends a message without generating (e.g. a tool result before [`respond`](Self::respond)).
    pub fn push(&mut self, message: Message) {
        self.messages.push(message);
    }

    /// Sets (or with `None` removes) the system message at the start of the conversation.
    pub fn set_system(&mut self, system: Option<&str>) {
        if self.messages.first().is_some_and(|m| m.role == "system") {
            self.messages.remove(0);
        }
        if let Some(text) = system {
            self.messages.insert(0, Message::system(text));
        }
    }

    /// Forgets the conversation and the live state. Saved states are kept (they are keyed by
    /// tokens, so they stay valid); [`clear_cache`](Self::clear_cache) drops them.
    pub fn reset(&mut self) {
        self.messages.clear();
        self.state.reset();
        self.state_tokens.clear();
        self.state_media.clear();
    }

    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    pub fn prompt_cache(&self) -> &PromptCache {
        &self.cache
    }

    pub fn prompt_cache_mut(&mut self) -> &mut PromptCache {
        &mut self.cache
    }

    /// Prompt-token reuse over the session's turns.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Tokens the live state holds.
    pub fn context_tokens(&self) -> usize {
        self.state_tokens.len()
    }

    pub fn memory(&self) -> MemoryFootprint {
        MemoryFootprint {
            weights: self.lm.model.weight_bytes(),
            state: self.state.cache_bytes(),
            prompt_cache: self.cache.bytes(),
        }
    }

    /// A handle that cancels this session's generation from any thread.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Adds `message` (normally a user message) and generates the assistant's reply, which is
    /// appended to the conversation (also when cancelled, with what was generated so far).
    pub fn send(
        &mut self,
        message: Message,
        params: &ChatParams,
        on_event: impl FnMut(Event<'_>),
    ) -> Result<Reply> {
        self.messages.push(message);
        let reply = self.respond(params, on_event);
        if reply.is_err() {
            self.messages.pop();
        }
        reply
    }

    /// Generates the assistant's reply to the conversation as it is and appends it.
    pub fn respond(&mut self, params: &ChatParams, mut on_event: impl FnMut(Event<'_>)) -> Result<Reply> {
        params.validate()?;
        let prompt = self.lm.prompt(&self.messages, true, params.enable_thinking)?;
        let thinking = self.opens_thought(prompt.ids());
        let reply = self.run(&prompt, params, &mut on_event)?;
        let mut answer = Message::assistant(reply.content.clone());
        if thinking {
            answer.reasoning_content = Some(reply.reasoning.clone());
        }
        self.messages.push(answer);
        Ok(reply)
    }

    /// Generates after exactly `prompt` (already rendered and tokenized), leaving the message
    /// history alone. Saved states are reused as for chat turns.
    pub fn complete(
        &mut self,
        prompt: &[u32],
        params: &ChatParams,
        on_event: impl FnMut(Event<'_>),
    ) -> Result<Reply> {
        self.complete_prompt(&Prompt::text(prompt.to_vec()), params, on_event)
    }

    /// [`complete`](Self::complete) for a prompt that may have images or videos (see
    /// [`LanguageModel::encode_prompt`] and [`LanguageModel::prompt`]).
    pub fn complete_prompt(
        &mut self,
        prompt: &Prompt,
        params: &ChatParams,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<Reply> {
        params.validate()?;
        self.run(prompt, params, &mut on_event)
    }

    /// Prefills the conversation as the next turn will render it (earlier answers without their
    /// reasoning), so that the next turn only processes the new message. Worth calling while
    /// waiting for the user; returns the number of tokens now held.
    pub fn prepare(&mut self, enable_thinking: Option<bool>) -> Result<usize> {
        let Some(last) = self.messages.last().filter(|m| m.role == "assistant") else {
            return Ok(self.state_tokens.len());
        };
        // After a tool call the next message is a tool response, and the template renders the
        // turn as generated (reasoning included): the live state already extends into it, and
        // preparing for a user message would throw that away.
        let calls_tool = last.tool_calls.as_ref().is_some_and(|c| !c.is_empty())
            || matches!(&last.content, crate::chat::MessageContent::Text(t) if t.contains("<tool_call>"));
        if calls_tool {
            return Ok(self.state_tokens.len());
        }
        // Render with a stand-in next question, so the template treats the last answer as
        // history, and keep everything before that question.
        let mut next = self.messages.clone();
        next.push(Message::user("?"));
        let text = self.lm.render_chat(&next, false, enable_thinking)?;
        let Some(cut) = text.rfind("<|im_start|>user") else {
            return Ok(self.state_tokens.len());
        };
        // Special tokens split the text before byte-level BPE runs, so the tokens of this prefix
        // are a prefix of the next prompt's tokens. Every attachment is in the history (the
        // stand-in question has none).
        let (images, videos) = message_media(&self.messages)?;
        let history = self.lm.encode_prompt(&text[..cut], &images, &videos)?;
        self.reuse_longest(&history, history.len());
        let held = self.state_tokens.len();
        if held < history.len() {
            let encoded = self.encode_media(&history, held)?;
            self.feed(&history, history.len(), encoded.as_ref())?;
            self.save_snapshot();
        }
        Ok(self.state_tokens.len())
    }

    fn opens_thought(&self, prompt: &[u32]) -> bool {
        let m = &self.markers;
        m.think_end.is_some() && !m.think_open.is_empty() && prompt.ends_with(&m.think_open)
    }

    /// Brings the live state to the longest prefix of `prompt` (at most `max_len` long) that the
    /// session holds: the live state itself, a saved state, or nothing. A prefix must have seen
    /// the same images and videos, not just the same tokens. Returns its length.
    /// How many tokens of `prompt` a turn beginning now would not feed: the live state or a
    /// saved one, whichever is the longer prefix of it (never all of it: a turn feeds at least
    /// one token). Changes nothing, not even the prompt cache's order of use; a scheduler asks
    /// it to choose the session that holds most of a request.
    pub fn reusable_prefix(&self, prompt: &Prompt) -> usize {
        let (tokens, media) = (prompt.ids(), prompt.media_marks());
        let max_len = tokens.len().saturating_sub(1);
        let live = self.state_tokens.len();
        let live = if live <= max_len && is_prefix(&self.state_tokens, &self.state_media, tokens, media) {
            live
        } else {
            0
        };
        live.max(self.cache.longest_prefix_len(tokens, media, max_len))
    }

    fn reuse_longest(&mut self, prompt: &Prompt, max_len: usize) -> usize {
        let (tokens, media) = (prompt.ids(), prompt.media_marks());
        let live = (self.state_tokens.len() <= max_len
            && is_prefix(&self.state_tokens, &self.state_media, tokens, media))
        .then_some(self.state_tokens.len());
        if let Some(snapshot) = self.cache.longest_prefix_with(tokens, media, max_len) {
            // The cache only holds this session's snapshots, so restoring cannot fail; were it
            // to, the live state is untouched and still valid.
            if live.is_none_or(|n| snapshot.len() > n) && self.state.restore(snapshot).is_ok() {
                let n = snapshot.len();
                self.state_tokens.clear();
                self.state_tokens.extend_from_slice(&tokens[..n]);
                self.state_media.clear();
                self.state_media.extend_from_slice(media_before(media, n));
                return n;
            }
        }
        if let Some(n) = live {
            return n;
        }
        self.state.reset();
        self.state_tokens.clear();
        self.state_media.clear();
        0
    }

    /// The tower's outputs for the images and videos of `prompt` from token `from` on (`None`
    /// for a text prompt). Attachments the state already holds are not encoded again.
    fn encode_media(&self, prompt: &Prompt, from: usize) -> Result<Option<EncodedMedia>> {
        if !prompt.has_media() {
            return Ok(None);
        }
        Ok(Some(self.lm.vision()?.encode(prompt, from)?))
    }

    /// Feeds the prompt's tokens from what the live state holds (a prefix of it) to `end`;
    /// `encoded` covers the prompt's media from there (`None` for text).
    fn feed(&mut self, prompt: &Prompt, end: usize, encoded: Option<&EncodedMedia>) -> Result<()> {
        let start = self.state_tokens.len();
        match encoded {
            Some(encoded) => {
                let piece = prompt.piece(encoded, start..end)?;
                self.lm.model.forward_embedded(&mut self.state, &piece.input(), Logits::None)?;
            }
            None => {
                self.lm.model.forward(&mut self.state, &prompt.ids()[start..end], Logits::None)?;
            }
        }
        self.state_tokens.extend_from_slice(&prompt.ids()[start..end]);
        self.state_media.clear();
        self.state_media.extend_from_slice(media_before(prompt.media_marks(), end));
        Ok(())
    }

    fn save_snapshot(&mut self) {
        let bytes = self.state.cache_bytes();
        if bytes <= self.cache.budget() && !self.cache.contains_with(&self.state_tokens, &self.state_media) {
            self.cache.insert_with(
                self.state_tokens.clone(),
                self.state_media.clone(),
                self.state.snapshot(),
                bytes,
            );
        }
    }

    /// One turn after `prompt`: reuse, prefill, decode.
    fn run(
        &mut self,
        prompt: &Prompt,
        params: &ChatParams,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Reply> {
        let mut turn = self.begin_prompt(prompt, params)?;
        while self.advance(&mut turn, on_event)? {}
        Ok(turn.finish(on_event))
    }

    /// Starts a turn after `prompt`: brings the live state to the longest prefix of it the
    /// session holds and saves a state after the last assistant header. The returned [`Turn`]
    /// says which tokens to feed next; [`advance`](Self::advance) feeds them (or a scheduler
    /// feeds many sessions' tokens together with [`ChatSession::advance_many`]).
    pub fn begin(&mut self, prompt: &[u32], params: &ChatParams) -> Result<Turn> {
        self.begin_prompt(&Prompt::text(prompt.to_vec()), params)
    }

    /// [`begin`](Self::begin) for a prompt that may have images or videos. The vision tower runs
    /// here, on the attachments no saved state covers.
    pub fn begin_prompt(&mut self, full: &Prompt, params: &ChatParams) -> Result<Turn> {
        self.start_turn(full, params, false)
    }

    /// [`begin`](Self::begin) without prefilling: the whole part of the prompt that no saved
    /// state covers becomes the turn's pending input, fed by the following steps
    /// ([`advance`](Self::advance), [`advance_many`](Self::advance_many)) in pieces of at most
    /// [`Turn::set_prefill_chunk`] tokens, so that a scheduler can start a long prompt without
    /// holding up the turns it is decoding. The state after the last assistant header is still
    /// saved (when the session has a prompt cache): a piece ends there. The first token is
    /// sampled after the last piece, and the reply is the one [`begin`](Self::begin) leads to
    /// (up to float rounding, as the prompt goes through the model in other pieces).
    pub fn begin_deferred(&mut self, prompt: &[u32], params: &ChatParams) -> Result<Turn> {
        self.begin_prompt_deferred(&Prompt::text(prompt.to_vec()), params)
    }

    /// [`begin_deferred`](Self::begin_deferred) for a prompt that may have images or videos.
    /// Such a prompt is not deferred: as with [`begin_prompt`](Self::begin_prompt), the tower
    /// runs and the prompt is prefilled up to the assistant header here, and its rest goes whole
    /// with the first step (its positions and embedding rows do not split into pieces).
    pub fn begin_prompt_deferred(&mut self, full: &Prompt, params: &ChatParams) -> Result<Turn> {
        self.start_turn(full, params, true)
    }

    /// Starts a turn after `full`; a deferred one leaves the prefill to the steps.
    fn start_turn(&mut self, full: &Prompt, params: &ChatParams, deferred: bool) -> Result<Turn> {
        let start = Instant::now();
        params.validate()?;
        let guided = params.constraint.as_ref().map(|c| self.lm.compile_constraint(c)).transpose()?;
        let prompt = full.ids();
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        if prompt.len() > self.state.max_len() {
            return Err(Error::InvalidInput(format!(
                "the prompt has {} tokens but the context holds {}",
                prompt.len(),
                self.state.max_len()
            )));
        }
        let thinking = self.opens_thought(prompt);
        // A thinking budget of zero closes the thought before the first sample: those tokens
        // go in with the prompt and must fit too.
        if thinking && params.max_thinking_tokens == Some(0) {
            let close = self.markers.close.len().max(self.markers.close_after_newline.len());
            if prompt.len() + close > self.state.max_len() {
                return Err(Error::InvalidInput(format!(
                    "the prompt has {} tokens and closing its thought takes {close} more, but the context holds {}",
                    prompt.len(),
                    self.state.max_len()
                )));
            }
        }
        // A deferred prompt meets the model only in a step, possibly batched with other
        // sessions' turns: a bad id there would fail them all.
        let vocab = self.lm.model.vocab_size();
        if let Some((i, id)) = prompt.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {id} at position {i} is outside the vocabulary (size {vocab})"
            )));
        }
        let speculator = params.speculative.clone().map(|options| self.speculator(options)).transpose()?;
        let mut sampler = Sampler::new(params.sampling.clone())?;
        sampler.observe_prompt(prompt);

        // At least one prompt token must be fed to get logits.
        let cached = self.reuse_longest(full, prompt.len() - 1);
        self.stats.lookups += 1;
        self.stats.hits += u64::from(cached > 0);
        self.stats.prompt_tokens += prompt.len() as u64;
        self.stats.cached_tokens += cached as u64;
        let h = &self.markers.assistant_header;
        let header_end =
            (!h.is_empty()).then(|| prompt.windows(h.len()).rposition(|w| w == h.as_slice())).flatten();
        let snapshot_at =
            header_end.map(|i| i + h.len()).filter(|&point| point > cached && point < prompt.len());
        let mut encoded = self.encode_media(full, cached)?;
        let feed_now = !deferred || encoded.is_some();
        if let Some(point) = snapshot_at.filter(|_| feed_now) {
            self.feed(full, point, encoded.as_ref())?;
            self.save_snapshot();
        }
        let held = self.state_tokens.len();
        // The rest of the prompt goes with the first step; drop the rows already fed.
        let media = match encoded.take() {
            Some(mut encoded) => {
                encoded.advance(full, held)?;
                Some(PendingMedia { prompt: full.clone(), encoded })
            }
            None => None,
        };

        let mut turn = Turn {
            lm: self.lm.clone(),
            markers: self.markers.clone(),
            out: TextOut::new(&params.stop, thinking),
            params: params.clone(),
            sampler,
            pending: prompt[held..].to_vec(),
            media,
            prefill_chunk: usize::MAX,
            // Without a cache to keep it, the state there is not worth a piece of its own.
            snapshot_at: snapshot_at.filter(|_| !feed_now && self.cache.budget() > 0),
            tokens: Vec::new(),
            logprobs: Vec::new(),
            prompt_len: prompt.len(),
            cached,
            sampled: 0,
            reasoning_tokens: 0,
            start,
            first_token_at: None,
            stop_string: None,
            finish: None,
            guided: guided.map(|text| Guided { text, active: !thinking }),
            speculator,
            error: None,
        };
        if thinking && params.max_thinking_tokens == Some(0) {
            turn.close_thought_now(&mut |_| {})?;
        }
        Ok(turn)
    }

    /// The speculator of a turn that decodes speculatively, if this session can: its state must
    /// have kept what the head drafts from since its first token.
    fn speculator(&mut self, options: crate::SpeculativeOptions) -> Result<Speculator> {
        if self.state.mtp.is_none() {
            return Err(Error::InvalidInput(if self.lm.model.has_mtp() {
                "speculative decoding needs a session that keeps the MTP head's state from its first \
                 token (SessionOptions::drafting)"
                    .into()
            } else {
                "this checkpoint has no MTP head (mtp.* tensors): speculative decoding is unavailable".into()
            }));
        }
        Speculator::new(&self.lm.model, &mut self.state, options)
    }

    /// Saves the state if it has just reached the point `turn` saves it at.
    fn save_if_reached(&mut self, turn: &mut Turn) {
        let Some(point) = turn.snapshot_at else { return };
        let held = self.state_tokens.len();
        if held >= point {
            if held == point {
                self.save_snapshot();
            }
            turn.snapshot_at = None;
        }
    }

    /// Feeds the tokens `turn` waits for and lets it sample the next one; a step through a
    /// long prompt (see [`Turn::set_prefill_chunk`]) may feed part of it and sample nothing.
    /// Returns false once the turn is over (then call [`Turn::finish`]).
    pub fn advance(&mut self, turn: &mut Turn, on_event: &mut dyn FnMut(Event<'_>)) -> Result<bool> {
        if turn.next_input(self).is_none() {
            return Ok(false);
        }
        let model = self.lm.clone();
        // The rest of a prompt with images or videos goes with its positions and embeddings.
        if let Some(media) = turn.media.take() {
            let logits = match feed_prompt_rest(&model.model, &mut self.state, &media, &turn.pending) {
                Ok(logits) => logits,
                Err(e) => {
                    // Nothing was fed: the turn can be retried as it was.
                    turn.media = Some(media);
                    return Err(e);
                }
            };
            self.state_tokens.extend_from_slice(&turn.pending);
            self.state_media.clear();
            self.state_media.extend_from_slice(media.prompt.media_marks());
            turn.accept(logits, on_event)?;
            return Ok(true);
        }
        if let Some(drafts) = turn.drafts(&model.model, &mut self.state)? {
            let pass = drafts.pass(turn.pending[0]);
            let rows = model.model.verify(&mut self.state, &pass)?;
            let (kept, outcome) = turn.accept_verified(rows, &drafts, on_event);
            model.model.keep_verified(&mut self.state, kept)?;
            self.state_tokens.extend_from_slice(&pass[..kept]);
            outcome?;
            return Ok(true);
        }
        let n = turn.piece_len(self.state_tokens.len());
        if n < turn.pending.len() {
            model.model.forward(&mut self.state, &turn.pending[..n], Logits::None)?;
            self.state_tokens.extend(turn.pending.drain(..n));
            self.save_if_reached(turn);
            return Ok(true);
        }
        let logits = model.model.forward(&mut self.state, &turn.pending, Logits::Last)?;
        self.state_tokens.extend_from_slice(&turn.pending);
        turn.accept(logits, on_event)?;
        Ok(true)
    }

    /// Advances several sessions' turns with one pass over the weights: every turn's pending
    /// tokens (a piece of a prompt, or the last sampled token) go through the model together.
    /// Turns that are over are skipped; `on_event(i, event)` reports turn `i`'s output. Returns
    /// how many turns took a step (a step through a prompt may sample nothing). A model error
    /// in the batch leaves every state in it unchanged and is returned. An error of one turn's
    /// own (its constraint allows no token its sampling parameters leave possible, …) ends that
    /// turn alone, which keeps it for [`Turn::take_error`]; the others go on. The rest of a
    /// prompt with images or videos (positions and rows of its own) is fed alone, before the
    /// batch, as [`advance`](Self::advance) does.
    pub fn advance_many(
        sessions: &mut [&mut ChatSession],
        turns: &mut [&mut Turn],
        mut on_event: impl FnMut(usize, Event<'_>),
    ) -> Result<usize> {
        assert_eq!(sessions.len(), turns.len(), "one turn per session");
        let Some(first) = sessions.first() else { return Ok(0) };
        let lm = first.lm.clone();
        // Each turn in the batch, with how many of its pending tokens this step feeds, or the
        // drafts it verifies.
        let mut active = Vec::with_capacity(sessions.len());
        let mut alone = 0;
        for (i, (session, turn)) in sessions.iter_mut().zip(turns.iter_mut()).enumerate() {
            assert!(Arc::ptr_eq(&session.lm, &lm), "sessions of one batch share a model");
            if turn.media.is_some() {
                match session.advance(turn, &mut |e| on_event(i, e)) {
                    Ok(stepped) => alone += usize::from(stepped),
                    // Fed, then failed while sampling: that turn is over, the batch goes on.
                    Err(e) if turn.is_finished() => {
                        turn.error = Some(e);
                        alone += 1;
                    }
                    Err(e) => return Err(e),
                }
            } else if turn.next_input(session).is_some() {
                match turn.drafts(&lm.model, &mut session.state) {
                    Ok(Some(drafts)) => {
                        let pass = drafts.pass(turn.pending[0]);
                        active.push((i, pass.len(), Some((drafts, pass))));
                    }
                    Ok(None) => active.push((i, turn.piece_len(session.state_tokens.len()), None)),
                    // Nothing was fed: the turn ends alone.
                    Err(e) => {
                        turn.finish = Some(FinishReason::Cancelled);
                        turn.error = Some(e);
                        alone += 1;
                    }
                }
            }
        }
        if active.is_empty() {
            return Ok(alone);
        }
        // The tokens are recorded first: the borrows of the states below last as long as the
        // logits, and a rejected batch is rolled back. A verification pass records the tokens it
        // keeps once it knows them.
        for (i, n, verifying) in &active {
            if verifying.is_none() {
                sessions[*i].state_tokens.extend_from_slice(&turns[*i].pending[..*n]);
            }
        }
        let mut states = Vec::with_capacity(active.len());
        let mut inputs = Vec::with_capacity(active.len());
        let mut rest = &mut sessions[..];
        let mut taken = 0;
        for (i, n, verifying) in &active {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(i - taken + 1);
            states.push(&mut head[i - taken].state);
            inputs.push(match verifying {
                Some((_, pass)) => pass.as_slice(),
                None => &turns[*i].pending[..*n],
            });
            rest = tail;
            taken = i + 1;
        }
        let verify: Vec<bool> = active.iter().map(|(_, _, v)| v.is_some()).collect();
        let batch = if verify.contains(&true) {
            lm.model.verify_batch(&mut states, &inputs, &verify)
        } else {
            lm.model.forward_batch(&mut states, &inputs)
        };
        let logits = match batch {
            Ok(logits) => logits,
            Err(e) => {
                drop(states);
                for (i, _, _) in &active {
                    let held = sessions[*i].state.len();
                    sessions[*i].state_tokens.truncate(held);
                }
                return Err(e);
            }
        };
        // A turn samples after the last piece of its prompt only; the logits after the other
        // pieces are not needed. A verifying turn has a row per token of its pass.
        let vocab = lm.model.vocab_size();
        let mut row = 0;
        let mut kept = vec![0; active.len()];
        for (j, (i, n, verifying)) in active.iter().enumerate() {
            let turn = &mut *turns[*i];
            let emit = &mut |e: Event<'_>| on_event(*i, e);
            let outcome = match verifying {
                Some((drafts, pass)) => {
                    let rows = &logits[row * vocab..(row + pass.len()) * vocab];
                    row += pass.len();
                    let outcome;
                    (kept[j], outcome) = turn.accept_verified(rows, drafts, emit);
                    outcome
                }
                None if *n < turn.pending.len() => {
                    row += 1;
                    turn.pending.drain(..*n);
                    Ok(())
                }
                None => {
                    row += 1;
                    turn.accept(&logits[(row - 1) * vocab..row * vocab], emit)
                }
            };
            if let Err(e) = outcome {
                turn.error = Some(e);
            }
        }
        drop(states);
        for (j, (i, _, verifying)) in active.iter().enumerate() {
            if let Some((_, pass)) = verifying {
                let session = &mut *sessions[*i];
                if let Err(e) = lm.model.keep_verified(&mut session.state, kept[j]) {
                    // Cannot happen for a pass just verified; were it to, the state is not to
                    // be trusted, and the turn must not go on with it.
                    turns[*i].finish.get_or_insert(FinishReason::Cancelled);
                    turns[*i].error.get_or_insert(e);
                    session.state.reset();
                    session.state_tokens.clear();
                    session.state_media.clear();
                    continue;
                }
                session.state_tokens.extend_from_slice(&pass[..kept[j]]);
            }
            sessions[*i].save_if_reached(turns[*i]);
        }
        Ok(alone + active.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_guard_spots_loops_of_any_period() {
        let g = RepetitionGuard { max_ngram: 4, min_repeats: 3, min_tokens: 6 };
        assert!(g.is_looping(&[9, 1, 1, 1, 1, 1, 1]), "period 1 needs 6 tokens");
        assert!(!g.is_looping(&[9, 1, 1, 1, 1, 1]));
        assert!(g.is_looping(&[1, 2, 3, 1, 2, 3, 1, 2, 3]), "period 3, three times");
        assert!(!g.is_looping(&[1, 2, 3, 1, 2, 3, 1, 2, 4]));
        assert!(!g.is_looping(&[1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5]), "period 5 > max_ngram");
        assert!(!g.is_looping(&[]));
        // Absurd bounds end at once instead of looping for ever.
        let huge = RepetitionGuard { max_ngram: usize::MAX, min_repeats: usize::MAX, min_tokens: usize::MAX };
        assert!(!huge.is_looping(&[1; 64]), "no n-gram fits usize::MAX repeats");
        let wide = RepetitionGuard { max_ngram: usize::MAX, ..g };
        assert!(wide.is_looping(&[1, 2, 3, 1, 2, 3, 1, 2, 3]));
    }

    #[test]
    fn cancel_tokens_are_shared_and_consumed() {
        let a = CancelToken::new();
        let b = a.clone();
        std::thread::spawn(move || b.cancel()).join().unwrap();
        assert!(a.is_cancelled());
        assert!(a.take());
        assert!(!a.is_cancelled());
    }
}
