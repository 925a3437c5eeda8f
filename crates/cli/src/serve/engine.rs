//! The engine behind the routes: a bounded queue of generation jobs, served on a dedicated
//! worker thread (never on the async runtime) by the library's continuous-batching
//! [`Scheduler`].
//!
//! Routes see only [`Engine::admit`], which takes a place before the request is prepared (so
//! that preparing, which can hold several times a request's size, is bounded by the same
//! `--parallel` + `--queue` as waiting), [`Admission::submit`], the [`JobHandle`] it returns
//! (events through a channel; dropping it cancels the job) and [`Engine::status`]. Behind them, the worker admits waiting
//! jobs into the scheduler's free slots, calls its `step` (one pass over the weights for every
//! running job) and forwards what each job streams; slot choice, the shared prefill budget and
//! batching are the scheduler's (see `qwenrt::scheduler`).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use qwenrt::scheduler::{RequestId, Scheduler, SchedulerOptions};
use qwenrt::{ChatParams, Event, FinishReason, LanguageModel, Prompt, Reply, TokenLogprob, Usage};
use tokio::sync::mpsc;

use super::middleware::RequestLog;

pub use qwenrt::scheduler::{Failure as JobError, DEFAULT_PREFILL_CHUNK};

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
    /// Slots keep what the MTP head drafts from (`--speculative`).
    pub drafting: bool,
}

/// One generation: continue `prompt` (rendered and tokenized, with its images and videos)
/// under `params`.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Prompt,
    pub params: ChatParams,
    /// Where the job's token counts go when it ends, however it ends (a client that left
    /// included): the request's log line waits for them.
    pub log: RequestLog,
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

/// Why a job was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(
        "the server is busy: its {slots} slot(s) and {capacity} queue place(s) are all taken; retry later"
    )]
    QueueFull { slots: usize, capacity: usize },
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
    /// Requests admitted and still being prepared (template, tokens, pictures).
    pub preparing: usize,
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
pub(crate) type JobId = RequestId;

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
    /// Admissions not yet submitted.
    preparing: usize,
    shutting_down: bool,
}

impl Queue {
    /// Requests holding a place: running, waiting (but for those whose client left) or being
    /// prepared.
    fn in_flight(&self) -> usize {
        let waiting = self.waiting.iter().filter(|q| !q.control.is_cancelled()).count();
        self.running.len() + waiting + self.preparing
    }
}

struct Queued {
    job: Job,
    control: Arc<JobControl>,
    events: mpsc::UnboundedSender<JobEvent>,
}

impl Engine {
    /// Starts the worker thread with `options.slots` chat sessions on `lm`.
    pub fn start(lm: Arc<LanguageModel>, options: EngineOptions) -> std::io::Result<Self> {
        let pool = Batching::new(lm, &options);
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

    /// Takes a place for a request about to be prepared, refused while `slots + queue_capacity`
    /// requests are running, waiting or being prepared. Dropping the admission unused gives the
    /// place back.
    pub fn admit(&self) -> Result<Admission, SubmitError> {
        let mut queue = self.shared.lock();
        if queue.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        if queue.in_flight() >= self.shared.slots + self.shared.capacity {
            return Err(SubmitError::QueueFull { slots: self.shared.slots, capacity: self.shared.capacity });
        }
        queue.preparing += 1;
        Ok(Admission { shared: self.shared.clone(), held: true })
    }

    /// Admits and queues a job at once.
    #[cfg(test)]
    pub fn submit(&self, job: Job) -> Result<JobHandle, SubmitError> {
        self.admit()?.submit(job)
    }

    pub fn status(&self) -> EngineStatus {
        let queue = self.shared.lock();
        // Jobs whose client left are skipped by the worker, so they are not counted.
        let queued = queue.waiting.iter().filter(|q| !q.control.is_cancelled()).count();
        EngineStatus {
            slots: self.shared.slots,
            busy: queue.running.len(),
            queued,
            preparing: queue.preparing,
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

/// A place taken by [`Engine::admit`] for a request being prepared.
pub struct Admission {
    shared: Arc<Shared>,
    /// Still counted as preparing (until submitted).
    held: bool,
}

impl Admission {
    /// Queues the prepared job in the place this admission holds.
    pub fn submit(mut self, job: Job) -> Result<JobHandle, SubmitError> {
        let mut queue = self.shared.lock();
        if queue.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let control = Arc::new(JobControl::default());
        queue.waiting.push_back(Queued { job, control: control.clone(), events });
        // The place passes to the queued job in the same step, so it is never counted twice.
        queue.preparing -= 1;
        self.held = false;
        drop(queue);
        self.shared.wake.notify_one();
        Ok(JobHandle { events: receiver, control })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.held {
            self.shared.lock().preparing -= 1;
        }
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
    log: RequestLog,
}

impl Running {
    /// A send fails only when the client has gone, which the job notices as a cancellation.
    fn send(&self, event: JobEvent) {
        drop(self.events.send(event));
    }

    /// Logs how the job ended and sends that as its last event (to no one if its client left).
    fn end(&self, end: Result<Completion, JobError>) {
        if let Ok(completion) = &end {
            self.log.usage(&completion.usage);
        }
        self.send(end.map_or_else(JobEvent::Failed, JobEvent::Done));
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
                        job.end(backend.cancel(job.id));
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
            let log = queued.job.log.clone();
            let job = Running { id: next_id, control: queued.control, events: queued.events, log };
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
            job.end(backend.cancel(job.id));
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
                        job.end(end);
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

/// The real backend: the library's scheduler, its events made owned for the channels.
struct Batching {
    scheduler: Scheduler,
    stop_ids: Vec<u32>,
}

impl Batching {
    fn new(lm: Arc<LanguageModel>, options: &EngineOptions) -> Self {
        let stop_ids = lm.stop_ids().to_vec();
        let scheduler = Scheduler::new(
            lm,
            SchedulerOptions {
                slots: options.slots,
                max_context: options.max_context,
                prompt_cache_bytes: options.prompt_cache_bytes,
                prefill_chunk: options.prefill_chunk,
                drafting: options.drafting,
            },
        );
        Batching { scheduler, stop_ids }
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

fn completion(reply: Reply) -> Completion {
    Completion { finish_reason: reply.finish_reason, usage: reply.usage }
}

impl Backend for Batching {
    fn capacity(&self) -> usize {
        self.scheduler.capacity()
    }

    fn start(&mut self, id: JobId, job: &Job) -> Result<(), JobError> {
        self.scheduler.start(id, &job.prompt, &job.params).map_err(JobError::from)
    }

    fn step(&mut self, emit: &mut dyn FnMut(JobId, JobEvent)) -> Vec<(JobId, Result<Completion, JobError>)> {
        let stop_ids = &self.stop_ids;
        let ended =
            self.scheduler.step(&mut |id, event| forward_event(stop_ids, event, &mut |e| emit(id, e)));
        ended.into_iter().map(|(id, outcome)| (id, outcome.map(completion))).collect()
    }

    fn cancel(&mut self, id: JobId) -> Result<Completion, JobError> {
        self.scheduler
            .cancel(id)
            .map(completion)
            .ok_or_else(|| JobError::Internal(format!("job {id} is not running")))
    }

    fn recover(&mut self) {
        self.scheduler.recover();
    }
}

#[cfg(any(test, feature = "fuzzing"))]
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
        Job { prompt: Prompt::text(vec![1, 2, 3]), params: ChatParams::default(), log: RequestLog::default() }
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
        assert_eq!(engine.submit(job()).unwrap_err(), SubmitError::QueueFull { slots: 1, capacity: 2 });
        assert_eq!(
            engine.status(),
            EngineStatus { slots: 1, busy: 1, queued: 2, preparing: 0, queue_capacity: 2 }
        );
        drop(first);
        assert_eq!(engine.status().queued, 1, "a cancelled job no longer counts");
        open.send(()).unwrap();
        open.send(()).unwrap();
        assert!(matches!(running.next().await, Some(JobEvent::Content(_))));
        engine.shutdown();
        assert_eq!(engine.submit(job()).unwrap_err(), SubmitError::ShuttingDown);
    }

    #[tokio::test]
    async fn requests_being_prepared_hold_their_place() {
        let (open, gate) = std::sync::mpsc::channel();
        let engine = Engine::with_backend(scripted(&["x"], Some(gate)), 1, 1).unwrap();
        let first = engine.admit().unwrap();
        let second = engine.admit().unwrap();
        assert_eq!(engine.status().preparing, 2);
        assert!(
            matches!(engine.admit(), Err(SubmitError::QueueFull { slots: 1, capacity: 1 })),
            "one slot and one waiting place, both taken by preparations"
        );
        drop(second);
        let third = engine.admit().expect("a preparation that gave up frees its place");
        let _running = first.submit(job()).unwrap();
        while engine.status().busy == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(engine.status().preparing, 1);
        assert!(engine.admit().is_err(), "running + preparing fill slot and queue");
        let _waiting = third.submit(job()).unwrap();
        assert_eq!(
            engine.status(),
            EngineStatus { slots: 1, busy: 1, queued: 1, preparing: 0, queue_capacity: 1 }
        );
        assert!(engine.admit().is_err());
        open.send(()).unwrap();
        open.send(()).unwrap();
    }

    #[tokio::test]
    async fn without_a_queue_a_free_slot_still_takes_a_job() {
        let engine = Engine::with_backend(scripted(&["x"], None), 1, 0).unwrap();
        let mut handle = engine.submit(job()).unwrap();
        while let Some(event) = handle.next().await {
            if matches!(event, JobEvent::Done(_)) {
                return;
            }
        }
        panic!("the job did not end");
    }

    #[tokio::test]
    async fn a_job_whose_client_left_logs_the_tokens_it_made() {
        let (open, gate) = std::sync::mpsc::channel();
        let engine = Engine::with_backend(scripted(&["a", "b", "c", "d"], Some(gate)), 1, 1).unwrap();
        let log = RequestLog::default();
        let mut handle = engine.submit(Job { log: log.clone(), ..job() }).unwrap();
        open.send(()).unwrap();
        assert!(matches!(handle.next().await, Some(JobEvent::Content(_))));
        drop(handle);
        while engine.status().busy > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let (prompt, _, completion) = log.counts();
        assert_eq!(prompt, 3);
        assert!(completion >= 1, "the cancelled job's tokens are logged, not 0");
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
