//! Around every request: the API key check and the one-line request log.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use subtle::ConstantTimeEq;

use super::errors::{ApiError, BodyLimit, ReadTimeout};
use super::state::AppState;

/// Paths that answer without an API key: a load balancer's probe has none, and the chat page
/// asks for the key itself.
const PUBLIC_PATHS: [&str; 2] = ["/health", "/"];

/// With `--api-key`, every request but [`PUBLIC_PATHS`] needs `Authorization: Bearer KEY`.
pub async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        if !PUBLIC_PATHS.contains(&req.uri().path()) {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
                .unwrap_or("");
            // Constant time, so the response time does not tell how much of a guess was right
            // (only whether its length was).
            if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
                return ApiError::invalid_api_key().into_response();
            }
        }
    }
    next.run(req).await
}

/// The credentials of an `Authorization: Bearer TOKEN` header; the scheme is case-insensitive
/// (RFC 9110, 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start())
}

/// A request's log line: the middleware fills in what was asked and answered, the handler the
/// prompt size, and the engine the token counts when the job ends. The line is written when
/// the last of them lets go, so a stream whose client left still logs the tokens generated
/// before the job was cancelled.
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Line>);

#[derive(Debug, Default)]
struct Line {
    prompt: AtomicUsize,
    cached: AtomicUsize,
    completion: AtomicUsize,
    /// Set by the middleware; a log without it (a job submitted in a test) writes nothing.
    request: Mutex<Option<RequestLine>>,
}

#[derive(Debug)]
struct RequestLine {
    method: Method,
    path: String,
    start: Instant,
    /// `None` until the handler has answered.
    status: Option<StatusCode>,
    /// When the response was sent whole or given up.
    end: Option<Instant>,
    /// Whether the whole response was sent.
    complete: bool,
}

impl RequestLog {
    fn for_request(method: Method, path: String) -> Self {
        let line =
            RequestLine { method, path, start: Instant::now(), status: None, end: None, complete: false };
        let log = RequestLog::default();
        *log.0.request.lock().unwrap_or_else(|e| e.into_inner()) = Some(line);
        log
    }

    pub fn prompt(&self, tokens: usize, cached: usize) {
        self.0.prompt.store(tokens, Ordering::Relaxed);
        self.0.cached.store(cached, Ordering::Relaxed);
    }

    /// The counts of a generation that ended.
    pub fn usage(&self, usage: &qwenrt::Usage) {
        self.prompt(usage.prompt_tokens, usage.cached_prompt_tokens);
        self.0.completion.store(usage.completion_tokens, Ordering::Relaxed);
    }

    /// Prompt, cached and completion tokens so far.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize, usize) {
        let load = |n: &AtomicUsize| n.load(Ordering::Relaxed);
        (load(&self.0.prompt), load(&self.0.cached), load(&self.0.completion))
    }

    fn with_request(&self, f: impl FnOnce(&mut RequestLine)) {
        if let Some(line) = self.0.request.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f(line);
        }
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let Some(line) = self.request.get_mut().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let (prompt, cached, completion) =
            (*self.prompt.get_mut(), *self.cached.get_mut(), *self.completion.get_mut());
        let tokens = if prompt == 0 && completion == 0 {
            "-".to_owned()
        } else {
            format!("{prompt}+{completion} tokens ({cached} cached)")
        };
        let ms = line.end.unwrap_or_else(Instant::now).duration_since(line.start).as_secs_f64() * 1e3;
        let status = line.status.map_or_else(|| "-".to_owned(), |s| s.as_u16().to_string());
        let gone = if line.complete { "" } else { " (client disconnected)" };
        eprintln!("{} {} {status} {tokens} {ms:.0} ms{gone}", line.method, line.path);
    }
}

/// Gives each request its [`RequestLog`] and the body limit, and has one line logged to stderr
/// per request: method, path, status, tokens, duration (a stream lasts until its last event).
/// A client that leaves first is logged too, as disconnected.
pub async fn log_requests(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    // Dropped with this future if the client leaves before the response.
    let log = RequestLog::for_request(req.method().clone(), req.uri().path().to_owned());
    req.extensions_mut().insert(log.clone());
    req.extensions_mut().insert(BodyLimit(state.body_limit));
    req.extensions_mut().insert(ReadTimeout(state.read_timeout));
    // A declared length over the limit is refused before a byte of the body is read (and so
    // before hyper answers `Expect: 100-continue`).
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let response = if declared.is_some_and(|n| n > state.body_limit as u64) {
        ApiError::payload_too_large(state.body_limit).into_response()
    } else {
        next.run(req).await
    };
    let (parts, body) = response.into_parts();
    // hyper never polls a body that is empty from the start.
    let complete = HttpBody::is_end_stream(&body);
    log.with_request(|line| {
        line.status = Some(parts.status);
        line.complete = complete;
    });
    Response::from_parts(parts, Body::new(LoggedBody { inner: body, log }))
}

/// A response body that marks its request's line sent (or abandoned) when it is dropped.
struct LoggedBody {
    inner: Body,
    log: RequestLog,
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.log.with_request(|line| line.end = Some(Instant::now()));
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // A body of known length may not be polled again after its last bytes.
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.log.with_request(|line| line.complete = true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
