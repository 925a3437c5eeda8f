//! Speculative decoding with the MTP head: the draft against a PyTorch reference built on
//! transformers' modules (`scripts/make_fixtures.py`, `mtp_reference`), and verification with
//! rollback against plain decoding.

mod common;

use std::sync::Arc;

use common::{fixture_model, max_abs_diff, std_dev, tiny_vl_lm, workspace_root, Expected};
use qwenrt::chat::{ContentPart, Message};
use qwenrt::sampling::argmax;
use qwenrt::scheduler::{Scheduler, SchedulerOptions};
use qwenrt::speculative::AcceptanceOracle;
use qwenrt::vision::ImageInput;
use qwenrt::{
    generate, generate_speculative, ChatParams, ChatSession, FinishReason, GenerateOptions, LanguageModel,
    Logits, Model, Reply, SamplingParams, SessionOptions, SpeculationStats, SpeculativeOptions,
};

const TOLERANCE: f64 = 1e-3;

/// The head's drafts after a chat prompt: its catch-up pass over every prompt position and one
/// chained step give the reference's tokens and logits.
#[test]
fn mtp_draft_matches_the_reference() {
    let dir = fixture_model("tiny-vl");
    let model = Model::load(&dir).unwrap();
    assert!(model.has_mtp(), "tiny-vl carries mtp.* tensors");
    let reference = Expected::load_tensors(&dir.join("mtp.safetensors"));
    let ids = reference.ids("ids");
    let next = reference.ids("next")[0];
    let want_drafts = reference.ids("drafts");
    let want_logits = reference.f32("draft_logits");
    let vocab = model.vocab_size();

    let mut state = model.new_state();
    model.enable_drafting(&mut state).unwrap();
    let logits = model.forward(&mut state, &ids, Logits::Last).unwrap();
    assert_eq!(argmax(logits), next, "the decoder's own greedy next token");
    let mut seen = Vec::new();
    let drafts = model
        .draft(&mut state, next, want_drafts.len(), &mut |logits| {
            seen.extend_from_slice(logits);
            Some(argmax(logits))
        })
        .unwrap();
    assert_eq!(drafts, want_drafts);
    for (step, (got, want)) in seen.chunks_exact(vocab).zip(want_logits.chunks_exact(vocab)).enumerate() {
        let (err, std) = (max_abs_diff(got, want), std_dev(want));
        assert!(
            err <= TOLERANCE * std,
            "draft {step}: max abs error {err:.3e} > {TOLERANCE} × std {std:.3e}"
        );
    }
    assert_eq!(state.len(), ids.len(), "drafting leaves the decoder's caches alone");
}

/// A draft among the first ids scores them exactly as a draft over the whole vocabulary does.
#[test]
fn drafts_among_the_first_ids_see_the_same_logits() {
    let model = Model::load(&fixture_model("tiny-vl")).unwrap();
    let ids = Expected::load(&fixture_model("tiny-vl")).ids("prompt1.ids");
    let mut state = model.new_state();
    model.enable_drafting(&mut state).unwrap();
    let next = argmax(model.forward(&mut state, &ids, Logits::Last).unwrap());
    let before = state.snapshot();
    let mut full = Vec::new();
    model
        .draft(&mut state, next, 2, &mut |l| {
            full.push(l.to_vec());
            Some(argmax(&l[..1000]))
        })
        .unwrap();
    state.restore(&before).unwrap();
    let mut few = Vec::new();
    model
        .draft_among(&mut state, next, 2, 1000, &mut |l| {
            few.push(l.to_vec());
            Some(argmax(l))
        })
        .unwrap();
    assert_eq!(few.len(), 2);
    for (f, w) in few.iter().zip(&full) {
        assert_eq!(f.as_slice(), &w[..1000]);
    }
    let e = model.draft_among(&mut state, next, 1, 0, &mut |l| Some(argmax(l))).unwrap_err().to_string();
    assert!(e.contains("candidates"), "{e}");
}

#[test]
fn drafting_is_refused_where_it_cannot_work() {
    let causal = Model::load(&fixture_model("tiny-causal")).unwrap();
    assert!(!causal.has_mtp());
    let mut state = causal.new_state();
    let e = causal.enable_drafting(&mut state).unwrap_err().to_string();
    assert!(e.contains("no MTP head"), "{e}");

    let vl = Model::load(&fixture_model("tiny-vl")).unwrap();
    let mut state = vl.new_state();
    vl.forward(&mut state, &[1, 2, 3], Logits::None).unwrap();
    let e = vl.enable_drafting(&mut state).unwrap_err().to_string();
    assert!(e.contains("empty state"), "{e}");
    let e = vl.draft(&mut state, 5, 2, &mut |l| Some(argmax(l))).unwrap_err().to_string();
    assert!(e.contains("not enabled"), "{e}");
    let e = vl.keep_verified(&mut state, 1).unwrap_err().to_string();
    assert!(e.contains("no verification pass"), "{e}");
    let e = vl.verify(&mut state, &[]).unwrap_err().to_string();
    assert!(e.contains("1 to"), "{e}");
}

/// Greedy continuation of `prompt` by plain decoding: the tokens and each step's logits.
fn plain_greedy(model: &Model, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut state = model.new_state();
    let mut logits = model.forward(&mut state, prompt, Logits::Last).unwrap().to_vec();
    let (mut tokens, mut steps) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let next = argmax(&logits);
        tokens.push(next);
        steps.push(logits.clone());
        logits = model.forward(&mut state, &[next], Logits::Last).unwrap().to_vec();
    }
    steps.push(logits);
    (tokens, steps)
}

/// Verification rows are plain decoding's logits, and keeping any prefix leaves the state where
/// plain decoding of that prefix leaves it: checked by continuing from it.
#[test]
fn verify_then_keep_equals_plain_decoding() {
    for name in ["tiny-causal", "tiny-vl"] {
        let model = Model::load(&fixture_model(name)).unwrap();
        let vocab = model.vocab_size();
        let prompt: Vec<u32> = (0..70).map(|i| (i * 37 + 11) % 500 + 3).collect();
        let (want, want_logits) = plain_greedy(&model, &prompt, 12);
        // Wrong drafts at the end of a pass, then a pass whose every draft is right, then passes
        // of one token.
        for kept_plan in [[1usize, 3, 4, 1, 2], [5, 1, 2, 2, 1], [2, 2, 2, 2, 2]] {
            let mut state = model.new_state();
            let mut next = argmax(model.forward(&mut state, &prompt, Logits::Last).unwrap());
            let mut done = 0;
            for kept in kept_plan {
                assert_eq!(next, want[done], "{name}: token {done}");
                // The pass: the next token, the right drafts, then two wrong ones.
                let mut pass = vec![next];
                pass.extend_from_slice(&want[done + 1..done + kept]);
                pass.extend([(want[done + kept] + 1) % vocab as u32, 7]);
                let logits = model.verify(&mut state, &pass).unwrap().to_vec();
                for (i, row) in logits.chunks_exact(vocab).take(kept).enumerate() {
                    let (err, std) = (max_abs_diff(row, &want_logits[done + i + 1]), std_dev(row));
                    assert!(err <= 1e-4 * std, "{name}: verification row {i}: {err:.3e}");
                }
                next = argmax(&logits[(kept - 1) * vocab..kept * vocab]);
                model.keep_verified(&mut state, kept).unwrap();
                done += kept;
                assert_eq!(state.len(), prompt.len() + done);
            }
            // The state carries on exactly as plain decoding's.
            let got = model.forward(&mut state, &[next], Logits::Last).unwrap().to_vec();
            let (err, std) = (max_abs_diff(&got, &want_logits[done + 1]), std_dev(&got));
            assert!(err <= 1e-4 * std, "{name}: after rollbacks: {err:.3e}");
        }
    }
}

fn oracle(reference: &[u32], rate: f64, seed: u64) -> Option<AcceptanceOracle> {
    Some(AcceptanceOracle { reference: reference.to_vec(), rate, seed })
}

fn options(max_tokens: usize, stop_ids: Vec<u32>) -> GenerateOptions {
    GenerateOptions { max_tokens, sampling: SamplingParams::greedy(), stop_ids }
}

/// Greedy speculative decoding outputs plain greedy decoding's tokens, ends for the same reason
/// and leaves the same state, whether drafts are all kept (the oracle at 1), some kept, or none
/// (the random head alone), for every draft length, at a stop token, at `max_tokens` and at the
/// context limit.
#[test]
fn greedy_speculation_equals_plain_greedy() {
    let model = Model::load(&fixture_model("tiny-vl")).unwrap();
    let prompt = Expected::load(&fixture_model("tiny-vl")).ids("prompt1.ids");
    let plain = |opts: &GenerateOptions, limit: usize| {
        let mut state = model.new_state_with_limit(limit);
        let out = generate(&model, &mut state, &prompt, opts, |_| true).unwrap();
        (out, state)
    };
    let (reference, _) = plain(&options(40, vec![]), 4096);
    // A stop token that first appears mid-way through the reference.
    let stop = reference.tokens[17];
    let first_stop = reference.tokens.iter().position(|&t| t == stop).unwrap();
    let cases = [
        (options(40, vec![]), 4096, "max_tokens"),
        (options(40, vec![stop]), 4096, "stop token"),
        (options(40, vec![]), prompt.len() + 23, "context limit"),
    ];
    let mut total = SpeculationStats::default();
    for (opts, limit, what) in &cases {
        let (want, mut want_state) = plain(opts, *limit);
        if *what == "stop token" {
            assert_eq!(want.tokens.len(), first_stop + 1, "the case stops early");
        }
        for k in 1..=4 {
            for rate in [0.0, 0.5, 1.0] {
                for adaptive in [false, true] {
                    let mut state = model.new_state_with_limit(*limit);
                    let spec = SpeculativeOptions {
                        draft_max: k,
                        adaptive,
                        draft_vocab: None,
                        oracle: oracle(&reference.tokens, rate, k as u64),
                    };
                    let (got, stats) =
                        generate_speculative(&model, &mut state, &prompt, opts, spec, |_| true).unwrap();
                    let case = format!("{what}, k {k}, oracle {rate}, adaptive {adaptive}");
                    assert_eq!(got.tokens, want.tokens, "{case}");
                    assert_eq!(got.finish_reason, want.finish_reason, "{case}");
                    assert_eq!(state.len(), want_state.len(), "{case}");
                    if rate == 1.0 && !adaptive {
                        assert!(stats.accepted > 0 && stats.steps < want.tokens.len(), "{case}: {stats:?}");
                    }
                    // The state carries on as plain decoding's does.
                    if state.len() < *limit {
                        let last = *got.tokens.last().unwrap();
                        let a = model.forward(&mut state, &[last], Logits::Last).unwrap().to_vec();
                        let before = want_state.snapshot();
                        let b = model.forward(&mut want_state, &[last], Logits::Last).unwrap().to_vec();
                        want_state.restore(&before).unwrap();
                        assert!(max_abs_diff(&a, &b) <= 1e-4 * std_dev(&b), "{case}: state differs");
                    }
                    total.drafted += stats.drafted;
                    total.accepted += stats.accepted;
                }
            }
        }
    }
    let acceptance = total.accepted as f64 / total.drafted as f64;
    assert!(acceptance > 0.2 && acceptance < 0.9, "drafts were both kept and rejected: {acceptance}");
}

/// Speculative sampling draws from plain sampling's distribution, through `generate_speculative`
/// and through a chat session's turns. The logit bias concentrates both the model and the head
/// on three tokens, so drafts are kept and rejected in good measure; over many seeds the joint
/// frequencies of the second and third tokens (the first comes from the prompt) match plain
/// sampling's.
#[test]
fn speculative_sampling_keeps_the_distribution() {
    let lm = tiny_vl_lm();
    let model = &lm.model;
    let prompt = Expected::load(&fixture_model("tiny-vl")).ids("prompt1.ids");
    let favoured = [1000u32, 2000, 3000];
    let sampling = |seed| SamplingParams {
        temperature: 1.0,
        // Past the three favoured tokens nothing is left to draw: small distributions.
        top_k: 3,
        logit_bias: favoured.iter().map(|&id| (id, 40.0)).collect(),
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let index = |t: &[u32]| {
        let i = |id| favoured.iter().position(|&f| f == id).expect("a favoured token");
        i(t[1]) * 3 + i(t[2])
    };
    let speculative = SpeculativeOptions { draft_max: 2, adaptive: false, draft_vocab: None, oracle: None };
    const RUNS: u64 = 4000;
    let (mut plain, mut spec, mut turns) = ([0f64; 9], [0f64; 9], [0f64; 9]);
    let (mut stats, mut turn_stats) = (SpeculationStats::default(), SpeculationStats::default());
    for seed in 0..RUNS {
        let opts = GenerateOptions { max_tokens: 3, sampling: sampling(seed), stop_ids: vec![] };
        let mut state = model.new_state();
        plain[index(&generate(model, &mut state, &prompt, &opts, |_| true).unwrap().tokens)] += 1.0;

        let opts = GenerateOptions { sampling: sampling(seed + 1_000_000), ..opts };
        let mut state = model.new_state();
        let (out, s) =
            generate_speculative(model, &mut state, &prompt, &opts, speculative.clone(), |_| true).unwrap();
        spec[index(&out.tokens)] += 1.0;
        stats.drafted += s.drafted;
        stats.accepted += s.accepted;

        let params = ChatParams {
            sampling: sampling(seed + 2_000_000),
            max_tokens: 3,
            speculative: Some(speculative.clone()),
            ..Default::default()
        };
        let mut session = ChatSession::with_options(
            lm.clone(),
            SessionOptions { prompt_cache_bytes: 0, drafting: true, ..Default::default() },
        );
        let reply = session.complete(&prompt, &params, |_| {}).unwrap();
        turns[index(&reply.tokens)] += 1.0;
        let s = reply.usage.speculation.unwrap();
        turn_stats.drafted += s.drafted;
        turn_stats.accepted += s.accepted;
    }
    for (what, counts, stats) in [("generate_speculative", spec, stats), ("chat turns", turns, turn_stats)] {
        let acceptance = stats.acceptance();
        assert!(acceptance > 0.15 && acceptance < 0.95, "{what}: both branches ran: acceptance {acceptance}");
        // Two-sample chi-square over the 9 outcomes (equal sample sizes): 8 degrees of freedom,
        // whose 0.001 tail starts at 26.12. Drawing from p instead of the residual after a
        // rejection scores about 50 here.
        let chi2: f64 = plain
            .iter()
            .zip(&counts)
            .filter(|(p, s)| *p + *s > 0.0)
            .map(|(p, s)| (p - s).powi(2) / (p + s))
            .sum();
        assert!(chi2 < 26.12, "{what}: chi-square {chi2:.1}: plain {plain:?}, speculative {counts:?}");
    }
}

fn drafting_session(lm: &Arc<LanguageModel>) -> ChatSession {
    ChatSession::with_options(lm.clone(), SessionOptions { drafting: true, ..Default::default() })
}

fn same_reply(got: &Reply, want: &Reply, case: &str) {
    assert_eq!(got.tokens, want.tokens, "{case}");
    assert_eq!(got.content, want.content, "{case}");
    assert_eq!(got.reasoning, want.reasoning, "{case}");
    assert_eq!(got.finish_reason, want.finish_reason, "{case}");
    assert_eq!(got.stop_string, want.stop_string, "{case}");
    assert_eq!(got.usage.completion_tokens, want.usage.completion_tokens, "{case}");
    assert_eq!(got.usage.reasoning_tokens, want.usage.reasoning_tokens, "{case}");
}

/// Chat turns decoded speculatively give plain greedy turns' replies (tokens, texts, finish
/// reason) at the token limit, at a stop string, at the thinking budget and with an image in the
/// prompt, whether the drafts are all kept, some, or none; the next turn then reuses as much of
/// its prompt and answers the same, so the state left behind is the plain one.
#[test]
fn speculative_chat_turns_equal_plain_turns() {
    let lm = tiny_vl_lm();
    let image = ImageInput::open(&workspace_root().join("fixtures/vision/a_small.png")).unwrap();
    let greedy = ChatParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 30,
        enable_thinking: Some(false),
        ..Default::default()
    };
    // The end tokens banned, so that answers run to their limits.
    let mut long = greedy.clone();
    long.sampling.logit_bias = lm.stop_ids().iter().map(|&id| (id, f32::NEG_INFINITY)).collect();
    let plain_turns = |question: Message, params: &ChatParams| {
        let mut session = drafting_session(&lm);
        let first = session.send(question, params, |_| {}).unwrap();
        let second = session.send(Message::user("And then?"), params, |_| {}).unwrap();
        (first, second)
    };
    let text = || Message::user("Tell me about deltas");
    let (reference, _) = plain_turns(text(), &long);
    // A stop string from the middle of the plain answer.
    let cut: String = reference.content.chars().skip(12).take(3).collect();
    let thinking = ChatParams { enable_thinking: Some(true), max_thinking_tokens: Some(7), ..long.clone() };
    let cases: Vec<(&str, Message, ChatParams)> = vec![
        ("max_tokens", text(), long.clone()),
        ("stop string", text(), ChatParams { stop: vec![cut], ..long.clone() }),
        ("thinking budget", text(), thinking),
        (
            "image",
            Message::user(vec![ContentPart::image(image), ContentPart::text("What is this?")]),
            long.clone(),
        ),
    ];
    let mut total = SpeculationStats::default();
    for (what, question, params) in cases {
        let (want, want_next) = plain_turns(question.clone(), &params);
        match what {
            "stop string" => assert_eq!(want.finish_reason, FinishReason::StopString),
            "thinking budget" => assert_eq!(want.usage.reasoning_tokens, 7),
            _ => assert_eq!(want.finish_reason, FinishReason::Length),
        }
        for k in [1, 2, 4] {
            for rate in [0.0, 0.5, 1.0] {
                let case = format!("{what}, k {k}, oracle {rate}");
                let spec = ChatParams {
                    speculative: Some(SpeculativeOptions {
                        draft_max: k,
                        adaptive: false,
                        // Drafts among the commonest ids only: kept less often, same output.
                        draft_vocab: (k == 2).then_some(50_000),
                        oracle: oracle(&want.tokens, rate, k as u64),
                    }),
                    ..params.clone()
                };
                let mut session = drafting_session(&lm);
                let got = session.send(question.clone(), &spec, |_| {}).unwrap();
                same_reply(&got, &want, &case);
                let stats = got.usage.speculation.clone().expect("a speculative turn reports its drafts");
                if rate == 1.0 {
                    assert!(stats.accepted > 0 && stats.steps < want.tokens.len(), "{case}: {stats:?}");
                }
                total.drafted += stats.drafted;
                total.accepted += stats.accepted;
                // The next turn, plain, starts from what the speculative one left.
                let next = session.send(Message::user("And then?"), &params, |_| {}).unwrap();
                same_reply(&next, &want_next, &format!("{case}, next turn"));
                assert_eq!(next.usage.cached_prompt_tokens, want_next.usage.cached_prompt_tokens, "{case}");
            }
        }
    }
    let acceptance = total.acceptance();
    assert!(acceptance > 0.2 && acceptance < 0.9, "drafts were both kept and rejected: {acceptance}");
}

/// Speculation needs a session that kept the head's state from its first token, and a turn
/// asking for it elsewhere is refused before anything runs.
#[test]
fn speculative_turns_need_a_drafting_session() {
    let lm = tiny_vl_lm();
    let params = ChatParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 4,
        speculative: Some(SpeculativeOptions::default()),
        ..Default::default()
    };
    let mut session = ChatSession::new(lm.clone());
    let e = session.send(Message::user("Hi"), &params, |_| {}).unwrap_err().to_string();
    assert!(e.contains("SessionOptions::drafting"), "{e}");
    assert!(session.messages().is_empty() && session.context_tokens() == 0);
    let bad =
        ChatParams { speculative: Some(SpeculativeOptions { draft_max: 9, ..Default::default() }), ..params };
    let e = drafting_session(&lm).send(Message::user("Hi"), &bad, |_| {}).unwrap_err().to_string();
    assert!(e.contains("draft_max"), "{e}");
    let bad = ChatParams {
        speculative: Some(SpeculativeOptions { draft_vocab: Some(0), ..Default::default() }),
        ..bad
    };
    let e = drafting_session(&lm).send(Message::user("Hi"), &bad, |_| {}).unwrap_err().to_string();
    assert!(e.contains("draft_vocab"), "{e}");
}

/// In batched serving, speculative requests (drafts all, some or none kept) verify their drafts
/// in the same passes as plain requests decode and prefill, and every request gets the reply it
/// gets alone.
#[test]
fn batched_speculative_requests_equal_single_ones() {
    let lm = tiny_vl_lm();
    let questions = ["Tell me about deltas", "Why is the sky blue?", "Count to ten", "Name a prime"];
    let mut params = ChatParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 24,
        enable_thinking: Some(false),
        ..Default::default()
    };
    params.sampling.logit_bias = lm.stop_ids().iter().map(|&id| (id, f32::NEG_INFINITY)).collect();
    let prompts: Vec<_> =
        questions.iter().map(|q| lm.prompt(&[Message::user(*q)], true, Some(false)).unwrap()).collect();
    let alone: Vec<Reply> =
        prompts.iter().map(|p| drafting_session(&lm).complete_prompt(p, &params, |_| {}).unwrap()).collect();
    // Request 3 decodes plainly; the others at oracle rates 1, 0.5 and 0 (the head alone).
    let request_params = |i: usize| ChatParams {
        speculative: (i < 3).then(|| SpeculativeOptions {
            draft_max: 3,
            adaptive: false,
            draft_vocab: None,
            oracle: oracle(&alone[i].tokens, [1.0, 0.5, 0.0][i], i as u64),
        }),
        ..params.clone()
    };
    let options = SchedulerOptions { slots: 4, prefill_chunk: 7, drafting: true, ..Default::default() };
    let mut scheduler = Scheduler::new(lm.clone(), options);
    let mut replies: Vec<Option<Reply>> = vec![None; prompts.len()];
    // Staggered arrivals: later prompts are prefilled in pieces while earlier ones verify.
    for (i, prompt) in prompts.iter().enumerate() {
        scheduler.start(i as u64, prompt, &request_params(i)).unwrap();
        for (id, outcome) in scheduler.step(&mut |_, _| {}) {
            replies[id as usize] = Some(outcome.unwrap());
        }
    }
    while scheduler.running() > 0 {
        for (id, outcome) in scheduler.step(&mut |_, _| {}) {
            replies[id as usize] = Some(outcome.unwrap());
        }
    }
    for (i, (got, want)) in replies.iter().zip(&alone).enumerate() {
        let got = got.as_ref().expect("every request ended");
        same_reply(got, want, &format!("request {i}"));
        let stats = got.usage.speculation.as_ref();
        assert_eq!(stats.is_some(), i < 3, "request {i}");
        if i == 0 {
            assert!(stats.unwrap().accepted > 0, "{stats:?}");
        }
    }
}
