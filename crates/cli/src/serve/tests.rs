//! Route tests: the whole router (middleware included) driven in-process, on the tiny fixture
//! models (random weights, real tokenizers) or on a scripted engine that plays back a canned
//! model output.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use futures_util::StreamExt;
use qwenrt::{Embedder, FinishReason, LanguageModel, SpeculativeOptions};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::embeddings::EmbeddingService;
use super::engine::testing::Scripted;
use super::engine::{Engine, EngineOptions};
use super::routes::{router, AppState};

/// tiny-vl in f32, loaded once for all tests.
pub(crate) fn lm() -> Arc<LanguageModel> {
    static LM: OnceLock<Arc<LanguageModel>> = OnceLock::new();
    LM.get_or_init(|| Arc::new(LanguageModel::load(&qwenrt_test_support::tiny_vl_folder("serve")).unwrap()))
        .clone()
}

const MODEL_ID: &str = "tiny-vl";
/// `<|endoftext|>` and `<|im_end|>`.
const END_IDS: [u32; 2] = [248044, 248046];

/// A `logit_bias` that bans the end tokens, so that answers run to `max_tokens`.
fn no_end() -> Value {
    END_IDS.iter().map(|id| (id.to_string(), json!(-100))).collect::<serde_json::Map<_, _>>().into()
}

struct Setup {
    slots: usize,
    queue: usize,
    max_context: usize,
    api_key: Option<&'static str>,
    body_limit: usize,
    embeddings: bool,
    speculative: Option<SpeculativeOptions>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            slots: 2,
            queue: 8,
            max_context: 4096,
            api_key: None,
            body_limit: 1 << 20,
            embeddings: false,
            speculative: None,
        }
    }
}

impl Setup {
    fn app(self) -> (Router, Arc<AppState>) {
        let engine = Engine::start(
            lm(),
            EngineOptions {
                slots: self.slots,
                queue_capacity: self.queue,
                max_context: self.max_context,
                prompt_cache_bytes: 64 << 20,
                prefill_chunk: super::engine::DEFAULT_PREFILL_CHUNK,
                drafting: self.speculative.is_some(),
            },
        )
        .unwrap();
        self.with_engine(engine)
    }

    fn scripted(
        self,
        pieces: &[&str],
        gate: Option<std::sync::mpsc::Receiver<()>>,
    ) -> (Router, Arc<AppState>) {
        let script = Scripted::new(pieces, FinishReason::Stop, gate);
        let engine = Engine::with_backend(script, self.slots, self.queue).unwrap();
        self.with_engine(engine)
    }

    fn with_engine(self, engine: Engine) -> (Router, Arc<AppState>) {
        let embeddings = self.embeddings.then(|| {
            let embedder = Embedder::load(&qwenrt_test_support::tiny_embed_folder("serve")).unwrap();
            EmbeddingService::start(embedder, "tiny-embed".into(), 4).unwrap()
        });
        let state = Arc::new(AppState {
            lm: lm(),
            engine,
            model_id: MODEL_ID.into(),
            api_key: self.api_key.map(str::to_owned),
            max_context: self.max_context,
            body_limit: self.body_limit,
            read_timeout: std::time::Duration::from_secs(30),
            started: 1,
            embeddings,
            speculative: self.speculative,
        });
        (router(state.clone()), state)
    }
}

fn post(path: &str, body: &Value) -> Request<Body> {
    post_raw(path, body.to_string())
}

fn post_raw(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(body.into()).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// Sends a request; returns the status and the body as JSON (or as a JSON string if it is not).
async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The `data:` payloads of a whole SSE response, `[DONE]` last.
async fn stream(app: &Router, request: Request<Body>) -> Vec<String> {
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_owned))
        .collect()
}

fn chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

/// What a chat stream's deltas add up to: (content, reasoning, tool calls, finish reason).
fn join_deltas(chunks: &[Value]) -> (String, String, Vec<Value>, String) {
    let (mut content, mut reasoning, mut calls, mut finish) =
        (String::new(), String::new(), vec![], String::new());
    for chunk in chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let delta = &choice["delta"];
            content += delta["content"].as_str().unwrap_or("");
            reasoning += delta["reasoning_content"].as_str().unwrap_or("");
            calls.extend(delta["tool_calls"].as_array().cloned().unwrap_or_default());
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = reason.to_owned();
            }
        }
    }
    (content, reasoning, calls, finish)
}

fn chat_body(user: &str, max_tokens: usize) -> Value {
    json!({"model": MODEL_ID, "messages": [{"role": "user", "content": user}], "max_tokens": max_tokens, "temperature": 0})
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, param: Option<&str>) {
    assert_eq!(status, want, "{body}");
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some() && error.get("code").is_some(), "{body}");
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
    }
}

#[tokio::test]
async fn health_and_models() {
    let (app, _) = Setup::default().app();
    let (status, body) = call(&app, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["slots_idle"], 2);

    let (status, body) = call(&app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], MODEL_ID);
    assert_eq!(call(&app, get("/v1/models/tiny-vl")).await.1["id"], MODEL_ID);
    let (status, body) = call(&app, get("/v1/models/gpt-4o")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, Some("model"));
}

#[tokio::test]
async fn chat_completion_whole_and_streamed_agree() {
    let (app, _) = Setup::default().app();
    let (status, whole) = call(&app, post("/v1/chat/completions", &chat_body("Hello there", 8))).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(whole["model"], MODEL_ID);
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let usage = &whole["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 8);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());

    let mut body = chat_body("Hello there", 8);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = chunks(&stream(&app, post("/v1/chat/completions", &body)).await);
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (content, _, calls, finish) = join_deltas(&chunks);
    assert_eq!(content, choice["message"]["content"].as_str().unwrap(), "greedy: same answer");
    assert!(calls.is_empty());
    assert_eq!(finish, choice["finish_reason"].as_str().unwrap());
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0, "the usage chunk has no choices");
    assert_eq!(last["usage"]["completion_tokens"], usage["completion_tokens"]);
    // The same conversation again: the slot that served it reuses its state.
    assert!(last["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0, "{last}");
}

#[tokio::test]
async fn sampling_fields_are_accepted() {
    let (app, _) = Setup::default().app();
    let body = json!({
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_completion_tokens": 4, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "seed": -3,
        "presence_penalty": 0.5, "frequency_penalty": 0.1, "repetition_penalty": 1.1, "stop": ["\n\n", "END"],
        "logit_bias": {"13": -100, "14": 5}, "n": 1, "user": "someone", "response_format": {"type": "text"},
    });
    let (status, a) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() <= 4);
    let (_, b) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"], "same seed, same answer");
}

#[tokio::test]
async fn logprobs_come_with_each_token() {
    let (app, _) = Setup::default().app();
    let mut body = chat_body("Count to three", 5);
    body["logit_bias"] = no_end();
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let (status, whole) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    let entries = whole["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    for entry in entries {
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(entry["top_logprobs"].as_array().unwrap().len(), 2);
        // Greedy: the token is the most likely one.
        assert_eq!(entry["top_logprobs"][0]["token"], entry["token"]);
    }

    body["stream"] = json!(true);
    let chunks = chunks(&stream(&app, post("/v1/chat/completions", &body)).await);
    let streamed: Vec<Value> = chunks
        .iter()
        .flat_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(&streamed, entries);

    let (status, without) = call(&app, post("/v1/chat/completions", &chat_body("Count to three", 2))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(without["choices"][0]["logprobs"].is_null());
}

/// `--speculative`: answers equal the plain server's, streamed or not; the usage counts the
/// drafts kept and discarded; a request can turn speculation off, and cannot turn it on where
/// the server has it off.
#[tokio::test]
async fn speculative_decoding_gives_the_plain_answers() {
    let (plain_app, _) = Setup::default().app();
    let options = SpeculativeOptions { draft_max: 3, adaptive: false, draft_vocab: None, oracle: None };
    let (app, _) = Setup { speculative: Some(options), ..Setup::default() }.app();
    let mut body = chat_body("Tell me about deltas", 24);
    body["logit_bias"] = no_end();
    let (_, want) = call(&plain_app, post("/v1/chat/completions", &body)).await;
    let (status, got) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["choices"][0]["message"], want["choices"][0]["message"]);
    let details = &got["usage"]["completion_tokens_details"];
    let drafted = details["accepted_prediction_tokens"].as_u64().unwrap()
        + details["rejected_prediction_tokens"].as_u64().unwrap();
    assert!(drafted > 0, "the head drafted: {details}");
    assert_eq!(want["usage"]["completion_tokens_details"]["rejected_prediction_tokens"], 0);

    body["stream"] = json!(true);
    let (content, _, _, _) = join_deltas(&chunks(&stream(&app, post("/v1/chat/completions", &body)).await));
    assert_eq!(content, want["choices"][0]["message"]["content"].as_str().unwrap());

    body["stream"] = json!(false);
    body["speculative"] = json!(false);
    let (_, off) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(off["choices"][0]["message"], want["choices"][0]["message"]);
    let details = &off["usage"]["completion_tokens_details"];
    let counts =
        (details["accepted_prediction_tokens"].as_u64(), details["rejected_prediction_tokens"].as_u64());
    assert_eq!(counts, (Some(0), Some(0)), "not speculative: {details}");

    body["speculative"] = json!(true);
    let (status, refused) = call(&plain_app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"]["param"], "speculative", "{refused}");
}

#[tokio::test]
async fn thinking_switch_and_budget() {
    let (app, _) = Setup::default().app();
    let mut body = chat_body("Why is the sky blue?", 6);
    let mut bias = no_end();
    bias["248069"] = json!(-100); // </think>
    body["logit_bias"] = bias;
    let (_, plain) = call(&app, post("/v1/chat/completions", &body)).await;
    assert!(plain["choices"][0]["message"].get("reasoning_content").is_none());

    body["chat_template_kwargs"] = json!({"enable_thinking": true});
    let (status, thinking) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{thinking}");
    // With `</think>` banned, every token is reasoning.
    assert_eq!(thinking["usage"]["completion_tokens_details"]["reasoning_tokens"], 6);
    assert!(thinking["choices"][0]["message"]["reasoning_content"].is_string());
    body["stream"] = json!(true);
    let (_, reasoning, _, _) = join_deltas(&chunks(&stream(&app, post("/v1/chat/completions", &body)).await));
    assert_eq!(reasoning, thinking["choices"][0]["message"]["reasoning_content"].as_str().unwrap());

    body["stream"] = json!(false);
    body["thinking_budget"] = json!(2);
    let (_, budgeted) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(budgeted["usage"]["completion_tokens_details"]["reasoning_tokens"], 2, "{budgeted}");
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]},
    }}])
}

#[tokio::test]
async fn tools_are_rendered_and_tool_history_is_accepted() {
    let (app, _) = Setup::default().app();
    let history = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
    ]);
    let body = |choice: Value| json!({"messages": history, "tools": weather_tools(), "tool_choice": choice, "max_tokens": 3, "temperature": 0});
    let (status, auto) = call(&app, post("/v1/chat/completions", &body(json!("auto")))).await;
    assert_eq!(status, StatusCode::OK, "{auto}");
    let (_, none) = call(&app, post("/v1/chat/completions", &body(json!("none")))).await;
    let (_, named) = call(
        &app,
        post("/v1/chat/completions", &body(json!({"type": "function", "function": {"name": "get_weather"}}))),
    )
    .await;
    let prompt = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt(&auto) > prompt(&none) + 50, "the tool list is in the prompt");
    assert_eq!(prompt(&named), prompt(&auto));
    let (status, err) = call(
        &app,
        post("/v1/chat/completions", &body(json!({"type": "function", "function": {"name": "nope"}}))),
    )
    .await;
    assert_error(status, &err, StatusCode::BAD_REQUEST, Some("tool_choice"));
}

const CANNED_CALL: [&str; 8] = [
    "Let me check",
    ".\n\n<tool",
    "_call>\n<function=get_weather>\n<para",
    "meter=city>\nParis\n</parameter>\n<parameter=days>\n",
    "3\n</parameter>\n</function>\n</tool_call>",
    "\n<tool_call>\n<function=get_",
    "weather>\n<parameter=city>\nLyon\n</parameter>\n</function>\n</tool_call>",
    "\n",
];

#[tokio::test]
async fn tool_calls_in_the_answer_are_parsed() {
    let (app, _) = Setup::default().scripted(&CANNED_CALL, None);
    let body = json!({"messages": [{"role": "user", "content": "Weather?"}], "tools": weather_tools()});
    let (status, whole) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Let me check.");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris", "days": 3}), "days is declared an integer");
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    assert!(calls[0].get("index").is_none());

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = chunks(&stream(&app, post("/v1/chat/completions", &streamed)).await);
    let (content, _, calls, finish) = join_deltas(&chunks);
    assert_eq!(finish, "tool_calls");
    assert_eq!(content.trim_end(), "Let me check.");
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0]["index"].clone(), calls[1]["index"].clone()), (json!(0), json!(1)));
    assert_eq!(calls[1]["function"]["arguments"], "{\"city\":\"Lyon\"}");

    // Without tools in the request, the same output is plain text.
    let plain = json!({"messages": [{"role": "user", "content": "Weather?"}]});
    let (_, text) = call(&app, post("/v1/chat/completions", &plain)).await;
    assert_eq!(text["choices"][0]["message"]["content"], CANNED_CALL.concat());
    assert_eq!(text["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn malformed_tool_calls_come_back_as_text() {
    let broken = [
        "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis",
        "\n</function>\n</tool_call>",
    ];
    let (app, _) = Setup::default().scripted(&broken, None);
    let body = json!({"messages": [{"role": "user", "content": "Weather?"}], "tools": weather_tools()});
    let (_, whole) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(whole["choices"][0]["message"]["content"], broken.concat());
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    assert!(whole["choices"][0]["message"].get("tool_calls").is_none());
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (content, _, calls, _) =
        join_deltas(&chunks(&stream(&app, post("/v1/chat/completions", &streamed)).await));
    assert_eq!(content, broken.concat());
    assert!(calls.is_empty());
}

/// A schema a random model can complete within a few dozen tokens.
fn forecast_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 8},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "sky": {"enum": ["clear", "cloudy", "rain"]}
        },
        "required": ["city", "days", "sky"],
        "additionalProperties": false
    })
}

fn assert_forecast(text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let object = value.as_object().unwrap_or_else(|| panic!("{text:?}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["city", "days", "sky"], "{text:?}");
    assert!(value["city"].as_str().is_some_and(|c| c.chars().count() <= 8), "{text:?}");
    assert!(value["days"].as_i64().is_some_and(|d| (1..=7).contains(&d)), "{text:?}");
    assert!(["clear", "cloudy", "rain"].contains(&value["sky"].as_str().unwrap_or("")), "{text:?}");
}

#[tokio::test]
async fn response_formats_are_enforced_whole_and_streamed() {
    let (app, _) = Setup::default().app();
    for seed in 0..3 {
        let mut body = chat_body("The forecast, please.", 120);
        body["temperature"] = json!(1.0);
        body["seed"] = json!(seed);
        body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "forecast", "schema": forecast_schema(), "strict": true}});
        let (status, whole) = call(&app, post("/v1/chat/completions", &body)).await;
        assert_eq!(status, StatusCode::OK, "{whole}");
        assert_eq!(whole["choices"][0]["finish_reason"], "stop", "{whole}");
        let content = whole["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
        assert_forecast(&content);

        body["stream"] = json!(true);
        let (streamed, _, _, finish) =
            join_deltas(&chunks(&stream(&app, post("/v1/chat/completions", &body)).await));
        assert_eq!((streamed, finish.as_str()), (content, "stop"));
    }
    // llama.cpp's spellings: a top-level json_schema, a schema beside json_object, a grammar.
    let mut body = chat_body("The forecast, please.", 120);
    body["json_schema"] = forecast_schema();
    let (_, answer) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_forecast(answer["choices"][0]["message"]["content"].as_str().unwrap());
    let mut body = chat_body("The forecast, please.", 120);
    body["response_format"] = json!({"type": "json_object", "schema": forecast_schema()});
    let (_, answer) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_forecast(answer["choices"][0]["message"]["content"].as_str().unwrap());
    let mut body = chat_body("Yes or no?", 20);
    body["grammar"] = json!("start: (\"yes\" | \"no\") \"!\"{1,3}");
    let (_, answer) = call(&app, post("/v1/chat/completions", &body)).await;
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        ["yes", "no"].iter().any(|w| text.starts_with(w) && text[w.len()..].chars().all(|c| c == '!')),
        "{text:?}"
    );

    let mut body = chat_body("Anything.", 60);
    body["response_format"] = json!({"type": "json_object"});
    body["logit_bias"] = json!({"90": 5});
    let (_, answer) = call(&app, post("/v1/chat/completions", &body)).await;
    let choice = &answer["choices"][0];
    let text = choice["message"]["content"].as_str().unwrap();
    if choice["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(text).unwrap().is_object(), "{text:?}");
    } else {
        assert!(text.trim_start().starts_with('{'), "{text:?}");
    }

    // Raw completions take the same fields.
    let body =
        json!({"prompt": "Forecast:", "max_tokens": 120, "temperature": 0, "json_schema": forecast_schema()});
    let (status, answer) = call(&app, post("/v1/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_forecast(answer["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test]
async fn the_schema_applies_after_the_thought() {
    let (app, _) = Setup::default().app();
    let mut body = chat_body("Think, then the forecast.", 120);
    body["chat_template_kwargs"] = json!({"enable_thinking": true});
    body["thinking_budget"] = json!(10);
    body["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "f", "schema": forecast_schema()}});
    let (status, answer) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let message = &answer["choices"][0]["message"];
    let reasoning = message["reasoning_content"].as_str().unwrap();
    assert!(!reasoning.is_empty() && serde_json::from_str::<Value>(reasoning).is_err(), "{reasoning:?}");
    assert_forecast(message["content"].as_str().unwrap());
}

fn forced_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["city", "days"]
        }}},
        {"type": "function", "function": {"name": "get_time", "parameters": {
            "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]
        }}}
    ])
}

#[tokio::test]
async fn required_and_named_tool_choices_force_calls() {
    let (app, _) = Setup::default().app();
    for (choice, only) in [
        (json!("required"), None),
        (json!({"type": "function", "function": {"name": "get_time"}}), Some("get_time")),
    ] {
        for seed in 0..3 {
            let body = json!({
                "messages": [{"role": "user", "content": "Hello"}], "tools": forced_tools(), "tool_choice": choice,
                "max_tokens": 200, "temperature": 1.0, "seed": seed,
            });
            let (status, answer) = call(&app, post("/v1/chat/completions", &body)).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            let choice0 = &answer["choices"][0];
            assert_eq!(choice0["finish_reason"], "tool_calls", "{answer}");
            assert!(choice0["message"]["content"].is_null(), "{answer}");
            let calls = choice0["message"]["tool_calls"].as_array().unwrap();
            assert!(!calls.is_empty());
            for call in calls {
                let name = call["function"]["name"].as_str().unwrap();
                let args: Value =
                    serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                match name {
                    "get_weather" => {
                        assert!(only.is_none());
                        assert!(args["city"].as_str().is_some_and(|c| c.chars().count() <= 10), "{args}");
                        assert!(args["days"].as_i64().is_some_and(|d| (1..=5).contains(&d)), "{args}");
                    }
                    "get_time" => {
                        assert!(["UTC", "CET"].contains(&args["zone"].as_str().unwrap_or("")), "{args}")
                    }
                    other => panic!("unknown function {other}"),
                }
            }
            let mut streamed = body.clone();
            streamed["stream"] = json!(true);
            let (_, _, calls, finish) =
                join_deltas(&chunks(&stream(&app, post("/v1/chat/completions", &streamed)).await));
            assert_eq!(finish, "tool_calls");
            assert_eq!(calls.len(), choice0["message"]["tool_calls"].as_array().unwrap().len());
        }
    }
}

#[tokio::test]
async fn an_impossible_constraint_fails_its_request_alone() {
    let (app, _) = Setup::default().app();
    let seven = lm().encode("7").unwrap()[0];
    let mut impossible = chat_body("Seven?", 8);
    impossible["grammar"] = json!("start: \"7\"");
    impossible["logit_bias"] = json!({ seven.to_string(): -100 });
    let healthy = chat_body("Hello there", 12);
    let (_, alone) = call(&app, post("/v1/chat/completions", &healthy)).await;
    // Both run in the same batch steps.
    let (failed, fine) = tokio::join!(
        call(&app, post("/v1/chat/completions", &impossible)),
        call(&app, post("/v1/chat/completions", &healthy)),
    );
    assert_error(failed.0, &failed.1, StatusCode::BAD_REQUEST, None);
    assert!(failed.1["error"]["message"].as_str().unwrap().contains("allows no token"), "{}", failed.1);
    assert_eq!(fine.0, StatusCode::OK, "{}", fine.1);
    assert_eq!(fine.1["choices"][0]["message"], alone["choices"][0]["message"]);
}

#[tokio::test]
async fn raw_completions() {
    let (app, _) = Setup::default().app();
    let body = json!({"prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "max_tokens": 5, "temperature": 0,
        "logit_bias": no_end(), "logprobs": 1});
    let (status, whole) = call(&app, post("/v1/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 5);
    let logprobs = &whole["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(
        logprobs["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect::<String>(),
        whole["choices"][0]["text"].as_str().unwrap()
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = chunks(&stream(&app, post("/v1/completions", &streamed)).await);
    let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap_or("")).collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());

    // Token ids work as a prompt too.
    let (_, ids) = call(&app, post("/tokenize", &json!({"content": body["prompt"]}))).await;
    let by_ids =
        json!({"prompt": ids["tokens"], "max_tokens": 5, "temperature": 0, "logit_bias": body["logit_bias"]});
    let (_, same) = call(&app, post("/v1/completions", &by_ids)).await;
    assert_eq!(same["choices"][0]["text"], whole["choices"][0]["text"]);
}

#[tokio::test]
async fn tokenize_and_detokenize() {
    let (app, _) = Setup::default().app();
    let (status, tokens) = call(&app, post("/tokenize", &json!({"content": "Hello world<|im_end|>"}))).await;
    assert_eq!(status, StatusCode::OK);
    let ids = tokens["tokens"].as_array().unwrap();
    assert_eq!(ids.last().unwrap(), 248046, "special tokens are recognised");
    let (_, text) = call(&app, post("/detokenize", &json!({"tokens": ids}))).await;
    assert_eq!(text["content"], "Hello world<|im_end|>");
    let (_, pieces) =
        call(&app, post("/tokenize", &json!({"content": "Hello world", "with_pieces": true}))).await;
    assert_eq!(pieces["tokens"][1]["piece"], " world");
    let (status, err) = call(&app, post("/detokenize", &json!({"tokens": [999999999]}))).await;
    assert_error(status, &err, StatusCode::BAD_REQUEST, Some("tokens"));
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let (app, _) = Setup { max_context: 40, body_limit: 4096, ..Setup::default() }.app();
    let chat = |body: Value| post("/v1/chat/completions", &body);
    let user = json!([{"role": "user", "content": "Hi"}]);
    let cases: Vec<(Request<Body>, StatusCode, Option<&str>)> = vec![
        (post_raw("/v1/chat/completions", "{\"messages\": ["), StatusCode::BAD_REQUEST, None),
        (post_raw("/v1/chat/completions", "[1, 2]"), StatusCode::BAD_REQUEST, None),
        (chat(json!({"messages": user, "temperature": "hot"})), StatusCode::BAD_REQUEST, Some("temperature")),
        (chat(json!({"messages": "Hi"})), StatusCode::BAD_REQUEST, Some("messages")),
        (
            chat(json!({"messages": [{"role": 1, "content": "x"}]})),
            StatusCode::BAD_REQUEST,
            Some("messages[0].role"),
        ),
        (chat(json!({})), StatusCode::BAD_REQUEST, None),
        (chat(json!({"messages": []})), StatusCode::BAD_REQUEST, Some("messages")),
        (chat(json!({"messages": user, "n": 2})), StatusCode::BAD_REQUEST, Some("n")),
        (chat(json!({"messages": user, "max_tokens": 0})), StatusCode::BAD_REQUEST, Some("max_tokens")),
        (chat(json!({"messages": user, "temperature": -1})), StatusCode::BAD_REQUEST, None),
        (
            chat(json!({"messages": user, "logit_bias": {"999999999": 1}})),
            StatusCode::BAD_REQUEST,
            Some("logit_bias"),
        ),
        (
            chat(json!({"messages": user, "logit_bias": {"5": 500}})),
            StatusCode::BAD_REQUEST,
            Some("logit_bias"),
        ),
        (chat(json!({"messages": user, "stop": ""})), StatusCode::BAD_REQUEST, None),
        (chat(json!({"messages": user, "top_logprobs": 3})), StatusCode::BAD_REQUEST, Some("top_logprobs")),
        (
            chat(json!({"messages": user, "response_format": {"type": "xml"}})),
            StatusCode::BAD_REQUEST,
            Some("response_format"),
        ),
        (
            chat(
                json!({"messages": user, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}}}),
            ),
            StatusCode::BAD_REQUEST,
            Some("response_format"),
        ),
        (
            chat(
                json!({"messages": user, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            ),
            StatusCode::BAD_REQUEST,
            Some("response_format"),
        ),
        (chat(json!({"messages": user, "grammar": "start: (("})), StatusCode::BAD_REQUEST, Some("grammar")),
        (
            chat(json!({"messages": user, "json_schema": {"type": "object"}, "grammar": "start: \"a\""})),
            StatusCode::BAD_REQUEST,
            Some("grammar"),
        ),
        (
            chat(json!({"messages": user, "tool_choice": "required"})),
            StatusCode::BAD_REQUEST,
            Some("tool_choice"),
        ),
        (
            chat(json!({"messages": user, "chat_template_kwargs": {"enable_thinking": "yes"}})),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            chat(json!({"messages": [{"role": "system", "content": "Only a system message"}]})),
            StatusCode::BAD_REQUEST,
            Some("messages"),
        ),
        (
            chat(json!({"messages": [{"role": "user", "content": "word ".repeat(60)}]})),
            StatusCode::BAD_REQUEST,
            Some("messages"),
        ),
        (
            post("/v1/completions", &json!({"prompt": "x", "echo": true})),
            StatusCode::BAD_REQUEST,
            Some("echo"),
        ),
        (post("/v1/completions", &json!({"prompt": ""})), StatusCode::BAD_REQUEST, Some("prompt")),
        (
            post("/v1/completions", &json!({"prompt": [1, 2, 999999999]})),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
        ),
        (post("/v1/embeddings", &json!({"input": "x"})), StatusCode::NOT_FOUND, Some("model")),
        (
            post_raw(
                "/v1/chat/completions",
                format!("{{\"messages\": [], \"pad\": \"{}\"}}", "x".repeat(5000)),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (get("/v1/nothing"), StatusCode::NOT_FOUND, None),
        (get("/v1/chat/completions"), StatusCode::METHOD_NOT_ALLOWED, None),
    ];
    for (request, want, param) in cases {
        let (status, body) = call(&app, request).await;
        assert_error(status, &body, want, param);
    }
    let (_, long) =
        call(&app, chat(json!({"messages": [{"role": "user", "content": "word ".repeat(60)}]}))).await;
    assert_eq!(long["error"]["code"], "context_length_exceeded");
}

/// A prompt far over the context is refused once tokenizing has passed the context, not after
/// reading all of it (which takes tens of bytes per byte of text).
#[tokio::test]
async fn a_prompt_far_over_the_context_is_refused_early() {
    let (app, _) = Setup { max_context: 4096, body_limit: 8 << 20, ..Setup::default() }.app();
    let text = "word, ".repeat(600_000);
    for (path, body, param) in [
        ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": text}]}), "messages"),
        ("/v1/completions", json!({"prompt": text}), "prompt"),
    ] {
        let (status, error) = call(&app, post(path, &body)).await;
        assert_error(status, &error, StatusCode::BAD_REQUEST, Some(param));
        assert_eq!(error["error"]["code"], "context_length_exceeded");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("the prompt has at least 4096 tokens"), "{message}");
    }
}

#[tokio::test]
async fn api_key_is_required_except_for_health() {
    let (app, _) = Setup { api_key: Some("s3cret"), ..Setup::default() }.app();
    let with_key = |key: Option<&str>| {
        let mut request = Request::get("/v1/models");
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, key);
        }
        request.body(Body::empty()).unwrap()
    };
    let wrong = [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("s3cret"),
        Some("Bearer s3cret2"),
        Some("Basic s3cret"),
    ];
    for key in wrong {
        let (status, body) = call(&app, with_key(key)).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, None);
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    // The scheme is case-insensitive (RFC 9110).
    for key in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
        assert_eq!(call(&app, with_key(Some(key))).await.0, StatusCode::OK, "{key}");
    }
    assert_eq!(call(&app, get("/health")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_full_queue_answers_503() {
    let (open, gate) = std::sync::mpsc::channel();
    let (app, state) = Setup { slots: 1, queue: 1, ..Setup::default() }.scripted(&["ok"], Some(gate));
    let body = chat_body("Hi", 4);
    let first = tokio::spawn({
        let app = app.clone();
        let body = body.clone();
        async move { call(&app, post("/v1/chat/completions", &body)).await }
    });
    wait_until(|| state.engine.status().busy == 1).await;
    let second = tokio::spawn({
        let app = app.clone();
        let body = body.clone();
        async move { call(&app, post("/v1/chat/completions", &body)).await }
    });
    wait_until(|| state.engine.status().queued == 1).await;
    let (status, err) = call(&app, post("/v1/chat/completions", &body)).await;
    assert_error(status, &err, StatusCode::SERVICE_UNAVAILABLE, None);
    assert_eq!(err["error"]["code"], "queue_full");
    // Refused before it is prepared: a picture that would fail to decode (a 400) is not looked at.
    let picture = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
    let (status, err) = call(&app, post("/v1/chat/completions", &picture)).await;
    assert_error(status, &err, StatusCode::SERVICE_UNAVAILABLE, None);
    open.send(()).unwrap();
    open.send(()).unwrap();
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    assert_eq!(second.await.unwrap().0, StatusCode::OK);
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A client that leaves mid-stream cancels its generation: the slot is free again at once.
#[tokio::test]
async fn a_dropped_stream_frees_its_slot() {
    let (app, state) = Setup { slots: 1, max_context: 200_000, ..Setup::default() }.app();
    // End tokens banned: this would run for 100,000 tokens, minutes even on the tiny model.
    let body = json!({"messages": [{"role": "user", "content": "Talk forever"}], "max_tokens": 100_000, "stream": true,
        "temperature": 0, "logit_bias": no_end()});
    let response = app.clone().oneshot(post("/v1/chat/completions", &body)).await.unwrap();
    let mut data = response.into_body().into_data_stream();
    let mut received = 0;
    while received < 3 {
        received += data.next().await.unwrap().unwrap().len().min(1);
    }
    assert_eq!(state.engine.status().busy, 1);
    drop(data);
    let dropped = Instant::now();
    wait_until(|| state.engine.status().busy == 0).await;
    let (status, after) = call(&app, post("/v1/chat/completions", &chat_body("Hi", 2))).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert!(dropped.elapsed() < Duration::from_secs(10), "the slot was freed without finishing the answer");
}

/// Concurrent greedy requests give the answers they give one at a time.
#[tokio::test]
async fn parallel_requests_match_sequential_ones() {
    let (app, _) = Setup { slots: 2, ..Setup::default() }.app();
    let prompts = ["one", "two two", "three three three", "four"];
    let mut sequential = Vec::new();
    for prompt in prompts {
        let (_, body) = call(&app, post("/v1/chat/completions", &chat_body(prompt, 6))).await;
        sequential.push(body["choices"][0]["message"]["content"].clone());
    }
    let tasks: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let app = app.clone();
            let body = chat_body(prompt, 6);
            tokio::spawn(async move { call(&app, post("/v1/chat/completions", &body)).await })
        })
        .collect();
    for (task, want) in tasks.into_iter().zip(sequential) {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["choices"][0]["message"]["content"], want);
    }
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let (app, _) = Setup { embeddings: true, ..Setup::default() }.app();
    let (status, models) = call(&app, get("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["data"][1]["id"], "tiny-embed");

    let (status, floats) =
        call(&app, post("/v1/embeddings", &json!({"input": ["hello", "world"], "model": "tiny-embed"})))
            .await;
    assert_eq!(status, StatusCode::OK, "{floats}");
    assert_eq!(floats["object"], "list");
    let data = floats["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    let vector: Vec<f32> =
        data[0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    assert!(floats["usage"]["prompt_tokens"].as_u64().unwrap() >= 4);

    let (_, encoded) =
        call(&app, post("/v1/embeddings", &json!({"input": "hello", "encoding_format": "base64"}))).await;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> =
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(decoded, vector);

    let (_, short) = call(&app, post("/v1/embeddings", &json!({"input": "hello", "dimensions": 8}))).await;
    assert_eq!(short["data"][0]["embedding"].as_array().unwrap().len(), 8);
    let (status, err) =
        call(&app, post("/v1/embeddings", &json!({"input": "hello", "dimensions": 100000}))).await;
    assert_error(status, &err, StatusCode::BAD_REQUEST, Some("dimensions"));
    let (status, err) = call(&app, post("/v1/embeddings", &json!({"input": {"text": "x"}}))).await;
    assert_error(status, &err, StatusCode::BAD_REQUEST, Some("input"));
}
