//! Around every request: the API key check and the one-line request log.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Paths that answer without an API key: a load balancer's probe has none.
const PUBLIC_PATHS: [&str; 1] = ["/health"];

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

/// Token counts of a request, filled in by its handler (or its stream, which outlives it).
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    prompt: AtomicUsize,
    cached: AtomicUsize,
    completion: AtomicUsize,
}

impl RequestLog {
    pub fn prompt(&self, tokens: usize, cached: usize) {
        self.0.prompt.store(tokens, Ordering::Relaxed);
        self.0.cached.store(cached, Ordering::Relaxed);
    }

    pub fn completion(&self, tokens: usize) {
        self.0.completion.store(tokens, Ordering::Relaxed);
    }

    fn describe(&self) -> String {
        let (prompt, cached, completion) = (
            self.0.prompt.load(Ordering::Relaxed),
            self.0.cached.load(Ordering::Relaxed),
            self.0.completion.load(Ordering::Relaxed),
        );
        if prompt == 0 && completion == 0 {
            return "-".to_owned();
        }
        format!("{prompt}+{completion} tokens ({cached} cached)")
    }
}

/// Gives each request its [`RequestLog`] and the body limit, and logs one line to stderr when
/// the response has been sent: method, path, status, tokens, duration (a stream lasts until
/// its last event). A client that leaves first is logged too, as disconnected.
pub async fn log_requests(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let log = RequestLog::default();
    // Dropped with this future if the client leaves before the response: it then logs that.
    let mut line = LogLine {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        status: None,
        log: log.clone(),
        start: Instant::now(),
        complete: false,
    };
    req.extensions_mut().insert(log);
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
    line.status = Some(parts.status);
    // hyper never polls a body that is empty from the start.
    line.complete = HttpBody::is_end_stream(&body);
    Response::from_parts(parts, Body::new(LoggedBody { inner: body, line }))
}

struct LogLine {
    method: Method,
    path: String,
    /// `None` until the handler has answered.
    status: Option<StatusCode>,
    log: RequestLog,
    start: Instant,
    /// Whether the whole response was sent.
    complete: bool,
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let ms = self.start.elapsed().as_secs_f64() * 1e3;
        let status = self.status.map_or_else(|| "-".to_owned(), |s| s.as_u16().to_string());
        let gone = if self.complete { "" } else { " (client disconnected)" };
        eprintln!("{} {} {status} {} {ms:.0} ms{gone}", self.method, self.path, self.log.describe());
    }
}

/// A response body that logs its request's line when it is dropped: sent or abandoned.
struct LoggedBody {
    inner: Body,
    line: LogLine,
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
            self.line.complete = true;
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
