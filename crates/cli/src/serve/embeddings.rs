//! `/v1/embeddings`: an embedding model on its own worker thread with a bounded queue, so
//! embedding requests neither run on the async runtime nor wait behind long generations.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use base64::Engine as _;
use qwenrt::{EmbedKind, EmbedOptions, Embedder, Embedding};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::errors::ApiError;

/// The fields of an embeddings request.
#[derive(Debug, Deserialize)]
pub struct EmbeddingFields {
    pub input: Value,
    pub encoding_format: Option<String>,
    pub dimensions: Option<i64>,
    /// Not in OpenAI's API: `query` puts the model's query prompt before the texts, `document`
    /// (the default) nothing. Qwen3-Embedding expects queries to carry a prompt.
    pub input_type: Option<String>,
    /// Not in OpenAI's API: a task for the queries, `Instruct: {instruction}\nQuery:`.
    pub instruction: Option<String>,
    /// Not in OpenAI's API: cut texts longer than the model's maximum instead of refusing them.
    #[serde(default)]
    pub truncate: bool,
}

/// What to embed: texts, or texts already tokenized.
enum Inputs {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl EmbeddingFields {
    fn inputs(&self) -> Result<Inputs, ApiError> {
        let bad = |message: &str| ApiError::invalid_request(message).with_param("input");
        let ids = |v: &Value| -> Option<Vec<u32>> {
            v.as_array()?.iter().map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok())).collect()
        };
        let inputs =
            match &self.input {
                Value::String(text) => Inputs::Texts(vec![text.clone()]),
                Value::Array(items) if items.is_empty() => return Err(bad("input must not be empty")),
                Value::Array(items) if items.iter().all(Value::is_string) => {
                    Inputs::Texts(items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                }
                Value::Array(items) if items.iter().all(Value::is_number) => {
                    Inputs::Tokens(vec![
                        ids(&self.input).ok_or_else(|| bad("token ids must be non-negative integers"))?
                    ])
                }
                Value::Array(items) => {
                    Inputs::Tokens(items.iter().map(ids).collect::<Option<_>>().ok_or_else(|| {
                        bad("input must be a string, a list of strings or lists of token ids")
                    })?)
                }
                _ => return Err(bad("input must be a string, a list of strings or lists of token ids")),
            };
        Ok(inputs)
    }

    fn options(&self) -> Result<EmbedOptions, ApiError> {
        let kind = match (self.input_type.as_deref(), &self.instruction) {
            (_, Some(task)) => EmbedKind::Instruct(task.clone()),
            (Some("query"), None) => EmbedKind::Query,
            (None | Some("document"), None) => EmbedKind::Document,
            (Some(other), None) => {
                return Err(ApiError::invalid_request(format!(
                    "input_type must be query or document, got {other:?}"
                ))
                .with_param("input_type"))
            }
        };
        let dimensions = match self.dimensions {
            Some(d) if d < 1 => {
                return Err(
                    ApiError::invalid_request("dimensions must be at least 1").with_param("dimensions")
                )
            }
            d => d.map(|d| d as usize),
        };
        Ok(EmbedOptions { kind, dimensions, truncate: self.truncate })
    }

    fn base64(&self) -> Result<bool, ApiError> {
        match self.encoding_format.as_deref() {
            None | Some("float") => Ok(false),
            Some("base64") => Ok(true),
            Some(other) => Err(ApiError::invalid_request(format!(
                "encoding_format must be float or base64, got {other:?}"
            ))
            .with_param("encoding_format")),
        }
    }
}

struct EmbedJob {
    inputs: Inputs,
    options: EmbedOptions,
    reply: oneshot::Sender<Result<Vec<Embedding>, ApiError>>,
}

/// An embedding model served by one worker thread.
pub struct EmbeddingService {
    pub model_id: String,
    jobs: Option<SyncSender<EmbedJob>>,
    worker: Option<JoinHandle<()>>,
}

impl EmbeddingService {
    /// Starts the worker; at most `queue_capacity` requests wait for it.
    pub fn start(embedder: Embedder, model_id: String, queue_capacity: usize) -> std::io::Result<Self> {
        let (jobs, queue) = sync_channel::<EmbedJob>(queue_capacity);
        let embedder = Arc::new(embedder);
        let worker = std::thread::Builder::new().name("qwenrt-embed".into()).spawn(move || {
            for job in queue {
                // The client left while the job waited.
                if job.reply.is_closed() {
                    continue;
                }
                let result = catch_unwind(AssertUnwindSafe(|| embed(&embedder, &job.inputs, &job.options)))
                    .unwrap_or_else(|_| Err(ApiError::internal("the embedding failed unexpectedly")));
                let _ = job.reply.send(result);
            }
        })?;
        Ok(EmbeddingService { model_id, jobs: Some(jobs), worker: Some(worker) })
    }

    /// Handles one request body.
    pub async fn respond(&self, fields: &EmbeddingFields) -> Result<Value, ApiError> {
        let inputs = fields.inputs()?;
        let options = fields.options()?;
        let base64 = fields.base64()?;
        let (reply, result) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or_else(ApiError::shutting_down)?;
        jobs.try_send(EmbedJob { inputs, options, reply }).map_err(|e| match e {
            TrySendError::Full(_) => ApiError::unavailable(
                "the server is busy: too many embedding requests are waiting; retry later",
                "queue_full",
            ),
            TrySendError::Disconnected(_) => ApiError::shutting_down(),
        })?;
        let embeddings = result.await.map_err(|_| ApiError::shutting_down())??;
        let tokens: usize = embeddings.iter().map(|e| e.tokens).sum();
        let data: Vec<Value> = embeddings
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let vector = if base64 { Value::String(encode_base64(&e.vector)) } else { json!(e.vector) };
                json!({"object": "embedding", "index": index, "embedding": vector})
            })
            .collect();
        Ok(json!({
            "object": "list",
            "data": data,
            "model": self.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }))
    }
}

impl Drop for EmbeddingService {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop once the waiting jobs are done.
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn embed(embedder: &Embedder, inputs: &Inputs, options: &EmbedOptions) -> Result<Vec<Embedding>, ApiError> {
    let invalid = |e: qwenrt::Error| match e {
        qwenrt::Error::InvalidInput(message) => ApiError::invalid_request(message).with_param("input"),
        other => ApiError::internal(other.to_string()),
    };
    if let Some(d) = options.dimensions.filter(|&d| d > embedder.hidden_size()) {
        return Err(ApiError::invalid_request(format!(
            "dimensions must be between 1 and {}, got {d}",
            embedder.hidden_size()
        ))
        .with_param("dimensions"));
    }
    match inputs {
        Inputs::Texts(texts) => embedder.embed(texts, options).map_err(invalid),
        Inputs::Tokens(ids) => {
            let vocab = embedder.model().vocab_size();
            let max = embedder.max_tokens();
            for (i, seq) in ids.iter().enumerate() {
                if seq.is_empty() || seq.len() > max {
                    return Err(ApiError::invalid_request(format!(
                        "input {i} has {} tokens; between 1 and {max} are accepted",
                        seq.len()
                    ))
                    .with_param("input"));
                }
                if let Some(id) = seq.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::invalid_request(format!(
                        "input {i}: token id {id} is outside the vocabulary"
                    ))
                    .with_param("input"));
                }
            }
            embedder.embed_tokens(ids, options.dimensions).map_err(invalid)
        }
    }
}

/// OpenAI's `encoding_format: base64`: the little-endian f32 bytes, base64-encoded.
fn encode_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::errors::parse_fields;

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(encode_base64(&[1.0, -2.5]), "AACAPwAAIMA=");
    }

    #[test]
    fn inputs_and_options() {
        let fields = |body: Value| parse_fields::<EmbeddingFields>(&body).unwrap();
        assert!(matches!(fields(json!({"input": "a"})).inputs(), Ok(Inputs::Texts(t)) if t == ["a"]));
        assert!(
            matches!(fields(json!({"input": ["a", "b"]})).inputs(), Ok(Inputs::Texts(t)) if t.len() == 2)
        );
        assert!(
            matches!(fields(json!({"input": [1, 2]})).inputs(), Ok(Inputs::Tokens(t)) if t == [vec![1, 2]])
        );
        assert!(
            matches!(fields(json!({"input": [[1], [2, 3]]})).inputs(), Ok(Inputs::Tokens(t)) if t.len() == 2)
        );
        assert!(fields(json!({"input": []})).inputs().is_err());
        assert!(fields(json!({"input": ["a", 1]})).inputs().is_err());
        assert_eq!(
            fields(json!({"input": "a", "input_type": "query"})).options().unwrap().kind,
            EmbedKind::Query
        );
        assert!(fields(json!({"input": "a", "input_type": "poem"})).options().is_err());
        assert!(fields(json!({"input": "a", "dimensions": 0})).options().is_err());
        assert!(fields(json!({"input": "a", "encoding_format": "hex"})).base64().is_err());
    }
}
