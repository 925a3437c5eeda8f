//! The HTTP routes. Handlers check and translate requests, render and tokenize prompts (on the
//! blocking pool, not the async workers), submit jobs to the [`Engine`] and translate its events
//! back; they know nothing of how the engine runs jobs.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use qwenrt::chat::{message_media, Message, RenderRequest};
use qwenrt::{FinishReason, LanguageModel, Prompt};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::embeddings::EmbeddingFields;
use super::engine::{Admission, Completion, Engine, Job, JobEvent, JobHandle, SubmitError};
use super::errors::{parse_fields, ApiError, JsonBody};
use super::middleware::{log_requests, require_api_key, RequestLog};
use super::openai::{
    check_constraint, check_context, context_exceeded, finish_reason, resolve_media, ChatFields,
    ChatLogprobs, CompletionFields, CompletionLogprobs, ConstraintFields, GenerationFields, MediaPolicy,
    PromptInput, UsageBody,
};
use super::output::{new_id, unix_time, ChatAnswer, ChatTranslator, CompletionText};
use super::sse::{chat_stream, completion_stream, AnswerMeta};
pub use super::state::AppState;

/// The whole API: routes, API key check, request log and body limit.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(chat_page))
        .route("/props", get(props))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/health", get(health))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(from_fn_with_state(state.clone(), require_api_key))
        .layer(from_fn_with_state(state.clone(), log_requests))
        .with_state(state)
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("Invalid URL ({method} {})", uri.path())).with_code("unknown_url")
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{method} is not allowed on {}", uri.path()))
}

fn refused(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull { .. } => ApiError::unavailable(e.to_string(), "queue_full"),
        SubmitError::ShuttingDown => ApiError::shutting_down(),
    }
}

/// A place for a request about to be prepared: a server that is full refuses it before any
/// work is spent on it.
fn admit(engine: &Engine) -> Result<Admission, ApiError> {
    engine.admit().map_err(refused)
}

fn submit(admission: Admission, job: Job) -> Result<JobHandle, ApiError> {
    admission.submit(job).map_err(refused)
}

/// Runs CPU work (template rendering, tokenization, pictures) off the async workers, one piece
/// per core at a time: a preparation can hold several times its request's size, so concurrent
/// huge requests wait their turn here (holding only their bodies) instead of all expanding at once.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    });
    let _slot = slots.acquire().await.map_err(|_| ApiError::shutting_down())?;
    let prepared = tokio::task::spawn_blocking(|| {
        let prepared = work();
        return_free_memory();
        prepared
    })
    .await;
    prepared.unwrap_or_else(|e| Err(ApiError::internal(format!("request preparation failed: {e}"))))
}

/// Hands the allocator's free pages back to the system. A large request's preparation frees
/// hundreds of MB in pieces that glibc's malloc would otherwise keep (measured: 300 MB kept
/// after four 16 MiB prompts); trimming after each preparation costs well under a millisecond.
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Waits for the end of a job, handing every other event to `on_event`.
async fn wait_for_completion(
    handle: &mut JobHandle,
    mut on_event: impl FnMut(JobEvent),
) -> Result<Completion, ApiError> {
    loop {
        match handle.next().await {
            Some(JobEvent::Done(completion)) if completion.finish_reason == FinishReason::Cancelled => {
                // The client is still waiting, so the server cancelled the job.
                return Err(ApiError::shutting_down());
            }
            Some(JobEvent::Done(completion)) => return Ok(completion),
            Some(JobEvent::Failed(error)) => return Err(ApiError::from(error)),
            Some(event) => on_event(event),
            None => return Err(ApiError::shutting_down()),
        }
    }
}

/// The conversation as the model's chat template renders it, tokenized, with its images and
/// videos (already decoded by [`resolve_media`]) expanded. Tokenizing stops once the text is
/// known not to fit in `max_context`.
fn render_chat(
    lm: &LanguageModel,
    messages: &[Message],
    tools: Option<&[Value]>,
    enable_thinking: Option<bool>,
    extra: Map<String, Value>,
    max_context: usize,
) -> Result<Prompt, ApiError> {
    let template = lm.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid_request("this model has no chat template: use /v1/completions with a raw prompt")
    })?;
    let mut request = RenderRequest::new(messages);
    request.tools = tools;
    request.add_generation_prompt = true;
    request.enable_thinking = enable_thinking;
    request.extra = extra;
    let text = template
        .render(&request)
        .map_err(|e| ApiError::invalid_request(e.to_string()).with_param("messages"))?;
    let (images, videos) = message_media(messages)
        .map_err(|e| ApiError::invalid_request(e.to_string()).with_param("messages"))?;
    // e.g. an <|image_pad|> typed in a message's text: placeholders and pictures disagree.
    lm.encode_prompt_within(&text, &images, &videos, max_context.saturating_sub(1))
        .map_err(|e| prompt_error(e, max_context, "messages"))
}

/// A prompt that could not be tokenized: too long for the context, or not valid for the model.
fn prompt_error(error: qwenrt::Error, max_context: usize, param: &str) -> ApiError {
    match error {
        qwenrt::Error::Tokenizer(qwenrt::tokenizer::TokenizerError::TooLong { .. }) => {
            context_exceeded(max_context, &format!("at least {max_context}"), param)
        }
        e => ApiError::invalid_request(e.to_string()).with_param(param),
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<RequestLog>,
    media_policy: Option<Extension<MediaPolicy>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let fields: GenerationFields = parse_fields(&body)?;
    let chat: ChatFields = parse_fields(&body)?;
    let constraint_fields: ConstraintFields = parse_fields(&body)?;
    fields.check_supported()?;
    let mut messages = chat.checked_messages()?;
    let media_policy = media_policy.map(|Extension(p)| p).unwrap_or_default();
    let tools = chat.offered_tools()?;
    // A forced tool call is the answer; response_format shapes an answer without calls.
    let constraint = match chat.tool_constraint(tools.as_deref())? {
        Some(calls) => Some((calls, "tool_choice")),
        None => constraint_fields.constraint()?,
    };
    let (enable_thinking, extra) = chat.template_kwargs()?;
    let max_thinking_tokens = chat.thinking_budget()?;
    let logprobs = chat.logprobs()?;

    let admission = admit(&state.engine)?;
    let (prompt, constraint) = {
        let lm = state.lm.clone();
        let tools = tools.clone();
        let max_context = state.max_context;
        blocking(move || {
            // Compiling a schema and decoding pictures are CPU work too.
            if let Some((constraint, field)) = &constraint {
                check_constraint(&lm, constraint, field)?;
            }
            resolve_media(&mut messages, &lm, media_policy)?;
            let prompt = render_chat(&lm, &messages, tools.as_deref(), enable_thinking, extra, max_context)?;
            Ok((prompt, constraint.map(|(constraint, _)| constraint)))
        })
        .await?
    };
    check_context(prompt.len(), state.max_context, "messages")?;
    let mut params = fields.params(&state.lm, prompt.len(), state.max_context, state.speculative.as_ref())?;
    params.enable_thinking = enable_thinking;
    params.max_thinking_tokens = max_thinking_tokens;
    params.logprobs = logprobs;
    params.constraint = constraint;
    log.prompt(prompt.len(), 0);
    let mut handle = submit(admission, Job { prompt, params, log: log.clone() })?;

    let meta = AnswerMeta {
        id: new_id("chatcmpl"),
        created: unix_time(),
        model: state.model_id.clone(),
        include_usage: fields.include_usage(),
    };
    let mut translator = ChatTranslator::new(tools.as_deref());
    if fields.stream() {
        return Ok(chat_stream(handle, translator, meta));
    }

    let mut answer = ChatAnswer::default();
    let completion = wait_for_completion(&mut handle, |event| {
        for delta in translator.event(event) {
            answer.push(delta);
        }
    })
    .await?;
    for delta in translator.finish() {
        answer.push(delta);
    }

    // The template separates text from a call with a blank line; what is left around calls is
    // only that.
    let content = if answer.tool_calls.is_empty() || !answer.content.trim().is_empty() {
        Some(answer.content)
    } else {
        None
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !answer.reasoning.is_empty() {
        message["reasoning_content"] = Value::String(answer.reasoning);
    }
    if !answer.tool_calls.is_empty() {
        message["tool_calls"] = json!(answer.tool_calls);
    }
    let logprobs = logprobs.map(|_| ChatLogprobs { content: answer.logprobs });
    Ok(Json(json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason(completion.finish_reason, translator.called_tools()),
        }],
        "usage": UsageBody::from(&completion.usage),
    }))
    .into_response())
}

async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<RequestLog>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let fields: GenerationFields = parse_fields(&body)?;
    let completion_fields: CompletionFields = parse_fields(&body)?;
    let constraint_fields: ConstraintFields = parse_fields(&body)?;
    fields.check_supported()?;
    completion_fields.check_supported()?;
    let logprobs = completion_fields.logprobs()?;
    let admission = admit(&state.engine)?;
    let constraint = match constraint_fields.constraint()? {
        Some((constraint, field)) => {
            let lm = state.lm.clone();
            blocking(move || check_constraint(&lm, &constraint, field).map(|()| constraint))
                .await
                .map(Some)?
        }
        None => None,
    };
    let prompt = match completion_fields.prompt()? {
        PromptInput::Tokens(ids) => {
            let vocab = state.lm.model.vocab_size();
            if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::invalid_request(format!(
                    "token id {id} is outside the vocabulary of {vocab}"
                ))
                .with_param("prompt"));
            }
            ids
        }
        PromptInput::Text(text) => {
            let lm = state.lm.clone();
            let max_context = state.max_context;
            blocking(move || {
                lm.encode_within(&text, max_context.saturating_sub(1))
                    .map_err(|e| prompt_error(e, max_context, "prompt"))
            })
            .await?
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid_request("the prompt is empty").with_param("prompt"));
    }
    check_context(prompt.len(), state.max_context, "prompt")?;
    let mut params = fields.params(&state.lm, prompt.len(), state.max_context, state.speculative.as_ref())?;
    params.logprobs = logprobs;
    params.constraint = constraint;
    log.prompt(prompt.len(), 0);
    let mut handle = submit(admission, Job { prompt: Prompt::text(prompt), params, log: log.clone() })?;

    let meta = AnswerMeta {
        id: new_id("cmpl"),
        created: unix_time(),
        model: state.model_id.clone(),
        include_usage: fields.include_usage(),
    };
    if fields.stream() {
        return Ok(completion_stream(handle, meta, logprobs.is_some()));
    }

    let mut text = String::new();
    let mut joiner = CompletionText::default();
    let mut token_logprobs = logprobs.map(|_| CompletionLogprobs::default());
    let mut offset = 0;
    let completion = wait_for_completion(&mut handle, |event| {
        if let (JobEvent::Token(info), Some(body)) = (&event, &mut token_logprobs) {
            body.push(info, offset);
            offset += info.text.len();
        }
        if let Some(piece) = joiner.event(&event) {
            text.push_str(&piece);
        }
    })
    .await?;
    Ok(Json(json!({
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{
            "text": text,
            "index": 0,
            "logprobs": token_logprobs,
            "finish_reason": finish_reason(completion.finish_reason, false),
        }],
        "usage": UsageBody::from(&completion.usage),
    }))
    .into_response())
}

/// Any `model` name is accepted, as for chat: the server has one embedding model.
async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(log): Extension<RequestLog>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let Some(service) = &state.embeddings else {
        return Err(ApiError::not_found(
            "no embedding model loaded: start the server with --embedding-model DIR",
        )
        .with_param("model")
        .with_code("model_not_found"));
    };
    let fields: EmbeddingFields = parse_fields(&body)?;
    let response = service.respond(&fields).await?;
    let tokens = response["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    log.prompt(tokens as usize, 0);
    Ok(Json(response))
}

/// The served models: the chat model, then the embedding model if any.
fn model_entries(state: &AppState) -> Vec<Value> {
    let entry =
        |id: &str| json!({"id": id, "object": "model", "created": state.started, "owned_by": "qwenrt"});
    let mut entries = vec![entry(&state.model_id)];
    entries.extend(state.embeddings.as_ref().map(|e| entry(&e.model_id)));
    entries
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": model_entries(&state)}))
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    model_entries(&state).into_iter().find(|m| m["id"] == id.as_str()).map(Json).ok_or_else(|| {
        ApiError::not_found(format!("the model {id:?} does not exist on this server"))
            .with_param("model")
            .with_code("model_not_found")
    })
}

/// The built-in chat page: one self-contained file (no CDN, so it works offline), in the binary.
async fn chat_page() -> Response {
    const PAGE: &str = include_str!("../../web/chat.html");
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page talks only to this server and runs only its own inline code.
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// What a client (the chat page) needs to know of the server, as llama.cpp's `/props` says it.
async fn props(State(state): State<Arc<AppState>>) -> Json<Value> {
    let status = state.engine.status();
    Json(json!({
        "model": state.model_id,
        "modalities": {"vision": state.lm.has_vision()},
        "n_ctx": state.max_context,
        "total_slots": status.slots,
        "speculative": state.speculative.is_some(),
        "embedding_model": state.embeddings.as_ref().map(|e| e.model_id.clone()),
    }))
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let status = state.engine.status();
    Json(json!({
        "status": "ok",
        "slots_idle": status.slots - status.busy.min(status.slots),
        "slots_processing": status.busy,
        "requests_waiting": status.queued,
        "requests_preparing": status.preparing,
        "queue_capacity": status.queue_capacity,
    }))
}

/// llama.cpp's `/tokenize` body.
#[derive(Deserialize)]
struct TokenizeFields {
    content: String,
    /// Also return each token's text.
    #[serde(default)]
    with_pieces: bool,
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let fields: TokenizeFields = parse_fields(&body)?;
    let lm = state.lm.clone();
    // Tokenizing costs what preparing a prompt does, so it takes a place the same way.
    let _admission = admit(&state.engine)?;
    blocking(move || {
        let ids = lm.encode(&fields.content).map_err(|e| ApiError::internal(format!("tokenizing: {e}")))?;
        if !fields.with_pieces {
            return Ok(Json(json!({"tokens": ids})));
        }
        let pieces: Vec<Value> = ids
            .iter()
            .map(|&id| json!({"id": id, "piece": lm.tokenizer.decode(&[id]).unwrap_or_default()}))
            .collect();
        Ok(Json(json!({"tokens": pieces})))
    })
    .await
}

#[derive(Deserialize)]
struct DetokenizeFields {
    tokens: Vec<u32>,
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let fields: DetokenizeFields = parse_fields(&body)?;
    let lm = state.lm.clone();
    blocking(move || {
        let content = lm
            .tokenizer
            .decode(&fields.tokens)
            .map_err(|e| ApiError::invalid_request(e.to_string()).with_param("tokens"))?;
        Ok(Json(json!({"content": content})))
    })
    .await
}
