//! Errors as the OpenAI API reports them: `{"error": {"message", "type", "param", "code"}}` with
//! the matching HTTP status, and the JSON body extractor that produces them for bad requests.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::engine::JobError;

/// One error response.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, …
    pub kind: &'static str,
    /// The request field at fault, when there is one (`messages[2].content`, `n`, …).
    pub param: Option<String>,
    /// A stable machine-readable code (`context_length_exceeded`, `invalid_api_key`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    /// 400: the request is malformed or asks for something this server does not do.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 401, worded as OpenAI does (without echoing the key).
    pub fn invalid_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Incorrect or missing API key: send `Authorization: Bearer KEY`",
        )
        .with_code("invalid_api_key")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", message)
    }

    pub fn request_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("the request body did not arrive within {} s", timeout.as_secs_f64()),
        )
        .with_code("request_timeout")
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than this server's limit of {limit} bytes"),
        )
        .with_code("request_too_large")
    }

    /// 503: the queue is full or the server is stopping; the client may retry later.
    pub fn unavailable(message: impl Into<String>, code: &'static str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).with_code(code)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The 503 of work the server dropped because it is stopping.
    pub fn shutting_down() -> Self {
        Self::unavailable("the server is shutting down", "shutting_down")
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body, also sent as an event when a stream fails after it started.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// Why a job failed, as the client sees it.
impl From<JobError> for ApiError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Invalid(message) => ApiError::invalid_request(message),
            JobError::Internal(message) => ApiError::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// A request body that is valid JSON and within the size limit (any content type is accepted, as
/// curl's `-d` sends a form type). Fields are read from it with [`parse_fields`].
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req.extensions().get::<BodyLimit>().map_or(usize::MAX, |l| l.0);
        let timeout = req.extensions().get::<ReadTimeout>().map(|t| t.0);
        let read = Bytes::from_request(req, state);
        let read = match timeout {
            Some(timeout) => {
                tokio::time::timeout(timeout, read).await.map_err(|_| ApiError::request_timeout(timeout))?
            }
            None => read.await,
        };
        let bytes = read.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(limit)
            } else {
                ApiError::invalid_request(format!("could not read the request body: {rejection}"))
            }
        })?;
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid_request(format!("the request body is not valid JSON: {e}"))
                .with_code("invalid_json")
        })?;
        Ok(JsonBody(value))
    }
}

/// The body size limit in force, put in the request's extensions so the extractor can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// How long the body may take to arrive (`--read-timeout`), likewise.
#[derive(Debug, Clone, Copy)]
pub struct ReadTimeout(pub std::time::Duration);

/// Reads the fields `T` knows from a JSON body; fields it does not know are ignored (clients send
/// many: `user`, `metadata`, `store`, …). A field of the wrong type is a 400 naming the field.
pub fn parse_fields<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    if !body.is_object() {
        return Err(ApiError::invalid_request("the request body must be a JSON object"));
    }
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        if path == "." {
            ApiError::invalid_request(message)
        } else {
            ApiError::invalid_request(format!("invalid `{path}`: {message}")).with_param(path)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Fields {
        temperature: Option<f32>,
        messages: Vec<Msg>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Msg {
        role: String,
    }

    #[test]
    fn wrong_field_types_name_the_field() {
        let err = parse_fields::<Fields>(&json!({"temperature": "hot", "messages": []})).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.param.as_deref(), Some("temperature"));
        let err = parse_fields::<Fields>(&json!({"messages": [{"role": 3}]})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
        let err = parse_fields::<Fields>(&json!({})).unwrap_err();
        assert!(err.message.contains("missing field `messages`"), "{}", err.message);
        assert!(parse_fields::<Fields>(&json!([1])).is_err());
        assert!(parse_fields::<Fields>(&json!({"messages": [], "user": "x"})).is_ok());
    }

    #[test]
    fn error_bodies_have_the_openai_shape() {
        let body = ApiError::invalid_request("bad n").with_param("n").body();
        assert_eq!(
            body,
            json!({"error": {"message": "bad n", "type": "invalid_request_error", "param": "n", "code": null}})
        );
    }
}
