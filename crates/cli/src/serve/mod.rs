//! `qwenrt serve`: an OpenAI-compatible HTTP server.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (raw prompt, special tokens
//! recognised), `POST /v1/embeddings` (with `--embedding-model`), `GET /v1/models[/ID]`,
//! `GET /health` (slots busy and idle, requests waiting; needs no API key), and llama.cpp's
//! `POST /tokenize` (`{"content", "with_pieces"}` → `{"tokens"}`) and `POST /detokenize`
//! (`{"tokens"}` → `{"content"}`). Every error is `{"error": {"message", "type", "param",
//! "code"}}`.
//!
//! A multimodal model reads images in chat messages: `image_url` parts with `data:` URLs
//! (base64 PNG, JPEG, WebP or GIF; an animated GIF as a `video_url` is a video). Local paths and
//! `file://` URLs are read only with `--allow-local-files`; remote URLs are never fetched.
//!
//! Where it differs from OpenAI, it follows llama.cpp:
//! - any `model` name is accepted on the generation and embedding endpoints (one model of each
//!   kind is served; `/v1/models` names them);
//! - without `max_tokens` an answer may fill the context, and a larger `max_tokens` is lowered
//!   to what fits;
//! - `tool_choice: "required"` offers the tools like `auto` (there is no constrained decoding);
//!   a named function is checked and offered alone;
//! - extra request fields: `top_k`, `min_p`, `repetition_penalty`, `chat_template_kwargs`
//!   (`enable_thinking`), `thinking_budget` (or `max_thinking_tokens`), and for embeddings
//!   `input_type` (`query`/`document`), `instruction` and `truncate`; the answer's reasoning
//!   comes as `reasoning_content`.
//!
//! ```text
//! routes.rs      the endpoints; requests in, engine jobs out, answers back
//! openai.rs      OpenAI request/response bodies and their translation to qwenrt's types
//! output.rs      job events → reasoning / content / tool calls, shared by both answer forms
//! sse.rs         streamed answers (Server-Sent Events)
//! errors.rs      OpenAI-shaped errors and the JSON body extractor
//! middleware.rs  API key check, one log line per request
//! listener.rs    connections: how many at once, how long a request head may take
//! state.rs       what the handlers and middleware share (below both)
//! engine.rs      the job queue and the worker thread that drives the library's scheduler
//! embeddings.rs  /v1/embeddings on its own worker thread
//! ```
//!
//! The model runs only on the engine's worker thread; the async runtime only moves bytes.

mod embeddings;
mod engine;
mod errors;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod listener;
mod middleware;
mod openai;
mod output;
mod routes;
mod sse;
mod state;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::Dtype;
use axum::Extension;
use embeddings::EmbeddingService;
use engine::{Engine, EngineOptions};
use listener::ConnectionLimits;
use openai::MediaPolicy;
use routes::AppState;

#[derive(Args)]
pub struct ServeArgs {
    /// The chat model: a Hugging Face model folder, or a hub id (`Qwen/Qwen3.5-0.8B[@revision]`)
    /// resolved through the Hugging Face cache.
    #[arg(long)]
    model: PathBuf,
    /// Embedding model folder (sentence-transformers layout, e.g. Qwen3-Embedding-0.6B) or hub
    /// id, for /v1/embeddings.
    #[arg(long, value_name = "DIR|ID")]
    embedding_model: Option<PathBuf>,
    /// Address to listen on; the default accepts connections from this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every request but /health.
    #[arg(long, env = "QWENRT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most tokens a conversation may hold, prompt and answer (default: the model's context).
    #[arg(long, value_name = "N")]
    ctx: Option<usize>,
    /// Conversations whose state is kept at once, each with its own prompt cache.
    #[arg(long, default_value_t = 1, value_name = "N")]
    parallel: usize,
    /// Requests that may wait for the model (and as many for the embedding model); more get 503.
    #[arg(long, default_value_t = 64, value_name = "N")]
    queue: usize,
    /// Most prompt tokens prefilled per step, shared by the requests whose prompt is being read
    /// (oldest first), while the others decode a token each: smaller keeps streams steadier when
    /// long prompts arrive, larger reads prompts faster.
    #[arg(long, default_value_t = engine::DEFAULT_PREFILL_CHUNK, value_name = "N")]
    prefill_chunk: usize,
    /// Memory for each conversation's saved states, in MiB (0 turns prompt reuse off).
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    cache_mib: usize,
    /// Largest request body accepted, in MiB.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    max_body_mib: usize,
    /// Millions of pixels (2^20) that one request's images and video frames may hold together,
    /// as decoded; a picture's size is checked from its header before it is decoded.
    #[arg(long, default_value_t = 128, value_name = "MPX")]
    max_media_mpx: u64,
    /// Connections open at once; more are closed unread (streams count while they last).
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_connections: usize,
    /// Seconds a request's head may take to arrive (and an idle keep-alive connection may wait
    /// for the next one), and then its body: the connection is closed, or the request answered
    /// 408, after that.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    read_timeout: f64,
    /// Name the model is served as (default: the hub id, or the model folder's name).
    #[arg(long)]
    alias: Option<String>,
    /// Weight precision.
    #[arg(long, value_enum, default_value = "int8")]
    dtype: Dtype,
    /// Let image and video parts name local files (paths or file:// URLs) that this process can
    /// read; without it only data: URLs are accepted. Only for clients you trust.
    #[arg(long)]
    allow_local_files: bool,
    /// Decode speculatively with the checkpoint's multi-token-prediction head (`mtp`); a request
    /// turns it off with `"speculative": false`. Off by default: see the README for when it pays.
    #[arg(long, value_enum, value_name = "KIND")]
    speculative: Option<crate::gen_args::SpeculativeKind>,
    /// With --speculative: most drafts per step (1 to 4).
    #[arg(long, value_name = "N", default_value_t = 3, requires = "speculative")]
    draft_max: usize,
    /// With --speculative: draft among the first N token ids only (see `qwenrt run --help`).
    #[arg(long, value_name = "N", requires = "speculative")]
    draft_vocab: Option<usize>,
}

/// How long in-flight answers may take to wind down after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub fn serve(args: ServeArgs) -> Result<()> {
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if args.prefill_chunk == 0 {
        bail!("--prefill-chunk must be at least 1");
    }
    if args.max_media_mpx == 0 {
        bail!("--max-media-mpx must be at least 1");
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if !(args.read_timeout > 0.0 && args.read_timeout <= 3600.0) {
        bail!("--read-timeout must be more than 0 and at most 3600 seconds");
    }
    let read_timeout = Duration::from_secs_f64(args.read_timeout);
    if args.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        bail!("--api-key (or QWENRT_API_KEY) is empty: give a key, or leave it out to serve without one");
    }
    let cache_bytes = crate::mib_to_bytes(args.cache_mib, "--cache-mib")?;
    let body_limit = crate::mib_to_bytes(args.max_body_mib, "--max-body-mib")?;
    let lm = Arc::new(crate::load_lm(&args.model, args.dtype)?);
    let speculative =
        crate::gen_args::speculative_options(&lm, args.speculative, args.draft_max, args.draft_vocab)?;
    let model_context = lm.model.max_context();
    let max_context = match args.ctx {
        Some(0) => bail!("--ctx must be at least 1"),
        Some(n) => n.min(model_context),
        None => model_context,
    };
    let model_id = match &args.alias {
        Some(alias) => alias.clone(),
        None => crate::model_name(&args.model),
    };
    let engine = Engine::start(
        lm.clone(),
        EngineOptions {
            slots: args.parallel,
            queue_capacity: args.queue,
            max_context,
            prompt_cache_bytes: cache_bytes,
            prefill_chunk: args.prefill_chunk,
            drafting: speculative.is_some(),
        },
    )
    .context("starting the engine thread")?;
    let embeddings = match &args.embedding_model {
        Some(spec) => {
            let dir = crate::locate_model(spec)?;
            let embedder = qwenrt::Embedder::load_with(&dir, &crate::load_options(args.dtype))
                .with_context(|| format!("loading {}", dir.display()))?;
            let service = EmbeddingService::start(embedder, crate::model_name(spec), args.queue)
                .context("starting the embedding thread")?;
            Some(service)
        }
        None => None,
    };
    let state = Arc::new(AppState {
        lm,
        engine,
        model_id,
        api_key: args.api_key.clone(),
        max_context,
        body_limit,
        read_timeout,
        started: output::unix_time(),
        embeddings,
        speculative,
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("qwenrt-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let media = MediaPolicy {
        allow_local_files: args.allow_local_files,
        request_pixels: args.max_media_mpx.saturating_mul(1 << 20),
    };
    let limits = ConnectionLimits { max_connections: args.max_connections, header_timeout: read_timeout };
    runtime.block_on(run(state, media, limits, &args.host, args.port))
}

async fn run(
    state: Arc<AppState>,
    media: MediaPolicy,
    limits: ConnectionLimits,
    host: &str,
    port: u16,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let address: SocketAddr = listener.local_addr().context("reading the bound address")?;
    // The first line of stdout: scripts (and the tests) read the port from it.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{address}")?;
    stdout.flush()?;
    drop(stdout);
    if !address.ip().is_loopback() && state.api_key.is_none() {
        eprintln!("warning: listening on {address} without an API key: anyone who can reach it can use it");
    }
    if media.allow_local_files {
        eprintln!(
            "warning: --allow-local-files: clients can have any image file this process can read sent to the model"
        );
    }
    eprintln!(
        "serving {} ({} slots, context {} tokens); stop with Ctrl-C",
        state.model_id,
        state.engine.status().slots,
        state.max_context
    );

    // The policy rides as an extension: routes without it (the in-process tests) read no files.
    let app = routes::router(state.clone()).layer(Extension(media));
    let shutdown = {
        let state = state.clone();
        async move {
            shutdown_signal().await;
            eprintln!("shutting down");
            // Answers in progress end now (with an error event for streams) instead of running
            // to their token limit.
            state.engine.shutdown();
        }
    };
    listener::serve(listener, app, limits, shutdown, SHUTDOWN_GRACE).await;
    Ok(())
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
