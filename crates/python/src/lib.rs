//! The `qwenrt` Python package: `LanguageModel`, `ChatSession` and `Embedder` over the Rust
//! library, read as the Rust API reads and as sentence-transformers does for embeddings.
//!
//! The GIL is released while the model computes. A turn runs on a thread of its own and the
//! calling thread waits on its events, waking every 50 ms to let Python handle signals: Ctrl-C
//! (`KeyboardInterrupt`) cancels the turn, whose partial reply stays in the conversation as it
//! does in Rust, and the session stays usable.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use qwenrt::chat::{ContentPart, Message, MessageContent};
use qwenrt::{
    CancelToken, ChatParams, EmbedKind, EmbedOptions, Event as RustEvent, LoadOptions, WeightDtype,
};

create_exception!(
    _qwenrt,
    QwenrtError,
    PyException,
    "An error of the qwenrt runtime: a broken model folder, a failed download, input the model cannot take."
);

/// How often a waiting call wakes to let Python handle signals (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

fn error(e: impl std::fmt::Display) -> PyErr {
    QwenrtError::new_err(e.to_string())
}

/// The folder of a model given as a path or a hub id (downloaded if need be), and the load
/// options of `dtype`; sets the thread count the first time it is given.
fn prepare_load(model: PathBuf, dtype: &str, threads: Option<usize>) -> PyResult<(PathBuf, LoadOptions)> {
    let dtype: WeightDtype = dtype.parse().map_err(PyValueError::new_err)?;
    if let Some(threads) = threads {
        if threads == 0 {
            return Err(PyValueError::new_err("threads must be at least 1"));
        }
        if let Err(e) = qwenrt::set_threads(threads) {
            if qwenrt::threads() != threads {
                return Err(PyValueError::new_err(format!(
                    "threads={threads}, but this process already computes with {} ({e}); threads is set by the first model loaded",
                    qwenrt::threads()
                )));
            }
        }
    }
    let spec = model.to_str().ok_or_else(|| PyValueError::new_err("the model path is not valid UTF-8"))?;
    let dir = qwenrt::hub::locate(spec).map_err(error)?;
    Ok((dir, LoadOptions::with_dtype(dtype)))
}

/// A Qwen3.5 (or Qwen3) language model: weights, tokenizer, chat template and generation
/// defaults. Immutable: share one between any number of `ChatSession`s and threads.
#[pyclass(frozen, module = "qwenrt")]
struct LanguageModel {
    inner: Arc<qwenrt::LanguageModel>,
    #[pyo3(get)]
    path: PathBuf,
    #[pyo3(get)]
    dtype: String,
}

#[pymethods]
impl LanguageModel {
    /// Loads a model folder or hub id (`Qwen/Qwen3.5-0.8B[@revision]`) at `dtype` (f32, bf16,
    /// f16, int8, int4); `threads` sets the compute threads of the process (default: all cores).
    #[new]
    #[pyo3(signature = (model, *, dtype = "int8", threads = None))]
    fn new(py: Python<'_>, model: PathBuf, dtype: &str, threads: Option<usize>) -> PyResult<Self> {
        let dtype_name = dtype.to_owned();
        let (dir, options) = py.detach(|| prepare_load(model, dtype, threads))?;
        let inner = py.detach(|| qwenrt::LanguageModel::load_with(&dir, &options)).map_err(error)?;
        Ok(LanguageModel { inner: Arc::new(inner), path: dir, dtype: dtype_name })
    }

    /// Most tokens a conversation may hold.
    #[getter]
    fn max_context(&self) -> usize {
        self.inner.model.max_context()
    }

    /// A new conversation with this model.
    #[pyo3(signature = (system = None))]
    fn chat(&self, system: Option<&str>) -> ChatSession {
        ChatSession::create(self.inner.clone(), system)
    }

    fn __repr__(&self) -> String {
        format!("LanguageModel({:?}, dtype={:?})", self.path.display().to_string(), self.dtype)
    }
}

/// What a turn produced.
#[pyclass(frozen, get_all, module = "qwenrt")]
struct Reply {
    content: String,
    /// The thought, without `<think>` tags ("" when the turn did not think).
    reasoning: String,
    /// "stop", "length", "cancelled", "stop_string", …
    finish_reason: String,
    /// Every token after the prompt.
    tokens: Vec<u32>,
    prompt_tokens: usize,
    /// Of the prompt tokens, how many were reused from a saved state instead of computed.
    cached_prompt_tokens: usize,
    completion_tokens: usize,
    reasoning_tokens: usize,
    /// Seconds from the call to the first token.
    time_to_first_token: f64,
    /// Seconds from the first token to the last.
    decode_time: f64,
}

impl From<qwenrt::Reply> for Reply {
    fn from(r: qwenrt::Reply) -> Self {
        Reply {
            finish_reason: r.finish_reason.as_str().to_owned(),
            content: r.content,
            reasoning: r.reasoning,
            tokens: r.tokens,
            prompt_tokens: r.usage.prompt_tokens,
            cached_prompt_tokens: r.usage.cached_prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
            reasoning_tokens: r.usage.reasoning_tokens,
            time_to_first_token: r.usage.time_to_first_token.as_secs_f64(),
            decode_time: r.usage.decode_time.as_secs_f64(),
        }
    }
}

#[pymethods]
impl Reply {
    fn __repr__(&self) -> String {
        format!(
            "Reply(content={:?}, finish_reason={:?}, completion_tokens={})",
            self.content, self.finish_reason, self.completion_tokens
        )
    }
}

/// One piece of a streamed turn: `kind` is "reasoning" or "content" with its `text`, and the
/// last event is "done" with the whole `reply`.
#[pyclass(frozen, get_all, module = "qwenrt")]
struct Event {
    kind: &'static str,
    text: String,
    reply: Option<Py<Reply>>,
}

#[pymethods]
impl Event {
    fn __repr__(&self) -> String {
        format!("Event(kind={:?}, text={:?})", self.kind, self.text)
    }
}

/// What the turn's thread reports.
enum Report {
    Reasoning(String),
    Content(String),
    Done(qwenrt::Reply),
    Failed(qwenrt::Error),
}

/// A turn running on its thread, which hands the session back when it ends.
struct Running {
    /// In a mutex only so that a reference may cross into code run without the GIL.
    reports: Mutex<mpsc::Receiver<Report>>,
    worker: JoinHandle<qwenrt::ChatSession>,
}

/// The session between turns; `None` while a turn has it.
type Slot = Arc<Mutex<Option<qwenrt::ChatSession>>>;

/// A conversation: its messages, its state and its prompt cache. One turn at a time.
#[pyclass(frozen, module = "qwenrt")]
struct ChatSession {
    slot: Slot,
    cancel: CancelToken,
    lm: Arc<qwenrt::LanguageModel>,
}

impl ChatSession {
    fn create(lm: Arc<qwenrt::LanguageModel>, system: Option<&str>) -> Self {
        let mut session = qwenrt::ChatSession::new(lm.clone());
        session.set_system(system);
        ChatSession { cancel: session.cancel_token(), slot: Arc::new(Mutex::new(Some(session))), lm }
    }

    fn take(&self) -> PyResult<qwenrt::ChatSession> {
        self.slot
            .lock()
            .expect("the slot lock is never held across a panic")
            .take()
            .ok_or_else(|| error("this session is in the middle of a turn: wait for it, or cancel() it"))
    }

    fn start(&self, text: String, params: ChatParams) -> PyResult<Running> {
        let mut session = self.take()?;
        let (tx, reports) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("qwenrt-turn".into())
            .spawn(move || {
                let result = session.send(Message::user(text), &params, |event| {
                    let report = match event {
                        RustEvent::Reasoning(text) => Report::Reasoning(text.to_owned()),
                        RustEvent::Content(text) => Report::Content(text.to_owned()),
                        RustEvent::Token(_) | RustEvent::Done(_) => return,
                    };
                    let _ = tx.send(report);
                });
                let _ = tx.send(match result {
                    Ok(reply) => Report::Done(reply),
                    Err(e) => Report::Failed(e),
                });
                session
            })
            .map_err(|e| error(format!("cannot start the turn's thread: {e}")))?;
        Ok(Running { reports: Mutex::new(reports), worker })
    }

    /// The model's defaults (generation_config.json) with the keyword arguments of `send` or
    /// `stream` over them.
    fn params(&self, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<ChatParams> {
        let mut params = self.lm.default_params();
        for (key, value) in kwargs.into_iter().flatten() {
            let key: String = key.extract()?;
            if value.is_none() {
                continue;
            }
            let s = &mut params.sampling;
            match key.as_str() {
                "max_tokens" => params.max_tokens = value.extract()?,
                "temperature" => s.temperature = value.extract()?,
                "top_p" => s.top_p = value.extract()?,
                "top_k" => s.top_k = value.extract()?,
                "min_p" => s.min_p = value.extract()?,
                "presence_penalty" => s.presence_penalty = value.extract()?,
                "frequency_penalty" => s.frequency_penalty = value.extract()?,
                "repetition_penalty" => s.repetition_penalty = value.extract()?,
                "seed" => s.seed = Some(value.extract()?),
                "stop" => params.stop = value.extract()?,
                "enable_thinking" => params.enable_thinking = Some(value.extract()?),
                "max_thinking_tokens" => params.max_thinking_tokens = Some(value.extract()?),
                other => {
                    return Err(PyTypeError::new_err(format!(
                        "unexpected keyword argument '{other}'; expected one of {}",
                        TURN_KEYWORDS.join(", ")
                    )))
                }
            }
        }
        params.validate().map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(params)
    }
}

/// What `send` and `stream` take besides the text (the stubs spell out their types).
const TURN_KEYWORDS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "stop",
    "enable_thinking",
    "max_thinking_tokens",
];

/// Joins the turn's thread (without the GIL) and puts the session back.
fn finish(py: Python<'_>, slot: &Slot, worker: JoinHandle<qwenrt::ChatSession>) -> PyResult<()> {
    let session =
        py.detach(|| worker.join()).map_err(|_| error("the turn's thread panicked; this session is lost"))?;
    *slot.lock().expect("the slot lock is never held across a panic") = Some(session);
    Ok(())
}

/// The next report of a running turn; `Ok(None)` when the thread has gone. A pending signal
/// (Ctrl-C) cancels the turn and is raised.
fn next_report(
    py: Python<'_>,
    reports: &Mutex<mpsc::Receiver<Report>>,
    cancel: &CancelToken,
) -> PyResult<Option<Report>> {
    loop {
        // Checked before every wait, not only after an idle one: a turn that streams tokens
        // faster than the poll period would never let Ctrl-C through.
        if let Err(signal) = py.check_signals() {
            cancel.cancel();
            return Err(signal);
        }
        let report =
            py.detach(|| reports.lock().expect("never held across a panic").recv_timeout(SIGNAL_POLL));
        match report {
            Ok(report) => return Ok(Some(report)),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

#[pymethods]
impl ChatSession {
    #[new]
    #[pyo3(signature = (model, system = None))]
    fn new(model: &LanguageModel, system: Option<&str>) -> Self {
        ChatSession::create(model.inner.clone(), system)
    }

    /// Sends a user message and returns the assistant's reply (also appended to the
    /// conversation). Keyword arguments (max_tokens, temperature, top_p, top_k, min_p,
    /// presence_penalty, frequency_penalty, repetition_penalty, seed, stop, enable_thinking,
    /// max_thinking_tokens) override the model's generation_config.json.
    #[pyo3(signature = (text, **kwargs))]
    fn send(&self, py: Python<'_>, text: String, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Reply> {
        let params = self.params(kwargs)?;
        let running = self.start(text, params)?;
        let outcome = loop {
            match next_report(py, &running.reports, &self.cancel) {
                Ok(Some(Report::Done(reply))) => break Ok(Reply::from(reply)),
                Ok(Some(Report::Failed(e))) => break Err(error(e)),
                Ok(Some(_)) => {}
                Ok(None) => break Err(error("the turn ended without a reply")),
                Err(signal) => break Err(signal),
            }
        };
        finish(py, &self.slot, running.worker)?;
        outcome
    }

    /// Sends a user message and yields the reply as it is written: `Event`s of kind
    /// "reasoning" and "content", then "done" with the `Reply`. Leaving the loop early (or
    /// `close()`) cancels the turn. Takes the keyword arguments of `send`.
    #[pyo3(signature = (text, **kwargs))]
    fn stream(&self, text: String, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Stream> {
        let params = self.params(kwargs)?;
        let running = self.start(text, params)?;
        Ok(Stream {
            running: Mutex::new(Some(running)),
            slot: self.slot.clone(),
            cancel: self.cancel.clone(),
        })
    }

    /// Stops the running turn (from any thread); its reply ends with finish_reason "cancelled".
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Forgets the conversation (the system prompt stays).
    fn reset(&self) -> PyResult<()> {
        let mut session = self.take()?;
        session.reset();
        *self.slot.lock().expect("the slot lock is never held across a panic") = Some(session);
        Ok(())
    }

    /// The conversation: a list of {"role", "content"} dicts.
    #[getter]
    fn messages<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let guard = self.slot.lock().expect("the slot lock is never held across a panic");
        let session = guard.as_ref().ok_or_else(|| error("this session is in the middle of a turn"))?;
        session
            .messages()
            .iter()
            .map(|m| {
                let d = PyDict::new(py);
                d.set_item("role", &m.role)?;
                d.set_item("content", message_text(&m.content))?;
                Ok(d)
            })
            .collect()
    }
}

/// A message's text: `None` for no content, the text parts joined for a multi-part one.
fn message_text(content: &MessageContent) -> Option<String> {
    match content {
        MessageContent::Text(text) => Some(text.clone()),
        MessageContent::Parts(parts) => Some(
            parts
                .iter()
                .filter_map(|p| match p {
                    ContentPart::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect(),
        ),
        MessageContent::Null => None,
    }
}

/// The events of a streamed turn (`ChatSession.stream`).
#[pyclass(module = "qwenrt")]
struct Stream {
    running: Mutex<Option<Running>>,
    slot: Slot,
    cancel: CancelToken,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Event>> {
        let mut guard = self.running.lock().expect("the stream lock is never held across a panic");
        let Some(running) = guard.as_ref() else { return Ok(None) };
        let report = next_report(py, &running.reports, &self.cancel);
        let event = match report {
            Ok(Some(Report::Reasoning(text))) => {
                return Ok(Some(Event { kind: "reasoning", text, reply: None }))
            }
            Ok(Some(Report::Content(text))) => return Ok(Some(Event { kind: "content", text, reply: None })),
            Ok(Some(Report::Done(reply))) => Ok(Some(Event {
                kind: "done",
                text: String::new(),
                reply: Some(Py::new(py, Reply::from(reply))?),
            })),
            Ok(Some(Report::Failed(e))) => Err(error(e)),
            Ok(None) => Err(error("the turn ended without a reply")),
            Err(signal) => Err(signal),
        };
        let running = guard.take().expect("checked above");
        finish(py, &self.slot, running.worker)?;
        event
    }

    /// Stops the turn and waits for its thread; the stream then ends.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let running = self.running.lock().expect("the stream lock is never held across a panic").take();
        if let Some(running) = running {
            self.cancel.cancel();
            finish(py, &self.slot, running.worker)?;
        }
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A stream dropped half-way: cancel the turn, and give the session back once it stops.
        if let Some(running) = self.running.get_mut().ok().and_then(Option::take) {
            self.cancel.cancel();
            if let Ok(session) = running.worker.join() {
                if let Ok(mut slot) = self.slot.lock() {
                    *slot = Some(session);
                }
            }
        }
    }
}

/// A Qwen3-Embedding model in the sentence-transformers layout: texts to unit vectors.
#[pyclass(frozen, module = "qwenrt")]
struct Embedder {
    inner: Arc<qwenrt::Embedder>,
    #[pyo3(get)]
    path: PathBuf,
}

#[pymethods]
impl Embedder {
    #[new]
    #[pyo3(signature = (model, *, dtype = "int8", threads = None))]
    fn new(py: Python<'_>, model: PathBuf, dtype: &str, threads: Option<usize>) -> PyResult<Self> {
        let (dir, options) = py.detach(|| prepare_load(model, dtype, threads))?;
        let inner = py.detach(|| qwenrt::Embedder::load_with(&dir, &options)).map_err(error)?;
        Ok(Embedder { inner: Arc::new(inner), path: dir })
    }

    /// Length of the full embedding.
    #[getter]
    fn dimension(&self) -> usize {
        self.inner.hidden_size()
    }

    /// Most tokens a text may have (prompt included).
    #[getter]
    fn max_seq_length(&self) -> usize {
        self.inner.max_tokens()
    }

    /// Embeds `sentences` as `SentenceTransformer.encode` does: a float32 array of shape
    /// (len(sentences), dimension), or (dimension,) for one string. `prompt_name="query"` uses
    /// the model's query prompt, `instruction` a task of your own; `dimensions` truncates
    /// (Matryoshka) and renormalises; `truncate` cuts texts longer than `max_seq_length`.
    #[pyo3(signature = (sentences, *, prompt_name = None, instruction = None, dimensions = None, batch_size = 32, truncate = false))]
    #[allow(clippy::too_many_arguments)]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        sentences: Bound<'py, PyAny>,
        prompt_name: Option<&str>,
        instruction: Option<String>,
        dimensions: Option<usize>,
        batch_size: usize,
        truncate: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let single = sentences.extract::<String>().ok();
        let texts: Vec<String> = match &single {
            Some(text) => vec![text.clone()],
            None => sentences
                .extract()
                .map_err(|_| PyValueError::new_err("sentences must be a str or a list of str"))?,
        };
        let kind = match (prompt_name, instruction) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err("give prompt_name or instruction, not both"))
            }
            (None, Some(task)) => EmbedKind::Instruct(task),
            (Some("query"), None) => EmbedKind::Query,
            (Some("document") | None, None) => EmbedKind::Document,
            (Some(other), None) => {
                return Err(PyValueError::new_err(format!(
                    "prompt_name {other:?} is not known: \"query\" or None"
                )))
            }
        };
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let options = EmbedOptions { kind, dimensions, truncate };
        let width = dimensions.unwrap_or(self.inner.hidden_size());
        let mut flat = Vec::with_capacity(texts.len() * width);
        for batch in texts.chunks(batch_size) {
            let embeddings = py.detach(|| self.inner.embed(batch, &options)).map_err(error)?;
            for e in embeddings {
                flat.extend_from_slice(&e.vector);
            }
            py.check_signals()?;
        }
        if single.is_some() {
            return Ok(PyArray1::from_vec(py, flat).into_any());
        }
        let rows = texts.len();
        let array = Array2::from_shape_vec((rows, width), flat).expect("one vector of `width` per text");
        Ok(array.into_pyarray(py).into_any())
    }
}

#[pymodule]
fn _qwenrt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LanguageModel>()?;
    m.add_class::<ChatSession>()?;
    m.add_class::<Reply>()?;
    m.add_class::<Event>()?;
    m.add_class::<Stream>()?;
    m.add_class::<Embedder>()?;
    m.add("QwenrtError", m.py().get_type::<QwenrtError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
