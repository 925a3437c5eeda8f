//! The server's request handling in-process, for the request-body fuzz target: the whole router
//! (middleware, body extractor, field checks, template rendering, tokenization, pictures,
//! constraints) on a real model, with an engine that plays back a canned answer instead of
//! generating, so that no body can make a fuzz run slow by asking for many tokens.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request};
use axum::Router;
use qwenrt::{Embedder, FinishReason, LanguageModel};
use tower::ServiceExt;

use super::embeddings::EmbeddingService;
use super::engine::testing::Scripted;
use super::engine::Engine;
use super::routes::{router, AppState};

/// The POST routes a body can go to.
pub const ROUTES: [&str; 5] =
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize"];

/// A server on a chat model folder and an embedding model folder, driven without a socket.
pub struct Server {
    app: Router,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    pub fn new(chat_model: &Path, embedding_model: &Path) -> Self {
        let lm = Arc::new(LanguageModel::load(chat_model).expect("loading the chat model"));
        let embedder = Embedder::load(embedding_model).expect("loading the embedding model");
        let script = Scripted::new(&["think:a thought", "an answer"], FinishReason::Stop, None);
        let state = Arc::new(AppState {
            lm,
            engine: Engine::with_backend(script, 1, 4).expect("starting the engine"),
            model_id: "fuzz".into(),
            api_key: None,
            max_context: 4096,
            body_limit: 1 << 20,
            read_timeout: std::time::Duration::from_secs(30),
            started: 0,
            embeddings: Some(
                EmbeddingService::start(embedder, "fuzz-embed".into(), 4).expect("embedding thread"),
            ),
            speculative: None,
        });
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Server { app: router(state), runtime }
    }

    /// Posts `body` to `path` and reads the whole answer (a stream to its end): its status and
    /// bytes.
    pub fn post(&self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_vec()))
            .expect("a request");
        self.runtime.block_on(async {
            let response = self.app.clone().oneshot(request).await.expect("the router is infallible");
            let status = response.status().as_u16();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("the body");
            (status, bytes.to_vec())
        })
    }
}
