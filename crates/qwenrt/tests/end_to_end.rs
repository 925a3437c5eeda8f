//! A whole model folder (tiny-vl: the published checkpoint layout, real Qwen3.5 vocabulary):
//! chat template + tokenizer produce transformers' prompt ids, and generation through
//! `LanguageModel` reproduces transformers' greedy tokens.

mod common;

use std::path::PathBuf;

use common::{fixture_model, Expected};
use qwenrt::chat::Message;
use qwenrt::{generate, GenerateOptions, LanguageModel, SamplingParams};

/// tiny-vl with the generated tokenizer.json beside it: a complete model folder.
fn tiny_vl_folder() -> PathBuf {
    qwenrt_test_support::tiny_vl_folder("e2e")
}

#[test]
fn chat_prompts_tokenize_like_transformers_and_generate_the_same_tokens() {
    let dir = tiny_vl_folder();
    let lm = LanguageModel::load(&dir).unwrap();
    let expected = Expected::load(&fixture_model("tiny-vl"));
    let mut chat_prompts = 0;
    for i in expected.text_prompts() {
        let meta = expected.prompt_meta(i);
        let want_ids = expected.ids(&format!("prompt{i}.ids"));
        let text = match meta.get("messages") {
            Some(messages) => {
                let messages: Vec<Message> = serde_json::from_value(messages.clone()).unwrap();
                let kwargs = &meta["template_kwargs"];
                let rendered = lm
                    .render_chat(
                        &messages,
                        kwargs["add_generation_prompt"].as_bool().unwrap_or(false),
                        kwargs["enable_thinking"].as_bool(),
                    )
                    .unwrap();
                assert_eq!(rendered, meta["text"].as_str().unwrap(), "prompt{i}: rendered template");
                chat_prompts += 1;
                rendered
            }
            None => meta["text"].as_str().unwrap().to_owned(),
        };
        assert_eq!(lm.encode(&text).unwrap(), want_ids, "prompt{i}: token ids");

        let want = expected.ids(&format!("prompt{i}.greedy"));
        let options =
            GenerateOptions { max_tokens: want.len(), sampling: SamplingParams::greedy(), stop_ids: vec![] };
        let mut state = lm.model.new_state();
        let got = generate(&lm.model, &mut state, &want_ids, &options, |_| true).unwrap();
        assert_eq!(got.tokens, want, "prompt{i}: greedy tokens");
    }
    assert!(chat_prompts >= 3, "the fixture should hold several chat-templated prompts");
}

#[test]
fn stop_tokens_come_from_generation_config() {
    let lm = LanguageModel::load(&tiny_vl_folder()).unwrap();
    assert_eq!(lm.stop_ids(), [248046, 248044], "<|im_end|> and <|endoftext|>");
}

#[test]
fn generation_stops_at_a_stop_token_and_reports_why() {
    let lm = LanguageModel::load(&tiny_vl_folder()).unwrap();
    let expected = Expected::load(&fixture_model("tiny-vl"));
    let ids = expected.ids("prompt0.ids");
    let greedy = expected.ids("prompt0.greedy");
    // Declare the 5th greedy token a stop token: generation must end right there.
    let options =
        GenerateOptions { max_tokens: 64, sampling: SamplingParams::greedy(), stop_ids: vec![greedy[4]] };
    let mut state = lm.model.new_state();
    let got = generate(&lm.model, &mut state, &ids, &options, |_| true).unwrap();
    let first = greedy.iter().position(|&t| t == greedy[4]).unwrap();
    assert_eq!(got.tokens, greedy[..=first]);
    assert_eq!(got.finish_reason, qwenrt::FinishReason::Stop);

    let options = GenerateOptions { max_tokens: 3, sampling: SamplingParams::greedy(), stop_ids: vec![] };
    let mut state = lm.model.new_state();
    let got = generate(&lm.model, &mut state, &ids, &options, |_| true).unwrap();
    assert_eq!(got.tokens, greedy[..3]);
    assert_eq!(got.finish_reason, qwenrt::FinishReason::Length);

    // Seeded sampling is reproducible.
    let sampled = |seed| {
        let sampling = SamplingParams {
            temperature: 1.0,
            top_k: 20,
            top_p: 0.95,
            seed: Some(seed),
            ..Default::default()
        };
        let options = GenerateOptions { max_tokens: 16, sampling, stop_ids: vec![] };
        let mut state = lm.model.new_state();
        generate(&lm.model, &mut state, &ids, &options, |_| true).unwrap().tokens
    };
    assert_eq!(sampled(5), sampled(5));
    assert_ne!(sampled(5), sampled(6));
}
