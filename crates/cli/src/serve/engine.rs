//! The engine behind the routes: a bounded queue of generation jobs and a continuous-batching
//! scheduler on a dedicated worker thread, never on the async runtime.
//!
//! Routes see only [`Engine::submit`], the [`JobHandle`] it returns (events through a channel;
//! dropping it cancels the job) and [`Engine::status`]. Behind them, up to `slots` jobs run at
//! once, each on its own chat session (with its prompt cache): every step feeds all running
//! jobs' next tokens through the model together — one pass over the weights serves every
//! sequence — then each job samples and streams. Jobs join as soon as a slot is free and leave
//! as soon as they end, between steps. A new job's prompt is prefilled in pieces over the next
//! steps, within a budget of prompt tokens per step shared in order of arrival, in the same passes
//! as the others' decode steps: running streams keep flowing while a long prompt comes in, and
//! prompts that arrive together are prefilled together.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use qwenrt::{
    ChatParams, ChatSession, Event, FinishReason, LanguageModel, SessionOptions, TokenLogprob, Turn, Usage,
};
use tokio::sync::mpsc;

/// How the engine is set up.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Conversations whose state is kept live at once (`--parallel`).
    pub slots: usize,
    /// Jobs that may wait for a slot; more are refused (`--queue`).
    pub queue_capacity: usize,
    /// Most tokens a sequence may hold, prompt and answer (`--ctx`).
    pub max_context: usize,
    /// Byte budget of each slot's prompt cache.
    pub prompt_cache_bytes: usize,
    /// Most prompt tokens one step prefills, over all the jobs whose prompt is being prefilled
    /// (`--prefill-chunk`); decoding jobs add one token each. Smaller keeps streams steadier while
    /// prompts arrive, larger prefills faster.
    pub prefill_chunk: usize,
}

/// Big enough that prefill runs near its full rate (each step also pays a pass over the weights)
/// and that several chat prompts arriving together start in one step; a long prompt then holds
/// up the running streams for one such step per token instead of for its whole prefill.
pub const DEFAULT_PREFILL_CHUNK: usize = 256;

/// One generation: continue `prompt` (rendered and tokenized) under `params`.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: ChatParams,
    /// For a prompt with images or videos: the whole prompt (`prompt` is its ids).
    pub media: Option<qwenrt::Prompt>,
}

/// What a job streams back, in order; `Done` or `Failed` comes last.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// A sampled token, before its text (only when `params.logprobs` asks for it).
    Token(TokenLogprob),
    Reasoning(String),
    Content(String),
    Done(Completion),
    Failed(JobError),
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// Why a job produced no completion.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// The request cannot be served as given (e.g. a token id outside the vocabulary).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

/// Why a job was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is busy: {capacity} requests are already waiting for a slot; retry later")]
    QueueFull { capacity: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Load, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStatus {
    pub slots: usize,
    /// Slots working on a job.
    pub busy: usize,
    /// Jobs waiting for a slot.
    pub queued: usize,
    pub queue_capacity: usize,
}

/// A submitted job: its events, and its cancellation when dropped (a client that goes away
/// frees its slot).
#[derive(Debug)]
pub struct JobHandle {
    events: mpsc::UnboundedReceiver<JobEvent>,
    control: Arc<JobControl>,
}

impl JobHandle {
    /// The next event; `None` if the engine stopped before the job finished.
    pub async fn next(&mut self) -> Option<JobEvent> {
        self.events.recv().await
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.control.cancel();
    }
}

/// Shared between a job's handle and the worker.
#[derive(Debug, Default)]
pub(crate) struct JobControl {
    cancelled: AtomicBool,
}

impl JobControl {
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// Identifies a job between the worker and the backend.
pub(crate) type JobId = u64;

/// Runs jobs, all running ones advancing together; called on the worker thread only.
pub(crate) trait Backend: Send + 'static {
    /// Most jobs that run at once.
    fn capacity(&self) -> usize;

    /// Takes on `job` (fewer than `capacity` jobs are running). An error ends the job at once.
    fn start(&mut self, id: JobId, job: &Job) -> Result<(), JobError>;

    /// Advances every running job by one step (one model pass for all of them), streaming
    /// through `emit`; returns the jobs that ended, with how.
    fn step(&mut self, emit: &mut dyn FnMut(JobId, JobEvent)) -> Vec<(JobId, Result<Completion, JobError>)>;

    /// Ends a running job early (its client left or the server stops).
    fn cancel(&mut self, id: JobId) -> Result<Completion, JobError>;

    /// Called after `start` or `step` panicked: drops every running job and puts the backend
    /// back into a usable state.
    fn recover(&mut self) {}
}

/// The job queue and the thread that serves it.
pub struct Engine {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a job arrives or shutdown starts.
    wake: Condvar,
    slots: usize,
    capacity: usize,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Queued>,
    /// Jobs the worker has taken.
    running: Vec<Arc<JobControl>>,
    shutting_down: bool,
}

struct Queued {
    job: Job,
    control: Arc<JobControl>,
    events: mpsc::UnboundedSender<JobEvent>,
}

impl Engine {
    /// Starts the worker thread with `options.slots` chat sessions on `lm`.
    pub fn start(lm: Arc<LanguageModel>, options: EngineOptions) -> std::io::Result<Self> {
        let pool = SessionPool::new(lm, &options);
        Self::with_backend(pool, options.slots, options.queue_capacity)
    }

    pub(crate) fn with_backend(
        backend: impl Backend,
        slots: usize,
        queue_capacity: usize,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            slots,
            capacity: queue_capacity,
        });
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new().name("qwenrt-engine".into()).spawn(move || work(&shared, backend))?
        };
        Ok(Engine { shared, worker: Mutex::new(Some(worker)) })
    }

    /// Queues a job. Refused when `queue_capacity` jobs are already waiting for the worker.
    pub fn submit(&self, job: Job) -> Result<JobHandle, SubmitError> {
        let mut queue = self.shared.lock();
        if queue.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        if queue.waiting.len() >= self.shared.capacity {
            return Err(SubmitError::QueueFull { capacity: self.shared.capacity });
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let control = Arc::new(JobControl::default());
        queue.waiting.push_back(Queued { job, control: control.clone(), events });
        drop(queue);
        self.shared.wake.notify_one();
        Ok(JobHandle { events: receiver, control })
    }

    pub fn status(&self) -> EngineStatus {
        let queue = self.shared.lock();
        // Jobs whose client left are skipped by the worker, so they are not counted.
        let queued = queue.waiting.iter().filter(|q| !q.control.is_cancelled()).count();
        EngineStatus {
            slots: self.shared.slots,
            busy: queue.running.len(),
            queued,
            queue_capacity: self.shared.capacity,
        }
    }

    /// Refuses new jobs, drops the waiting ones (their handles see the end of their events) and
    /// cancels the running ones. Returns at once; the worker thread exits after its current step.
    pub fn shutdown(&self) {
        let mut queue = self.shared.lock();
        queue.shutting_down = true;
        queue.waiting.clear();
        for running in &queue.running {
            running.cancel();
        }
        drop(queue);
        self.shared.wake.notify_all();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
        let worker = self.worker.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(worker) = worker {
            // A worker that panicked has nothing left to clean up.
            let _ = worker.join();
        }
    }
}

impl Shared {
    /// The queue stays consistent whatever panicked while holding it (each change is one
    /// statement), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A job the worker has taken: where its events go and how its client cancels it.
struct Running {
    id: JobId,
    control: Arc<JobControl>,
    events: mpsc::UnboundedSender<JobEvent>,
}

impl Running {
    /// A send fails only when the client has gone, which the job notices as a cancellation.
    fn send(&self, event: JobEvent) {
        drop(self.events.send(event));
    }
}

/// The worker thread: admits waiting jobs into free slots, advances the running ones together,
/// and retires them as they end, until shutdown.
fn work(shared: &Shared, mut backend: impl Backend) {
    let mut running: Vec<Running> = Vec::new();
    let mut next_id: JobId = 0;
    loop {
        // Admit what fits; sleep while there is nothing to do.
        let admitted = {
            let mut queue = shared.lock();
            loop {
                if queue.shutting_down {
                    drop(queue);
                    for job in running.drain(..) {
                        let end = backend.cancel(job.id);
                        job.send(end.map_or_else(JobEvent::Failed, JobEvent::Done));
                    }
                    shared.lock().running.clear();
                    return;
                }
                let mut admitted = Vec::new();
                while running.len() + admitted.len() < backend.capacity() {
                    match queue.waiting.pop_front() {
                        Some(job) if job.control.is_cancelled() => continue,
                        Some(job) => {
                            queue.running.push(job.control.clone());
                            admitted.push(job);
                        }
                        None => break,
                    }
                }
                if !admitted.is_empty() || !running.is_empty() {
                    break admitted;
                }
                queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        };
        for queued in admitted {
            next_id += 1;
            let job = Running { id: next_id, control: queued.control, events: queued.events };
            match catch_unwind(AssertUnwindSafe(|| backend.start(job.id, &queued.job))) {
                Ok(Ok(())) => running.push(job),
                Ok(Err(error)) => {
                    job.send(JobEvent::Failed(error));
                    retire(shared, &job);
                }
                Err(_) => {
                    job.send(JobEvent::Failed(JobError::Internal(
                        "the generation failed unexpectedly".into(),
                    )));
                    retire(shared, &job);
                    fail_all(shared, &mut backend, &mut running);
                }
            }
        }
        // Clients that left free their slot before the next pass.
        running.retain(|job| {
            if !job.control.is_cancelled() {
                return true;
            }
            let _ = backend.cancel(job.id);
            retire(shared, job);
            false
        });
        if running.is_empty() {
            continue;
        }
        let step = catch_unwind(AssertUnwindSafe(|| {
            backend.step(&mut |id, event| {
                if let Some(job) = running.iter().find(|j| j.id == id) {
                    job.send(event);
                }
            })
        }));
        match step {
            Ok(ended) => {
                for (id, end) in ended {
                    if let Some(at) = running.iter().position(|j| j.id == id) {
                        let job = running.swap_remove(at);
                        job.send(end.map_or_else(JobEvent::Failed, JobEvent::Done));
                        retire(shared, &job);
                    }
                }
            }
            Err(_) => fail_all(shared, &mut backend, &mut running),
        }
    }
}

/// Takes a finished job off the shared list of running ones.
fn retire(shared: &Shared, job: &Running) {
    shared.lock().running.retain(|c| !Arc::ptr_eq(c, &job.control));
}

/// After a panic inside the backend: every running job fails and the backend starts afresh.
fn fail_all(shared: &Shared, backend: &mut impl Backend, running: &mut Vec<Running>) {
    backend.recover();
    for job in running.drain(..) {
        job.send(JobEvent::Failed(JobError::Internal("the generation failed unexpectedly".into())));
        retire(shared, &job);
    }
}

/// How many token sequences a slot remembers for choosing it again.
const REMEMBERED_SEQUENCES: usize = 8;

/// The chat sessions jobs run on, one job per session at a time.
struct SessionPool {
    lm: Arc<LanguageModel>,
    session_options: SessionOptions,
    slots: Vec<Slot>,
    /// Counts jobs, to find the least recently used slot.
    clock: u64,
    active: Vec<Active>,
    /// `<|im_start|>assistant\n`: where a session saves the state it can reuse next turn.
    assistant_header: Vec<u32>,
    /// Most prompt tokens one step prefills.
    prefill_chunk: usize,
}

/// A running job: its slot and its turn in progress.
struct Active {
    id: JobId,
    slot: usize,
    turn: Turn,
    prompt: Vec<u32>,
}

struct Slot {
    session: ChatSession,
    /// Token sequences the session holds a state for (as far as we know: its prompt cache may
    /// have evicted some), newest last.
    held: VecDeque<Vec<u32>>,
    last_used: u64,
}

impl Slot {
    fn new(lm: &Arc<LanguageModel>, options: SessionOptions) -> Self {
        Slot { session: ChatSession::with_options(lm.clone(), options), held: VecDeque::new(), last_used: 0 }
    }

    /// Length of the longest held sequence that `prompt` starts with: what the session can reuse.
    fn reusable(&self, prompt: &[u32]) -> usize {
        self.held.iter().filter(|seq| prompt.starts_with(seq)).map(Vec::len).max().unwrap_or(0)
    }

    fn remember(&mut self, sequence: Vec<u32>) {
        if sequence.is_empty() || self.held.contains(&sequence) {
            return;
        }
        if self.held.len() == REMEMBERED_SEQUENCES {
            self.held.pop_front();
        }
        self.held.push_back(sequence);
    }
}

impl SessionPool {
    fn new(lm: Arc<LanguageModel>, options: &EngineOptions) -> Self {
        let session_options = SessionOptions {
            prompt_cache_bytes: options.prompt_cache_bytes,
            max_context: Some(options.max_context),
        };
        let slots = (0..options.slots.max(1)).map(|_| Slot::new(&lm, session_options)).collect();
        let assistant_header = lm.encode("<|im_start|>assistant\n").unwrap_or_default();
        SessionPool {
            lm,
            session_options,
            slots,
            clock: 0,
            active: Vec::new(),
            assistant_header,
            prefill_chunk: options.prefill_chunk.max(1),
        }
    }

    /// The free slot that can reuse the most of `prompt`; among equals the least recently used,
    /// so new conversations spread over the slots and each keeps its state for its next turn.
    fn pick(&self, prompt: &[u32]) -> Option<usize> {
        (0..self.slots.len())
            .filter(|&i| self.active.iter().all(|a| a.slot != i))
            .max_by_key(|&i| (self.slots[i].reusable(prompt), std::cmp::Reverse(self.slots[i].last_used)))
    }

    /// What the session will hold after this job: the state saved after the prompt's last
    /// assistant header, and the live state (prompt and answer but the last sampled token), as
    /// far as the job got: one cancelled during its prefill has fed only part of its prompt.
    fn remember(&mut self, slot: usize, prompt: &[u32], answer: &[u32]) {
        let held = self.slots[slot].session.context_tokens();
        let header = &self.assistant_header;
        if !header.is_empty() {
            if let Some(at) = prompt.windows(header.len()).rposition(|w| w == header.as_slice()) {
                let end = at + header.len();
                if end <= held {
                    self.slots[slot].remember(prompt[..end].to_vec());
                }
            }
        }
        let mut live = prompt.to_vec();
        live.extend_from_slice(&answer[..answer.len().saturating_sub(1)]);
        live.truncate(held);
        self.slots[slot].remember(live);
    }

    /// Shares this step's prompt tokens among the jobs still prefilling, oldest first, so that
    /// the earliest request gets its first token first; returns the jobs that wait for the next
    /// step. Decoding jobs always take their step.
    fn share_prefill_budget(&mut self) -> Vec<JobId> {
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

    /// Ends the active job at `index` and returns how it went.
    fn finish(&mut self, index: usize, emit: &mut dyn FnMut(JobId, JobEvent)) -> Completion {
        let active = self.active.swap_remove(index);
        let stop_ids = self.lm.stop_ids().to_vec();
        let id = active.id;
        let reply = active.turn.finish(&mut |event| forward_event(&stop_ids, event, &mut |e| emit(id, e)));
        self.remember(active.slot, &active.prompt, &reply.tokens);
        Completion { finish_reason: reply.finish_reason, usage: reply.usage }
    }
}

/// Turns a session event into what the job streams.
fn forward_event(stop_ids: &[u32], event: Event<'_>, emit: &mut dyn FnMut(JobEvent)) {
    match event {
        // The end-of-turn token is not part of the answer (OpenAI does not list it either).
        Event::Token(info) if stop_ids.contains(&info.id) => {}
        Event::Token(info) => emit(JobEvent::Token(info.clone())),
        Event::Reasoning(text) => emit(JobEvent::Reasoning(text.to_owned())),
        Event::Content(text) => emit(JobEvent::Content(text.to_owned())),
        // The worker sends the completion itself.
        Event::Done(_) => {}
    }
}

fn invalid(e: qwenrt::Error) -> JobError {
    match e {
        qwenrt::Error::InvalidInput(message) => JobError::Invalid(message),
        other => JobError::Internal(other.to_string()),
    }
}

impl Backend for SessionPool {
    fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn start(&mut self, id: JobId, job: &Job) -> Result<(), JobError> {
        let slot = self.pick(&job.prompt).ok_or_else(|| JobError::Internal("no free slot".into()))?;
        self.clock += 1;
        self.slots[slot].last_used = self.clock;
        let session = &mut self.slots[slot].session;
        // The prompt is prefilled by the following steps, next to the running jobs' decoding.
        let turn = match &job.media {
            Some(prompt) => session.begin_prompt_deferred(prompt, &job.params),
            None => session.begin_deferred(&job.prompt, &job.params),
        }
        .map_err(invalid)?;
        self.active.push(Active { id, slot, turn, prompt: job.prompt.clone() });
        Ok(())
    }

    fn step(&mut self, emit: &mut dyn FnMut(JobId, JobEvent)) -> Vec<(JobId, Result<Completion, JobError>)> {
        let stop_ids = self.lm.stop_ids().to_vec();
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
            forward_event(&stop_ids, event, &mut |e| emit(ids[i], e))
        });
        drop((sessions, turns));
        if let Err(e) = stepped {
            // The batch was rejected as a whole (states unchanged): every job in it fails.
            let error = invalid(e);
            let (failed, kept): (Vec<Active>, Vec<Active>) =
                std::mem::take(&mut self.active).into_iter().partition(|a| !waiting.contains(&a.id));
            self.active = kept;
            return failed
                .into_iter()
                .map(|active| {
                    self.slots[active.slot].session.reset();
                    (active.id, Err(error.clone()))
                })
                .collect();
        }
        let mut ended = Vec::new();
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].turn.is_finished() {
                let id = self.active[i].id;
                // A turn that failed on its own (its state is consistent) fails its job alone.
                let failure = self.active[i].turn.take_error();
                let completion = self.finish(i, emit);
                ended.push((id, failure.map_or(Ok(completion), |e| Err(invalid(e)))));
            } else {
                i += 1;
            }
        }
        ended
    }

    fn cancel(&mut self, id: JobId) -> Result<Completion, JobError> {
        match self.active.iter().position(|a| a.id == id) {
            Some(index) => Ok(self.finish(index, &mut |_, _| {})),
            None => Err(JobError::Internal(format!("job {id} is not running"))),
        }
    }

    fn recover(&mut self) {
        for active in std::mem::take(&mut self.active) {
            self.slots[active.slot] = Slot::new(&self.lm, self.session_options);
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A backend that plays back a script instead of running a model, for route tests.

    use super::*;

    /// Streams `pieces` as content (or reasoning, for pieces starting with `think:`), one per
    /// step, then ends with `finish`; waits for `gate` (if any) before starting a job, to hold
    /// the worker busy. Runs one job at a time.
    pub(crate) struct Scripted {
        pub pieces: Vec<String>,
        pub finish: FinishReason,
        pub gate: Option<std::sync::mpsc::Receiver<()>>,
        pub running: Option<(JobId, usize, usize)>,
    }

    impl Scripted {
        pub(crate) fn new(
            pieces: &[&str],
            finish: FinishReason,
            gate: Option<std::sync::mpsc::Receiver<()>>,
        ) -> Self {
            Scripted { pieces: pieces.iter().map(|p| p.to_string()).collect(), finish, gate, running: None }
        }

        fn completion(&self, prompt_tokens: usize, pieces: usize) -> Completion {
            let usage = Usage { prompt_tokens, completion_tokens: pieces, ..Usage::default() };
            Completion { finish_reason: self.finish, usage }
        }
    }

    impl Backend for Scripted {
        fn capacity(&self) -> usize {
            1
        }

        fn start(&mut self, id: JobId, job: &Job) -> Result<(), JobError> {
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            self.running = Some((id, job.prompt.len(), 0));
            Ok(())
        }

        fn step(
            &mut self,
            emit: &mut dyn FnMut(JobId, JobEvent),
        ) -> Vec<(JobId, Result<Completion, JobError>)> {
            let Some((id, prompt, done)) = self.running else { return Vec::new() };
            if let Some(piece) = self.pieces.get(done) {
                match piece.strip_prefix("think:") {
                    Some(thought) => emit(id, JobEvent::Reasoning(thought.to_owned())),
                    None => emit(id, JobEvent::Content(piece.clone())),
                }
                self.running = Some((id, prompt, done + 1));
                return Vec::new();
            }
            self.running = None;
            vec![(id, Ok(self.completion(prompt, done)))]
        }

        fn cancel(&mut self, id: JobId) -> Result<Completion, JobError> {
            match self.running.take() {
                Some((running, prompt, done)) if running == id => Ok(self.completion(prompt, done)),
                other => {
                    self.running = other;
                    Err(JobError::Internal(format!("job {id} is not running")))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Scripted;
    use super::*;

    fn job() -> Job {
        Job { prompt: vec![1, 2, 3], params: ChatParams::default(), media: None }
    }

    fn scripted(pieces: &[&str], gate: Option<std::sync::mpsc::Receiver<()>>) -> Scripted {
        Scripted::new(pieces, FinishReason::Stop, gate)
    }

    #[tokio::test]
    async fn jobs_stream_their_events_and_end_with_done() {
        let engine = Engine::with_backend(scripted(&["a", "think:b", "c"], None), 1, 4).unwrap();
        let mut handle = engine.submit(job()).unwrap();
        let mut texts = Vec::new();
        while let Some(event) = handle.next().await {
            match event {
                JobEvent::Content(t) | JobEvent::Reasoning(t) => texts.push(t),
                JobEvent::Done(c) => {
                    assert_eq!(c.usage.prompt_tokens, 3);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(texts, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_jobs_and_dropped_handles_free_their_place() {
        let (open, gate) = std::sync::mpsc::channel();
        let engine = Engine::with_backend(scripted(&["x"], Some(gate)), 1, 2).unwrap();
        let mut running = engine.submit(job()).unwrap();
        // Wait until the worker has taken the first job (it then blocks on the gate).
        while engine.status().busy == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let first = engine.submit(job()).unwrap();
        let _second = engine.submit(job()).unwrap();
        assert_eq!(engine.submit(job()).unwrap_err(), SubmitError::QueueFull { capacity: 2 });
        assert_eq!(engine.status(), EngineStatus { slots: 1, busy: 1, queued: 2, queue_capacity: 2 });
        drop(first);
        assert_eq!(engine.status().queued, 1, "a cancelled job no longer counts");
        open.send(()).unwrap();
        open.send(()).unwrap();
        assert!(matches!(running.next().await, Some(JobEvent::Content(_))));
        engine.shutdown();
        assert_eq!(engine.submit(job()).unwrap_err(), SubmitError::ShuttingDown);
    }

    /// Running jobs share each model pass: one step advances every one of them, and each
    /// still gets the tokens it gets alone.
    #[test]
    fn running_jobs_advance_together_and_match_jobs_alone() {
        let lm = crate::serve::tests::lm();
        let options = EngineOptions {
            slots: 3,
            queue_capacity: 4,
            max_context: 4096,
            prompt_cache_bytes: 0,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        };
        let jobs: Vec<Job> = ["one", "two two", "three three three"]
            .iter()
            .map(|q| {
                let text = lm.render_chat(&[qwenrt::chat::Message::user(*q)], true, None).unwrap();
                let params = ChatParams {
                    sampling: qwenrt::SamplingParams::greedy(),
                    max_tokens: 5,
                    ..Default::default()
                };
                Job { prompt: lm.encode(&text).unwrap(), params, media: None }
            })
            .collect();
        let run_alone = |job: &Job| {
            let mut pool = SessionPool::new(lm.clone(), &options);
            pool.start(1, job).unwrap();
            let mut text = String::new();
            while pool
                .step(&mut |_, e| {
                    if let JobEvent::Content(t) = e {
                        text.push_str(&t)
                    }
                })
                .is_empty()
            {}
            text
        };
        let alone: Vec<String> = jobs.iter().map(run_alone).collect();

        let mut pool = SessionPool::new(lm.clone(), &options);
        for (id, job) in jobs.iter().enumerate() {
            pool.start(id as JobId, job).unwrap();
        }
        let mut texts = vec![String::new(); jobs.len()];
        let mut first_step = Vec::new();
        let mut ended = 0;
        while ended < jobs.len() {
            let mut stepped = std::collections::HashSet::new();
            ended += pool
                .step(&mut |id, e| {
                    stepped.insert(id);
                    if let JobEvent::Content(t) = e {
                        texts[id as usize].push_str(&t)
                    }
                })
                .len();
            if first_step.is_empty() {
                first_step = stepped.into_iter().collect();
            }
        }
        first_step.sort();
        assert_eq!(first_step, [0, 1, 2], "one step streams for every running job");
        assert_eq!(texts, alone);
    }

    /// Runs `job` on a pool of its own; returns what it streams.
    fn run_alone(lm: &Arc<LanguageModel>, options: &EngineOptions, job: &Job) -> Vec<JobEvent> {
        let mut pool = SessionPool::new(lm.clone(), options);
        pool.start(1, job).unwrap();
        let mut events = Vec::new();
        while pool.step(&mut |_, e| events.push(e)).is_empty() {}
        events
    }

    /// The ids of the sampled tokens and the text of a job's events.
    fn tokens_and_text(events: &[JobEvent]) -> (Vec<u32>, String) {
        let mut ids = Vec::new();
        let mut text = String::new();
        for event in events {
            match event {
                JobEvent::Token(t) => ids.push(t.id),
                JobEvent::Content(t) | JobEvent::Reasoning(t) => text.push_str(t),
                _ => {}
            }
        }
        (ids, text)
    }

    /// A long prompt admitted while another job decodes is prefilled a budget of tokens per
    /// step alongside that job's decoding: the running job keeps receiving a token every step
    /// until the new one's first token, and both stream what they stream alone.
    #[test]
    fn a_long_prompt_prefills_in_pieces_while_a_running_job_keeps_streaming() {
        let lm = crate::serve::tests::lm();
        const CHUNK: usize = 8;
        let options = EngineOptions {
            slots: 2,
            queue_capacity: 4,
            max_context: 4096,
            prompt_cache_bytes: 64 << 20,
            prefill_chunk: CHUNK,
        };
        let job = |question: &str, max_tokens: usize| {
            let text = lm.render_chat(&[qwenrt::chat::Message::user(question)], true, None).unwrap();
            let mut sampling = qwenrt::SamplingParams::greedy();
            // Answers run to `max_tokens`, so the first job is still decoding at the end.
            sampling.logit_bias = lm.stop_ids().iter().map(|&id| (id, -1000.0)).collect();
            let params = ChatParams { sampling, max_tokens, logprobs: Some(1), ..Default::default() };
            Job { prompt: lm.encode(&text).unwrap(), params, media: None }
        };
        let long_question = "Tell me everything about the delta rule, gated attention, ".repeat(6);
        let (running, long) = (job("Hi", 40), job(&long_question, 6));
        let header = lm.encode("<|im_start|>assistant\n").unwrap();
        let point =
            long.prompt.windows(header.len()).rposition(|w| w == header.as_slice()).unwrap() + header.len();
        let pieces = point.div_ceil(CHUNK) + (long.prompt.len() - point).div_ceil(CHUNK);
        assert!(pieces > 10, "a prompt of {} tokens", long.prompt.len());

        let mut pool = SessionPool::new(lm.clone(), &options);
        let mut log: Vec<(JobId, JobEvent)> = Vec::new();
        pool.start(1, &running).unwrap();
        for _ in 0..2 {
            assert!(pool.step(&mut |id, e| log.push((id, e))).is_empty());
        }
        pool.start(2, &long).unwrap();
        let long_slot = pool.active.iter().find(|a| a.id == 2).unwrap().slot;
        assert_eq!(pool.slots[long_slot].session.context_tokens(), 0, "starting a job prefills nothing");
        let admitted = log.len();
        let mut ended = 0;
        while ended < 2 {
            ended += pool.step(&mut |id, e| log.push((id, e))).len();
        }

        let first_of_long =
            log.iter().position(|(id, e)| *id == 2 && matches!(e, JobEvent::Token(_))).unwrap();
        let streamed_meanwhile = log[admitted..first_of_long]
            .iter()
            .filter(|(id, e)| *id == 1 && matches!(e, JobEvent::Token(_)))
            .count();
        assert!(
            streamed_meanwhile >= pieces - 1,
            "the running job got {streamed_meanwhile} tokens during the {pieces} steps of the other's prefill"
        );
        for (id, job) in [(1, &running), (2, &long)] {
            let events: Vec<JobEvent> =
                log.iter().filter(|(i, _)| *i == id).map(|(_, e)| e.clone()).collect();
            let (ids, text) = tokens_and_text(&events);
            let (want_ids, want_text) = tokens_and_text(&run_alone(&lm, &options, job));
            assert_eq!(ids.len(), job.params.max_tokens, "job {id}");
            assert_eq!((ids, text), (want_ids, want_text), "job {id}");
        }
    }

    /// Prompts that arrive together are prefilled in the same passes, sharing each step's budget
    /// oldest first: with room for all of them (and no prompt cache, so no piece has to end at
    /// the assistant header), each gets its first token in the first step.
    #[test]
    fn prompts_arriving_together_prefill_in_the_same_steps() {
        let lm = crate::serve::tests::lm();
        let prompts: Vec<Vec<u32>> = ["one", "two two", "three three three"]
            .iter()
            .map(|q| {
                lm.encode(&lm.render_chat(&[qwenrt::chat::Message::user(*q)], true, None).unwrap()).unwrap()
            })
            .collect();
        let mut sampling = qwenrt::SamplingParams::greedy();
        sampling.logit_bias = lm.stop_ids().iter().map(|&id| (id, -1000.0)).collect();
        let params = ChatParams { sampling, max_tokens: 3, logprobs: Some(0), ..Default::default() };
        // The step in which each job gets its first token.
        let first_token_steps = |prefill_chunk: usize| {
            let options = EngineOptions {
                slots: 3,
                queue_capacity: 4,
                max_context: 4096,
                prompt_cache_bytes: 0,
                prefill_chunk,
            };
            let mut pool = SessionPool::new(lm.clone(), &options);
            for (id, prompt) in prompts.iter().enumerate() {
                pool.start(id as JobId, &Job { prompt: prompt.clone(), params: params.clone(), media: None })
                    .unwrap();
            }
            let mut first = vec![0; prompts.len()];
            let (mut step, mut ended) = (0, 0);
            while ended < prompts.len() {
                step += 1;
                let mut sampled = |id: JobId, e: JobEvent| {
                    if matches!(e, JobEvent::Token(_)) && first[id as usize] == 0 {
                        first[id as usize] = step;
                    }
                };
                ended += pool.step(&mut sampled).len();
            }
            first
        };
        let total: usize = prompts.iter().map(Vec::len).sum();
        assert_eq!(first_token_steps(total), [1, 1, 1]);
        let staggered = first_token_steps(prompts[0].len() + prompts[1].len() / 2);
        assert!(staggered[0] == 1 && staggered[1] <= staggered[2] && staggered[2] > 1, "{staggered:?}");
    }

    #[tokio::test]
    async fn shutdown_ends_waiting_jobs() {
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let engine = Engine::with_backend(scripted(&["x"], Some(gate)), 1, 2).unwrap();
        let _running = engine.submit(job()).unwrap();
        let mut waiting = engine.submit(job()).unwrap();
        engine.shutdown();
        assert!(waiting.next().await.is_none());
        // Let the running job end, so dropping the engine can join its thread.
        drop(open);
    }
}
