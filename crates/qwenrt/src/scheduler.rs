//! Continuous batching: many requests on one model, every step one pass over the weights.
//!
//! A [`Scheduler`] owns a fixed number of slots, each a [`ChatSession`] with its live state and
//! prompt cache. [`start`](Scheduler::start) puts a request in the free slot whose session can
//! reuse the most of its prompt (the least recently used among equals, so new conversations
//! spread over the slots and each keeps its state for its next turn) and leaves the prompt to the
//! steps. [`step`](Scheduler::step) feeds every running request's pending tokens through the model
//! together: decoding requests take one token each, and the requests still prefilling share a
//! budget of prompt tokens per step in order of arrival, so a long prompt never stalls the streams
//! already running and prompts that arrive together are prefilled together. Requests join and
//! leave between steps. It is synchronous and owns no thread: a server calls it from its worker,
//! a library user from wherever they like.
//!
//! ```no_run
//! # use std::sync::Arc;
//! use qwenrt::scheduler::{Scheduler, SchedulerOptions};
//! use qwenrt::{chat::Message, Event, LanguageModel, Prompt};
//! # let lm = Arc::new(LanguageModel::load("Qwen3.5-0.8B".as_ref())?);
//! let mut scheduler = Scheduler::new(lm.clone(), SchedulerOptions::default());
//! for (id, question) in ["Hello!", "What is a delta rule?"].into_iter().enumerate() {
//!     let ids = lm.encode(&lm.render_chat(&[Message::user(question)], true, None)?)?;
//!     scheduler.start(id as u64, &Prompt::text(ids), &lm.default_params())?;
//! }
//! while scheduler.running() > 0 {
//!     for (id, outcome) in scheduler.step(&mut |id, event| {
//!         if let Event::Content(text) = event {
//!             print!("[{id}] {text}");
//!         }
//!     }) {
//!         println!("\n[{id}] ended: {:?}", outcome.map(|reply| reply.finish_reason));
//!     }
//! }
//! # Ok::<(), qwenrt::Error>(())
//! ```

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::lm::LanguageModel;
use crate::session::{ChatParams, ChatSession, Event, Reply, SessionOptions, Turn};
use crate::vision::Prompt;

/// Identifies a request between its caller and the scheduler.
pub type RequestId = u64;

/// Big enough that prefill runs near its full rate (each step also pays a pass over the weights)
/// and that several chat prompts arriving together start in one step; a long prompt then holds
/// up the running streams for one such step per 256 tokens instead of for its whole prefill.
pub const DEFAULT_PREFILL_CHUNK: usize = 256;

/// How a scheduler is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerOptions {
    /// Requests that run at once, each with a live state (and a prompt cache) of its own.
    pub slots: usize,
    /// Most tokens a sequence may hold, prompt and answer.
    pub max_context: usize,
    /// Each slot's prompt cache budget, in bytes (0: no reuse of saved states).
    pub prompt_cache_bytes: usize,
    /// Most prompt tokens one step prefills, shared by the requests still prefilling.
    pub prefill_chunk: usize,
    /// Slots keep what the MTP head drafts from, so that requests can decode speculatively
    /// (see [`SessionOptions::drafting`]).
    pub drafting: bool,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            slots: 4,
            max_context: 32_768,
            prompt_cache_bytes: crate::prompt_cache::DEFAULT_PROMPT_CACHE_BYTES,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
            drafting: false,
        }
    }
}

/// Why a request ended without a reply. Unlike [`Error`] it can be cloned: one failed step
/// fails every request in it with the same reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The request cannot be served as given (a token outside the vocabulary, a constraint no
    /// token can satisfy, …).
    #[error("{0}")]
    Invalid(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidInput(message) => Failure::Invalid(message),
            other => Failure::Internal(other.to_string()),
        }
    }
}

/// A running request: its slot and its turn in progress.
struct Active {
    id: RequestId,
    slot: usize,
    turn: Turn,
}

struct Slot {
    session: ChatSession,
    last_used: u64,
}

/// Runs requests on a shared model, all running ones advancing together (see the module docs).
pub struct Scheduler {
    lm: Arc<LanguageModel>,
    session_options: SessionOptions,
    slots: Vec<Slot>,
    /// Counts requests, to find the least recently used slot.
    clock: u64,
    active: Vec<Active>,
    prefill_chunk: usize,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("slots", &self.slots.len())
            .field("running", &self.active.len())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    pub fn new(lm: Arc<LanguageModel>, options: SchedulerOptions) -> Self {
        let session_options = SessionOptions {
            prompt_cache_bytes: options.prompt_cache_bytes,
            max_context: Some(options.max_context),
            drafting: options.drafting,
        };
        let slots = (0..options.slots.max(1))
            .map(|_| Slot { session: ChatSession::with_options(lm.clone(), session_options), last_used: 0 })
            .collect();
        Scheduler {
            lm,
            session_options,
            slots,
            clock: 0,
            active: Vec::new(),
            prefill_chunk: options.prefill_chunk.max(1),
        }
    }

    /// Most requests that run at once.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.active.len()
    }

    /// Tokens the session of a running request holds (its prompt goes in over the steps).
    pub fn context_tokens(&self, id: RequestId) -> Option<usize> {
        let active = self.active.iter().find(|a| a.id == id)?;
        Some(self.slots[active.slot].session.context_tokens())
    }

    /// Takes on a request (after its prompt, generate under `params`). Fails if every slot is
    /// busy or the turn cannot begin (see [`ChatSession::begin_deferred`]); then nothing runs.
    pub fn start(&mut self, id: RequestId, prompt: &Prompt, params: &ChatParams) -> Result<()> {
        if self.active.iter().any(|a| a.id == id) {
            return Err(Error::InvalidInput(format!("request {id} is already running")));
        }
        let slot = self.pick(prompt).ok_or_else(|| {
            Error::InvalidInput(format!("all {} slots are busy: wait for a request to end", self.slots.len()))
        })?;
        self.clock += 1;
        self.slots[slot].last_used = self.clock;
        let turn = self.slots[slot].session.begin_prompt_deferred(prompt, params)?;
        self.active.push(Active { id, slot, turn });
        Ok(())
    }

    /// The free slot that can reuse the most of `prompt`; among equals the least recently used.
    fn pick(&self, prompt: &Prompt) -> Option<usize> {
        (0..self.slots.len()).filter(|&i| self.active.iter().all(|a| a.slot != i)).max_by_key(|&i| {
            let slot = &self.slots[i];
            (slot.session.reusable_prefix(prompt), std::cmp::Reverse(slot.last_used))
        })
    }

    /// Advances every running request by one step (one model pass for all of them), streaming
    /// through `on_event` (never [`Event::Done`]: the reply comes back here). Returns the
    /// requests that ended, with their reply, or why they failed: a request whose own sampling
    /// failed fails alone; a model error fails every request of the step, whose sessions start
    /// afresh.
    pub fn step(
        &mut self,
        on_event: &mut dyn FnMut(RequestId, Event<'_>),
    ) -> Vec<(RequestId, std::result::Result<Reply, Failure>)> {
        let waiting = self.share_prefill_budget();
        // Pair each active turn with its slot's session, in slot order (disjoint borrows).
        self.active.sort_by_key(|a| a.slot);
        let mut sessions = Vec::with_capacity(self.active.len());
        let mut turns = Vec::with_capacity(self.active.len());
        let mut ids = Vec::with_capacity(self.active.len());
        let mut pending = self.active.iter_mut().peekable();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if pending.peek().is_some_and(|a| a.slot == i) {
                let active = pending.next().expect("peeked");
                if waiting.contains(&active.id) {
                    continue;
                }
                sessions.push(&mut slot.session);
                turns.push(&mut active.turn);
                ids.push(active.id);
            }
        }
        let stepped = ChatSession::advance_many(&mut sessions, &mut turns, |i, event| {
            if !matches!(event, Event::Done(_)) {
                on_event(ids[i], event)
            }
        });
        drop((sessions, turns));
        if let Err(e) = stepped {
            // The batch was rejected as a whole (states unchanged): every request in it fails.
            let failure = Failure::from(e);
            let (failed, kept): (Vec<Active>, Vec<Active>) =
                std::mem::take(&mut self.active).into_iter().partition(|a| !waiting.contains(&a.id));
            self.active = kept;
            return failed
                .into_iter()
                .map(|active| {
                    self.slots[active.slot].session.reset();
                    (active.id, Err(failure.clone()))
                })
                .collect();
        }
        let mut ended = Vec::new();
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].turn.is_finished() {
                let mut active = self.active.swap_remove(i);
                let failure = active.turn.take_error();
                let id = active.id;
                // Finishing releases text held back (a possible stop string, a split character).
                let reply = active.turn.finish(&mut |event| {
                    if !matches!(event, Event::Done(_)) {
                        on_event(id, event)
                    }
                });
                ended.push((active.id, failure.map_or(Ok(reply), |e| Err(Failure::from(e)))));
            } else {
                i += 1;
            }
        }
        ended
    }

    /// Shares this step's prompt tokens among the requests still prefilling, oldest first, so
    /// that the earliest request gets its first token first; returns the requests that wait for
    /// the next step. Decoding requests always take their step.
    fn share_prefill_budget(&mut self) -> Vec<RequestId> {
        self.active.sort_by_key(|a| a.id);
        let mut budget = self.prefill_chunk;
        let mut waiting = Vec::new();
        for active in &mut self.active {
            let remaining = active.turn.prefill_remaining();
            if remaining == 0 {
                continue;
            }
            if budget == 0 {
                waiting.push(active.id);
                continue;
            }
            let share = remaining.min(budget);
            active.turn.set_prefill_chunk(share);
            budget -= share;
        }
        waiting
    }

    /// Ends a running request early (its client left); its session keeps what it fed.
    pub fn cancel(&mut self, id: RequestId) -> Option<Reply> {
        let index = self.active.iter().position(|a| a.id == id)?;
        Some(self.active.swap_remove(index).turn.finish(&mut |_| {}))
    }

    /// Drops every running request and gives their slots fresh sessions: for a caller that
    /// caught a panic out of [`step`](Self::step), after which those states are not to be trusted.
    pub fn recover(&mut self) {
        for active in std::mem::take(&mut self.active) {
            self.slots[active.slot].session =
                ChatSession::with_options(self.lm.clone(), self.session_options);
        }
    }
}
