//! Chat sessions on a complete tiny model folder (tiny-vl + the generated tokenizer): state reuse
//! across turns gives the tokens a from-scratch prefill gives, and the streaming, stop, thinking,
//! cancellation and guard rules hold token for token. The weights are random, so the text is
//! gibberish: the tests compare tokens and texts, never meanings.

mod common;

use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use qwenrt::chat::Message;
use qwenrt::{
    generate, CacheStats, ChatParams, ChatSession, Event, FinishReason, GenerateOptions, LanguageModel,
    PromptCache, RepetitionGuard, SamplingParams, SessionOptions,
};

fn tiny_vl_folder() -> PathBuf {
    qwenrt_test_support::tiny_vl_folder("session")
}

fn load() -> Arc<LanguageModel> {
    Arc::new(LanguageModel::load(&tiny_vl_folder()).unwrap())
}

fn greedy(max_tokens: usize) -> ChatParams {
    ChatParams { sampling: SamplingParams::greedy(), max_tokens, ..Default::default() }
}

/// What a from-scratch run gives for the conversation: render, tokenize, prefill everything.
fn reference(lm: &LanguageModel, messages: &[Message], params: &ChatParams) -> (Vec<u32>, Vec<u32>) {
    let prompt = lm.encode(&lm.render_chat(messages, true, params.enable_thinking).unwrap()).unwrap();
    let options = GenerateOptions {
        max_tokens: params.max_tokens,
        sampling: params.sampling.clone(),
        stop_ids: lm.stop_ids().to_vec(),
    };
    let mut state = lm.model.new_state();
    let out = generate(&lm.model, &mut state, &prompt, &options, |_| true).unwrap();
    (prompt, out.tokens)
}

const QUESTIONS: [&str; 4] = [
    "Hello! Who are you?",
    "Tell me about the delta rule.",
    "And what is gated attention?",
    "Summarise both in a sentence.",
];

/// Runs the conversation; returns each turn's (cached prompt tokens, prompt tokens).
fn converse(
    session: &mut ChatSession,
    lm: &LanguageModel,
    params: &ChatParams,
    prepare: bool,
) -> Vec<(usize, usize)> {
    session.set_system(Some("You are a terse assistant."));
    let mut usage = Vec::new();
    for q in QUESTIONS {
        let mut messages = session.messages().to_vec();
        messages.push(Message::user(q));
        let (prompt, want) = reference(lm, &messages, params);
        let reply = session.send(Message::user(q), params, |_| {}).unwrap();
        assert_eq!(reply.tokens, want, "turn {q:?}: tokens with state reuse differ from a full prefill");
        assert_eq!(reply.usage.prompt_tokens, prompt.len());
        usage.push((reply.usage.cached_prompt_tokens, reply.usage.prompt_tokens));
        if prepare {
            session.prepare(params.enable_thinking).unwrap();
        }
    }
    assert_eq!(session.messages().len(), 1 + 2 * QUESTIONS.len());
    usage
}

/// What the template puts after `<|im_start|>assistant\n`.
fn generation_prompt(thinking: Option<bool>) -> &'static str {
    if thinking == Some(true) {
        "<think>\n"
    } else {
        "<think>\n\n</think>\n\n"
    }
}

#[test]
fn reused_state_gives_the_tokens_of_a_full_prefill_and_skips_the_history() {
    let lm = load();
    for thinking in [None, Some(true)] {
        let params = ChatParams { enable_thinking: thinking, ..greedy(12) };
        let mut session = ChatSession::new(lm.clone());
        let usage = converse(&mut session, &lm, &params, false);
        assert_eq!(usage[0].0, 0, "nothing to reuse on the first turn");
        for (i, &(cached, total)) in usage.iter().enumerate().skip(1) {
            // Everything up to the previous answer comes from the state saved after the
            // previous prompt's `<|im_start|>assistant\n`.
            let prev_total = usage[i - 1].1;
            let header = lm.encode(generation_prompt(thinking)).unwrap().len();
            assert_eq!(cached, prev_total - header, "turn {i} ({thinking:?}) reused {cached} of {total}");
        }
        let stats = session.stats();
        assert_eq!((stats.lookups, stats.hits), (4, 3));
        eprintln!("thinking {thinking:?}: prompt-token hit rate {:.2} ({stats:?})", stats.token_hit_rate());

        // With `prepare` between turns only the new question is prefilled.
        let mut prepared = ChatSession::new(lm.clone());
        let usage = converse(&mut prepared, &lm, &params, true);
        for (i, &(cached, total)) in usage.iter().enumerate().skip(1) {
            let new = format!(
                "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n{}",
                QUESTIONS[i],
                generation_prompt(thinking)
            );
            assert_eq!(total - cached, lm.encode(&new).unwrap().len(), "turn {i} ({thinking:?})");
        }
        let CacheStats { prompt_tokens, cached_tokens, .. } = prepared.stats();
        eprintln!("  with prepare: {cached_tokens} of {prompt_tokens} prompt tokens reused");
        assert!(prepared.stats().token_hit_rate() > stats.token_hit_rate());
    }
}

#[test]
fn no_cache_and_a_tiny_cache_still_give_the_same_tokens_within_the_budget() {
    let lm = load();
    let params = greedy(10);
    let mut off =
        ChatSession::with_options(lm.clone(), SessionOptions { prompt_cache_bytes: 0, ..Default::default() });
    let usage = converse(&mut off, &lm, &params, false);
    assert!(usage.iter().all(|&(cached, _)| cached == 0), "{usage:?}");
    assert!(off.prompt_cache().is_empty());

    // Room for about one snapshot: the cache never exceeds it, and the last one still hits.
    let probe = {
        let mut s = ChatSession::new(lm.clone());
        s.send(Message::user(QUESTIONS[0]), &params, |_| {}).unwrap();
        s.prompt_cache().bytes()
    };
    let budget = probe * 3 / 2;
    let mut small = ChatSession::with_options(
        lm.clone(),
        SessionOptions { prompt_cache_bytes: budget, ..Default::default() },
    );
    let usage = converse(&mut small, &lm, &params, false);
    assert!(small.prompt_cache().bytes() <= budget);
    assert_eq!(small.prompt_cache().len(), 1);
    assert!(usage[3].0 > 0);
    let memory = small.memory();
    assert_eq!(memory.weights, lm.model.weight_bytes());
    assert!(memory.state > 0 && memory.prompt_cache == small.prompt_cache().bytes());
    small.clear_cache();
    assert_eq!(small.memory().prompt_cache, 0);
}

#[test]
fn restoring_a_snapshot_then_continuing_equals_continuing() {
    let lm = load();
    let prompt = lm.encode(&lm.render_chat(&[Message::user("Count to ten.")], true, None).unwrap()).unwrap();
    let split = prompt.len() - 3;
    let mut state = lm.model.new_state();
    lm.model.forward(&mut state, &prompt[..split], qwenrt::Logits::None).unwrap();
    let mut cache = PromptCache::new(usize::MAX);
    cache.insert(prompt[..split].to_vec(), state.snapshot(), state.cache_bytes());
    let options = GenerateOptions { max_tokens: 16, sampling: SamplingParams::greedy(), stop_ids: vec![] };
    let continued = generate(&lm.model, &mut state, &prompt[split..], &options, |_| true).unwrap();

    let mut other = lm.model.new_state();
    lm.model.forward(&mut other, &prompt[..5], qwenrt::Logits::None).unwrap(); // something else entirely
    other.restore(cache.longest_prefix(&prompt, prompt.len()).unwrap()).unwrap();
    let restored = generate(&lm.model, &mut other, &prompt[split..], &options, |_| true).unwrap();
    assert_eq!(restored.tokens, continued.tokens);
    assert_eq!(other.len(), state.len());
}

/// Index of the first token whose text makes the content non-empty.
fn first_visible(lm: &LanguageModel, tokens: &[u32]) -> usize {
    (0..tokens.len()).find(|&j| !lm.tokenizer.decode(&tokens[..=j]).unwrap().is_empty()).unwrap()
}

#[test]
fn deltas_concatenate_to_the_reply_and_stop_strings_cut_across_tokens() {
    let lm = load();
    let mut session = ChatSession::new(lm.clone());
    let params = greedy(40);
    let mut deltas = String::new();
    let reply = session
        .send(Message::user("Write a long story."), &params, |e| {
            if let Event::Content(t) = e {
                assert!(!t.is_empty() && !t.contains("<|im_end|>"));
                deltas.push_str(t);
            }
        })
        .unwrap();
    let visible: Vec<u32> = reply.tokens.iter().copied().filter(|id| !lm.stop_ids().contains(id)).collect();
    let decoded = lm.tokenizer.decode(&visible).unwrap();
    assert_eq!(deltas, reply.content);
    assert_eq!(reply.content, decoded);
    assert!(reply.reasoning.is_empty());

    // A stop string straddling the boundary between two tokens, from two characters before it
    // to two after: the text ends just before it.
    let text = &reply.content;
    let k = first_visible(&lm, &visible) + 3;
    let boundary = lm.tokenizer.decode(&visible[..k]).unwrap().len();
    let chars: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    let at = chars.iter().position(|&i| i >= boundary).unwrap();
    let (from, to) = (chars[at.saturating_sub(2)], chars[(at + 2).min(chars.len() - 1)]);
    let stop = text[from..to].to_owned();
    let cut = text.find(&stop).unwrap();
    let mut session = ChatSession::new(lm.clone());
    let mut deltas = String::new();
    let params = ChatParams { stop: vec!["never appears \u{1}".into(), stop.clone()], ..greedy(40) };
    let stopped = session
        .send(Message::user("Write a long story."), &params, |e| {
            if let Event::Content(t) = e {
                deltas.push_str(t);
            }
        })
        .unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::StopString);
    assert_eq!(stopped.stop_string.as_deref(), Some(stop.as_str()));
    assert_eq!(stopped.content, text[..cut], "stop string {stop:?}");
    assert_eq!(deltas, stopped.content);
    assert_eq!(session.messages().last().unwrap().content, stopped.content.as_str().into());

    // `<|im_end|>` ends the turn and never shows.
    let im_end = lm.tokenizer.token_id("<|im_end|>").unwrap();
    let forced = ChatParams {
        sampling: SamplingParams { logit_bias: vec![(im_end, 1000.0)], ..SamplingParams::greedy() },
        ..greedy(40)
    };
    let mut events = 0;
    let reply = session
        .send(Message::user("Hi"), &forced, |e| events += matches!(e, Event::Content(_)) as usize)
        .unwrap();
    assert_eq!(
        (reply.finish_reason, reply.tokens.as_slice(), events),
        (FinishReason::Stop, &[im_end][..], 0)
    );
    assert_eq!(reply.content, "");
}

#[test]
fn thinking_budget_closes_the_thought_and_the_answer_follows() {
    let lm = load();
    let budget = 5;
    let params = ChatParams { enable_thinking: Some(true), max_thinking_tokens: Some(budget), ..greedy(20) };
    let mut session = ChatSession::new(lm.clone());
    let mut reasoning = String::new();
    let mut content = String::new();
    let reply = session
        .send(Message::user("Think hard."), &params, |e| match e {
            Event::Reasoning(t) => {
                assert!(content.is_empty(), "reasoning after the answer began");
                reasoning.push_str(t)
            }
            Event::Content(t) => content.push_str(t),
            Event::Done(_) | Event::Token(_) => {}
        })
        .unwrap();
    let think_end = lm.tokenizer.token_id("</think>").unwrap();
    let close_at = reply.tokens.iter().position(|&t| t == think_end).unwrap();
    assert_eq!(reply.usage.reasoning_tokens, budget);
    assert!(close_at == budget + 1 || close_at == budget, "</think> forced right after {budget} tokens");
    assert_eq!(reply.usage.completion_tokens, 20);
    assert_eq!(reasoning, reply.reasoning);
    assert_eq!(content, reply.content);
    assert!(!reply.content.is_empty());
    let stored = session.messages().last().unwrap();
    assert_eq!(stored.reasoning_content.as_deref(), Some(reply.reasoning.as_str()));

    // The answer is what the model says after the forced close: a full prefill of the prompt,
    // the reasoning and the close gives the same tokens.
    let prompt =
        lm.encode(&lm.render_chat(&[Message::user("Think hard.")], true, Some(true)).unwrap()).unwrap();
    let close_end = close_at + 1 + lm.encode("\n\n").unwrap().len();
    let mut full = prompt.clone();
    full.extend_from_slice(&reply.tokens[..close_end]);
    let options = GenerateOptions {
        max_tokens: reply.tokens.len() - close_end,
        sampling: SamplingParams::greedy(),
        stop_ids: lm.stop_ids().to_vec(),
    };
    let mut state = lm.model.new_state();
    let rest = generate(&lm.model, &mut state, &full, &options, |_| true).unwrap();
    assert_eq!(rest.tokens, reply.tokens[close_end..]);

    // A zero budget closes the thought before the first token.
    let params = ChatParams { max_thinking_tokens: Some(0), ..params };
    let reply = ChatSession::new(lm.clone()).send(Message::user("Think hard."), &params, |_| {}).unwrap();
    assert!(reply.tokens.starts_with(&lm.encode("\n</think>\n\n").unwrap()), "{:?}", reply.tokens);
    assert_eq!((reply.reasoning.as_str(), reply.usage.reasoning_tokens), ("", 0));
    assert!(!reply.content.is_empty());

    // A context that holds the prompt but not the forced close is refused up front, deferred or
    // not, rather than failing in a step (which, batched, would fail other turns too).
    let prompt =
        lm.encode(&lm.render_chat(&[Message::user("Think hard.")], true, Some(true)).unwrap()).unwrap();
    let tight =
        SessionOptions { prompt_cache_bytes: 0, max_context: Some(prompt.len() + 1), ..Default::default() };
    let mut session = ChatSession::with_options(lm.clone(), tight);
    for deferred in [false, true] {
        let e =
            if deferred { session.begin_deferred(&prompt, &params) } else { session.begin(&prompt, &params) };
        let e = e.unwrap_err().to_string();
        assert!(e.contains("closing its thought") && e.contains("context holds"), "{e}");
    }
    assert!(session.begin(&prompt, &ChatParams { max_thinking_tokens: None, ..params.clone() }).is_ok());
}

#[test]
fn cancel_from_another_thread_stops_before_the_next_token() {
    let lm = load();
    let params = greedy(30);
    let (_, want) = reference(&lm, &[Message::user("Go on and on.")], &params);
    let first = first_visible(&lm, &want);

    let mut session = ChatSession::new(lm.clone());
    let token = session.cancel_token();
    let (ask, asked) = mpsc::channel::<()>();
    let (done, acknowledged) = mpsc::channel::<()>();
    let canceller = std::thread::spawn(move || {
        asked.recv().unwrap();
        token.cancel();
        done.send(()).unwrap();
    });
    let reply = session
        .send(Message::user("Go on and on."), &params, |e| {
            if let Event::Content(_) = e {
                if ask.send(()).is_ok() {
                    acknowledged.recv().unwrap();
                }
            }
        })
        .unwrap();
    canceller.join().unwrap();
    assert_eq!(reply.finish_reason, FinishReason::Cancelled);
    assert_eq!(reply.tokens, want[..=first], "stopped right after the token that produced the first text");
    assert_eq!(session.messages().last().unwrap().content, reply.content.as_str().into());

    // The request was consumed: the next turn runs to its end.
    let again = session.send(Message::user("Again."), &params, |_| {}).unwrap();
    assert_ne!(again.finish_reason, FinishReason::Cancelled);
}

#[test]
fn repetition_guard_ends_a_forced_loop() {
    let lm = load();
    let x = lm.encode(" la").unwrap()[0];
    let looping = ChatParams {
        sampling: SamplingParams { logit_bias: vec![(x, 1000.0)], ..SamplingParams::greedy() },
        ..greedy(50)
    };
    let mut session = ChatSession::new(lm.clone());
    let reply = session.send(Message::user("Sing."), &looping, |_| {}).unwrap();
    assert_eq!((reply.finish_reason, reply.tokens.len()), (FinishReason::Length, 50), "off by default");
    let guard = RepetitionGuard { max_ngram: 4, min_repeats: 3, min_tokens: 8 };
    let guarded = ChatParams { repetition_guard: Some(guard), ..looping };
    let reply = session.send(Message::user("Sing."), &guarded, |_| {}).unwrap();
    assert_eq!(reply.finish_reason, FinishReason::Repetition);
    assert_eq!(reply.tokens, vec![x; 8]);
    assert_eq!(reply.finish_reason.as_str(), "repetition");
}

#[test]
fn seeded_sampling_is_reproducible_through_sessions() {
    let lm = load();
    let run = |seed| {
        let mut params = lm.default_params();
        params.max_tokens = 16;
        params.sampling.seed = Some(seed);
        params.sampling.min_p = 0.01;
        params.sampling.repetition_penalty = 1.1;
        params.sampling.presence_penalty = 0.5;
        let mut session = ChatSession::new(lm.clone());
        session.send(Message::user("Pick words."), &params, |_| {}).unwrap().tokens
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    // The defaults come from generation_config.json.
    let p = lm.default_params().sampling;
    assert_eq!((p.temperature, p.top_k, p.top_p), (1.0, 20, 0.95));
}

#[test]
fn bad_parameters_are_rejected_before_anything_changes() {
    let lm = load();
    let mut session = ChatSession::new(lm.clone());
    let params = ChatParams { stop: vec![String::new()], ..greedy(4) };
    let err = session.send(Message::user("Hi"), &params, |_| {}).unwrap_err();
    assert!(err.to_string().contains("stop strings"), "{err}");
    let params =
        ChatParams { sampling: SamplingParams { top_p: 2.0, ..SamplingParams::default() }, ..greedy(4) };
    assert!(session.send(Message::user("Hi"), &params, |_| {}).unwrap_err().to_string().contains("top_p"));
    assert!(session.messages().is_empty(), "a failed turn leaves the conversation as it was");
}

#[test]
fn a_prompt_extending_what_was_generated_continues_the_live_state() {
    // E.g. a tool call: the template re-renders the assistant turn after the last user message
    // as it was generated, so the next prompt extends the tokens the state has consumed.
    let lm = load();
    let mut session = ChatSession::new(lm.clone());
    let prompt = lm.encode(&lm.render_chat(&[Message::user("Call a tool.")], true, None).unwrap()).unwrap();
    let first = session.complete(&prompt, &greedy(8), |_| {}).unwrap();
    assert_eq!(first.finish_reason, FinishReason::Length);
    let mut next = prompt.clone();
    next.extend_from_slice(&first.tokens);
    next.extend(lm.encode("<|im_end|>\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n").unwrap());
    let second = session.complete(&next, &greedy(8), |_| {}).unwrap();
    // The last sampled token was never fed: everything before it is reused.
    assert_eq!(second.usage.cached_prompt_tokens, prompt.len() + first.tokens.len() - 1);
    let options = GenerateOptions {
        max_tokens: 8,
        sampling: SamplingParams::greedy(),
        stop_ids: lm.stop_ids().to_vec(),
    };
    let mut state = lm.model.new_state();
    let want = generate(&lm.model, &mut state, &next, &options, |_| true).unwrap();
    assert_eq!(second.tokens, want.tokens);
}

#[test]
fn prepare_leaves_a_tool_call_turn_alone() {
    let lm = load();
    let mut session = ChatSession::new(lm.clone());
    session.send(Message::user("What is 6 x 7?"), &greedy(6), |_| {}).unwrap();
    let held = session.context_tokens();
    // The app parsed a tool call out of the answer.
    let mut call = session.messages().last().unwrap().clone();
    call.content = "<tool_call>\n<function=multiply>\n</function>\n</tool_call>".into();
    let mut messages = session.messages().to_vec();
    *messages.last_mut().unwrap() = call;
    session.set_messages(messages);
    let saved = session.prompt_cache().len();
    assert_eq!(session.prepare(None).unwrap(), held, "the live state is kept for the tool response");
    assert_eq!(session.prompt_cache().len(), saved, "nothing was prefilled");
    // Without the tool call, prepare re-renders the answer as history and prefills it.
    let mut plain = ChatSession::new(lm.clone());
    plain.send(Message::user("What is 6 x 7?"), &greedy(6), |_| {}).unwrap();
    plain.prepare(None).unwrap();
    assert_eq!(plain.prompt_cache().len(), saved + 1);
}

/// Turns of several sessions advanced together (one model pass per step, prompts and decode
/// steps mixed, turns ending at different times) give each session the reply it gets alone,
/// with log-probabilities that agree.
#[test]
fn turns_advanced_together_equal_turns_alone() {
    let lm = load();
    let mut params = greedy(12);
    params.logprobs = Some(3);
    let prompts: Vec<Vec<u32>> = QUESTIONS
        .iter()
        .map(|q| lm.encode(&lm.render_chat(&[Message::user(*q)], true, None).unwrap()).unwrap())
        .collect();
    let alone: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut params = params.clone();
            params.max_tokens = 6 + 2 * i;
            ChatSession::new(lm.clone()).complete(p, &params, |_| {}).unwrap()
        })
        .collect();

    let mut sessions: Vec<ChatSession> = prompts.iter().map(|_| ChatSession::new(lm.clone())).collect();
    let mut turns: Vec<_> = sessions
        .iter_mut()
        .zip(&prompts)
        .enumerate()
        .map(|(i, (s, p))| {
            let mut params = params.clone();
            params.max_tokens = 6 + 2 * i;
            s.begin(p, &params).unwrap()
        })
        .collect();
    let mut streamed = vec![String::new(); prompts.len()];
    loop {
        let mut s: Vec<&mut ChatSession> = sessions.iter_mut().collect();
        let mut t: Vec<_> = turns.iter_mut().collect();
        let stepped = ChatSession::advance_many(&mut s, &mut t, |i, e| {
            if let Event::Content(text) = e {
                streamed[i].push_str(text)
            }
        })
        .unwrap();
        if stepped == 0 {
            break;
        }
    }
    for (i, turn) in turns.into_iter().enumerate() {
        let reply = turn.finish(&mut |_| {});
        assert_eq!(reply.tokens, alone[i].tokens, "session {i}");
        assert_eq!(reply.finish_reason, alone[i].finish_reason);
        assert_eq!(reply.content, alone[i].content);
        assert!(streamed[i].len() <= reply.content.len());
        assert_eq!(reply.logprobs.len(), reply.usage.completion_tokens);
        for (a, b) in reply.logprobs.iter().zip(&alone[i].logprobs) {
            assert_eq!((a.id, a.top.len()), (b.id, 3));
            assert!((a.logprob - b.logprob).abs() < 1e-3, "{} vs {}", a.logprob, b.logprob);
            assert!(a.logprob <= 0.0 && a.logprob >= a.top[2].2 - 1e-6, "greedy picks the top token");
            assert_eq!(a.top[0].0, a.id);
        }
        assert_eq!(sessions[i].context_tokens(), prompts[i].len() + reply.tokens.len() - 1);
    }
}

/// Runs `turn` to the end one `advance` at a time; returns the reply, the steps taken before
/// the first sampled token, and the context length after each of those steps.
fn run_stepwise(session: &mut ChatSession, mut turn: qwenrt::Turn) -> (qwenrt::Reply, usize, Vec<usize>) {
    let mut sampled = false;
    let mut prefill_steps = 0;
    let mut held = Vec::new();
    while !sampled {
        let going = session.advance(&mut turn, &mut |e| sampled |= matches!(e, Event::Token(_))).unwrap();
        assert!(going, "the turn ended before its first token");
        prefill_steps += 1;
        held.push(session.context_tokens());
    }
    while session.advance(&mut turn, &mut |_| {}).unwrap() {}
    (turn.finish(&mut |_| {}), prefill_steps, held)
}

fn assert_same_reply(got: &qwenrt::Reply, want: &qwenrt::Reply, what: &str) {
    assert_eq!(got.tokens, want.tokens, "{what}");
    assert_eq!(got.content, want.content, "{what}");
    assert_eq!(got.finish_reason, want.finish_reason, "{what}");
    assert_eq!(got.usage.prompt_tokens, want.usage.prompt_tokens, "{what}");
    assert_eq!(got.usage.cached_prompt_tokens, want.usage.cached_prompt_tokens, "{what}");
    assert_eq!(got.logprobs.len(), want.logprobs.len(), "{what}");
    for (a, b) in got.logprobs.iter().zip(&want.logprobs) {
        assert_eq!(a.id, b.id, "{what}");
        assert!((a.logprob - b.logprob).abs() < 1e-3, "{what}: {} vs {}", a.logprob, b.logprob);
    }
}

/// A deferred turn fed three tokens per step gives the reply of the synchronous path, splits
/// its pieces at the assistant header so that the state saved there is the one `begin` saves,
/// and the next turn reuses as much of it.
#[test]
fn a_prompt_prefilled_in_chunks_equals_one_prefilled_at_once() {
    let lm = load();
    let params = ChatParams { logprobs: Some(2), ..greedy(8) };
    let header = lm.encode("<|im_start|>assistant\n").unwrap();
    let first = vec![Message::system("You are a terse assistant."), Message::user(QUESTIONS[1])];
    let prompt = lm.encode(&lm.render_chat(&first, true, None).unwrap()).unwrap();
    let point = prompt.windows(header.len()).rposition(|w| w == header.as_slice()).unwrap() + header.len();
    const CHUNK: usize = 3;
    assert_ne!(point % CHUNK, 0, "the header must end inside a piece for this test to split one");

    let mut sync = ChatSession::new(lm.clone());
    let turn = sync.begin(&prompt, &params).unwrap();
    assert_eq!(sync.context_tokens(), point, "begin prefills up to the header");
    let (want, _, _) = run_stepwise(&mut sync, turn);

    let mut chunked = ChatSession::new(lm.clone());
    let mut turn = chunked.begin_deferred(&prompt, &params).unwrap();
    assert_eq!(chunked.context_tokens(), 0, "a deferred begin prefills nothing");
    assert_eq!(turn.prefill_remaining(), prompt.len());
    turn.set_prefill_chunk(CHUNK);
    let (got, steps, held) = run_stepwise(&mut chunked, turn);
    assert_same_reply(&got, &want, "first turn");
    assert_eq!(steps, point.div_ceil(CHUNK) + (prompt.len() - point).div_ceil(CHUNK));
    assert!(held.contains(&point), "a piece ends at the header: {held:?}");
    assert!(held.windows(2).all(|w| w[1] - w[0] <= CHUNK), "{held:?}");
    assert_eq!(chunked.prompt_cache().prefix_lengths(), sync.prompt_cache().prefix_lengths());
    assert_eq!(chunked.prompt_cache().prefix_lengths(), [point]);

    // The next turn of the conversation starts from the saved state in both sessions; the
    // deferred one prefills its new part in pieces again, past the next header.
    let mut second = first.clone();
    second.push(Message::assistant(want.content.clone()));
    second.push(Message::user(QUESTIONS[2]));
    let prompt = lm.encode(&lm.render_chat(&second, true, None).unwrap()).unwrap();
    let turn = sync.begin(&prompt, &params).unwrap();
    let (want, _, _) = run_stepwise(&mut sync, turn);
    assert_eq!(want.usage.cached_prompt_tokens, point, "the saved state is reused");
    let mut turn = chunked.begin_deferred(&prompt, &params).unwrap();
    assert_eq!(turn.prefill_remaining(), prompt.len() - point);
    turn.set_prefill_chunk(CHUNK);
    let (got, _, _) = run_stepwise(&mut chunked, turn);
    assert_same_reply(&got, &want, "second turn");
    assert_eq!(chunked.prompt_cache().prefix_lengths(), sync.prompt_cache().prefix_lengths());
    assert_eq!(chunked.stats(), sync.stats());

    // A deferred prompt meets the model only in a step, maybe next to other sessions' turns:
    // its ids are checked up front.
    let vocab = lm.model.vocab_size() as u32;
    let e = chunked.begin_deferred(&[1, vocab, 2], &params).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}

/// One turn prefilling its prompt in pieces and another decoding share every step: the
/// decoding turn samples at each of them, and both end with the replies they get alone.
#[test]
fn a_turn_prefilling_in_pieces_and_a_decoding_turn_advance_together() {
    let lm = load();
    let no_end = lm.stop_ids().iter().map(|&id| (id, -1000.0)).collect();
    let mut params = ChatParams { logprobs: Some(2), ..greedy(24) };
    params.sampling.logit_bias = no_end;
    let render = |q: &str| lm.encode(&lm.render_chat(&[Message::user(q)], true, None).unwrap()).unwrap();
    let (short, long) = (render(QUESTIONS[0]), render(&QUESTIONS.join(" ")));
    let alone: Vec<_> = [&short, &long]
        .iter()
        .map(|p| ChatSession::new(lm.clone()).complete(p, &params, |_| {}).unwrap())
        .collect();

    let mut sessions = [ChatSession::new(lm.clone()), ChatSession::new(lm.clone())];
    let [decoding_session, prefilling_session] = &mut sessions;
    let mut decoding = decoding_session.begin(&short, &params).unwrap();
    assert!(decoding_session.advance(&mut decoding, &mut |_| {}).unwrap(), "the short prompt is decoding");
    let mut prefilling = prefilling_session.begin_deferred(&long, &params).unwrap();
    prefilling.set_prefill_chunk(4);
    let mut turns = [decoding, prefilling];
    let mut sampled = [1, 0];
    let mut steps_before_first_token = 0;
    loop {
        let mut step = [0, 0];
        let mut s: Vec<&mut ChatSession> = sessions.iter_mut().collect();
        let mut t: Vec<&mut qwenrt::Turn> = turns.iter_mut().collect();
        let stepped = ChatSession::advance_many(&mut s, &mut t, |i, e| {
            if matches!(e, Event::Token(_)) {
                step[i] += 1;
            }
        })
        .unwrap();
        if stepped == 0 {
            break;
        }
        if sampled[1] == 0 && step[1] == 0 {
            steps_before_first_token += 1;
            assert!(
                turns[0].is_finished() || step[0] == 1,
                "the decoding turn samples while the other prefills"
            );
        }
        sampled = [sampled[0] + step[0], sampled[1] + step[1]];
    }
    let header = lm.encode("<|im_start|>assistant\n").unwrap();
    let point = long.windows(header.len()).rposition(|w| w == header.as_slice()).unwrap() + header.len();
    assert_eq!(steps_before_first_token, point.div_ceil(4) + (long.len() - point).div_ceil(4) - 1);
    for (i, turn) in turns.into_iter().enumerate() {
        let reply = turn.finish(&mut |_| {});
        assert_same_reply(&reply, &alone[i], &format!("turn {i}"));
        assert_eq!(sampled[i], reply.usage.completion_tokens);
    }
}
