//! The engine behind the routes: a bounded queue of generation jobs, computed on a dedicated
//! worker thread, never on the async runtime.
//!
//! Routes see only [`Engine::submit`], the [`JobHandle`] it returns (events through a channel;
//! dropping it cancels the job) and [`Engine::status`]. How jobs run is this module's business:
//! today one worker thread runs them one at a time on `slots` chat sessions, each with its own
//! prompt cache, choosing for each job the session that already holds the longest part of its
//! prompt. A continuous-batching scheduler (one weight pass for every active sequence, e.g. with
//! `ChatSession::advance_many`) can replace [`SessionPool`] and the worker loop behind the same
//! interface.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use qwenrt::{
    ChatParams, ChatSession, Event, FinishReason, LanguageModel, SessionOptions, TokenLogprob, Usage,
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
}

/// One generation: continue `prompt` (rendered and tokenized) under `params`.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: ChatParams,
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

/// Runs jobs; called on the worker thread, one job at a time.
pub(crate) trait Backend: Send + 'static {
    /// Runs `job` to its end, streaming through `emit`; stops early once `control` is cancelled.
    fn run(
        &mut self,
        job: &Job,
        control: &JobControl,
        emit: &mut dyn FnMut(JobEvent),
    ) -> Result<Completion, JobError>;

    /// Called after `run` panicked, to put the backend back into a usable state.
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
    running: Option<Arc<JobControl>>,
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
            busy: usize::from(queue.running.is_some()),
            queued,
            queue_capacity: self.shared.capacity,
        }
    }

    /// Refuses new jobs, drops the waiting ones (their handles see the end of their events) and
    /// cancels the running one. Returns at once; the worker thread exits when that job has
    /// stopped.
    pub fn shutdown(&self) {
        let mut queue = self.shared.lock();
        queue.shutting_down = true;
        queue.waiting.clear();
        if let Some(running) = &queue.running {
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

/// The worker thread: takes jobs in order and runs them until shutdown.
fn work(shared: &Shared, mut backend: impl Backend) {
    loop {
        let next = {
            let mut queue = shared.lock();
            loop {
                if queue.shutting_down {
                    return;
                }
                match queue.waiting.pop_front() {
                    Some(job) if job.control.is_cancelled() => continue,
                    Some(job) => {
                        queue.running = Some(job.control.clone());
                        break job;
                    }
                    None => queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner()),
                }
            }
        };
        // A send fails only when the client has gone, which the job notices as a cancellation.
        let mut emit = |event: JobEvent| drop(next.events.send(event));
        let result = catch_unwind(AssertUnwindSafe(|| backend.run(&next.job, &next.control, &mut emit)));
        let last = match result {
            Ok(Ok(completion)) => JobEvent::Done(completion),
            Ok(Err(error)) => JobEvent::Failed(error),
            Err(_) => {
                backend.recover();
                JobEvent::Failed(JobError::Internal("the generation failed unexpectedly".into()))
            }
        };
        emit(last);
        shared.lock().running = None;
    }
}

/// How many token sequences a slot remembers for choosing it again.
const REMEMBERED_SEQUENCES: usize = 8;

/// The chat sessions jobs run on, one at a time.
struct SessionPool {
    lm: Arc<LanguageModel>,
    session_options: SessionOptions,
    slots: Vec<Slot>,
    /// Counts jobs, to find the least recently used slot.
    clock: u64,
    /// The slot of the job in progress (rebuilt if that job panics).
    running: Option<usize>,
    /// `<|im_start|>assistant\n`: where a session saves the state it can reuse next turn.
    assistant_header: Vec<u32>,
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
        SessionPool { lm, session_options, slots, clock: 0, running: None, assistant_header }
    }

    /// The slot that can reuse the most of `prompt`; among equals the least recently used, so
    /// new conversations spread over the slots and each keeps its state for its next turn.
    fn pick(&self, prompt: &[u32]) -> usize {
        (0..self.slots.len())
            .max_by_key(|&i| (self.slots[i].reusable(prompt), std::cmp::Reverse(self.slots[i].last_used)))
            .unwrap_or(0)
    }

    /// What the session will hold after this job: the state saved after the prompt's last
    /// assistant header, and the live state (prompt and answer but the last sampled token).
    fn remember(&mut self, slot: usize, prompt: &[u32], answer: &[u32]) {
        let header = &self.assistant_header;
        if !header.is_empty() {
            if let Some(at) = prompt.windows(header.len()).rposition(|w| w == header.as_slice()) {
                self.slots[slot].remember(prompt[..at + header.len()].to_vec());
            }
        }
        let mut live = prompt.to_vec();
        live.extend_from_slice(&answer[..answer.len().saturating_sub(1)]);
        self.slots[slot].remember(live);
    }
}

impl Backend for SessionPool {
    fn run(
        &mut self,
        job: &Job,
        control: &JobControl,
        emit: &mut dyn FnMut(JobEvent),
    ) -> Result<Completion, JobError> {
        let index = self.pick(&job.prompt);
        self.clock += 1;
        self.slots[index].last_used = self.clock;
        self.running = Some(index);
        let session = &mut self.slots[index].session;
        let stop_ids = self.lm.stop_ids();
        let mut forward = |event: Event<'_>| match event {
            // The end-of-turn token is not part of the answer (OpenAI does not list it either).
            Event::Token(info) if stop_ids.contains(&info.id) => {}
            Event::Token(info) => emit(JobEvent::Token(info.clone())),
            Event::Reasoning(text) => emit(JobEvent::Reasoning(text.to_owned())),
            Event::Content(text) => emit(JobEvent::Content(text.to_owned())),
            // The worker sends the completion itself.
            Event::Done(_) => {}
        };
        let invalid = |e: qwenrt::Error| match e {
            qwenrt::Error::InvalidInput(message) => JobError::Invalid(message),
            other => JobError::Internal(other.to_string()),
        };
        let mut turn = session.begin(&job.prompt, &job.params).map_err(invalid)?;
        // Cancellation is checked between tokens: a client that left stops its job within one
        // forward pass.
        while !control.is_cancelled() {
            if !session.advance(&mut turn, &mut forward).map_err(invalid)? {
                break;
            }
        }
        let reply = turn.finish(&mut forward);
        self.running = None;
        self.remember(index, &job.prompt, &reply.tokens);
        Ok(Completion { finish_reason: reply.finish_reason, usage: reply.usage })
    }

    fn recover(&mut self) {
        if let Some(index) = self.running.take() {
            self.slots[index] = Slot::new(&self.lm, self.session_options);
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A backend that plays back a script instead of running a model, for route tests.

    use super::*;

    /// Streams `pieces` as content (or reasoning, for pieces starting with `think:`), then ends
    /// with `finish`; waits for `gate` (if any) before starting, to hold the worker busy.
    pub(crate) struct Scripted {
        pub pieces: Vec<String>,
        pub finish: FinishReason,
        pub gate: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl Backend for Scripted {
        fn run(
            &mut self,
            job: &Job,
            control: &JobControl,
            emit: &mut dyn FnMut(JobEvent),
        ) -> Result<Completion, JobError> {
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            for piece in &self.pieces {
                if control.is_cancelled() {
                    break;
                }
                match piece.strip_prefix("think:") {
                    Some(thought) => emit(JobEvent::Reasoning(thought.to_owned())),
                    None => emit(JobEvent::Content(piece.clone())),
                }
            }
            let usage = Usage {
                prompt_tokens: job.prompt.len(),
                completion_tokens: self.pieces.len(),
                ..Usage::default()
            };
            Ok(Completion { finish_reason: self.finish, usage })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Scripted;
    use super::*;

    fn job() -> Job {
        Job { prompt: vec![1, 2, 3], params: ChatParams::default() }
    }

    fn scripted(pieces: &[&str], gate: Option<std::sync::mpsc::Receiver<()>>) -> Scripted {
        Scripted { pieces: pieces.iter().map(|p| p.to_string()).collect(), finish: FinishReason::Stop, gate }
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
