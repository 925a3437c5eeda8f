//! The continuous-batching scheduler on the tiny model with the real vocabulary: running
//! requests share each model pass and still get what they get alone, a long prompt prefills in
//! pieces next to running streams, prompts that arrive together prefill together, a request goes
//! to the slot holding most of its prompt, and one failing request fails alone.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use qwenrt::chat::Message;
use qwenrt::scheduler::{Failure, RequestId, Scheduler, SchedulerOptions, DEFAULT_PREFILL_CHUNK};
use qwenrt::{ChatParams, ChatSession, Constraint, Event, LanguageModel, Prompt, SamplingParams};

fn lm() -> Arc<LanguageModel> {
    common::tiny_vl_lm()
}

fn options(slots: usize, prompt_cache_bytes: usize, prefill_chunk: usize) -> SchedulerOptions {
    SchedulerOptions { slots, max_context: 4096, prompt_cache_bytes, prefill_chunk, drafting: false }
}

fn prompt(lm: &LanguageModel, question: &str) -> Prompt {
    Prompt::text(lm.encode(&lm.render_chat(&[Message::user(question)], true, None).unwrap()).unwrap())
}

/// Greedy; stop tokens banned, so that answers run to `max_tokens`.
fn params(lm: &LanguageModel, max_tokens: usize) -> ChatParams {
    let mut sampling = SamplingParams::greedy();
    sampling.logit_bias = lm.stop_ids().iter().map(|&id| (id, -1000.0)).collect();
    ChatParams { sampling, max_tokens, logprobs: Some(0), ..Default::default() }
}

/// What a request streamed: sampled ids and text.
#[derive(Debug, Default, Clone, PartialEq)]
struct Streamed {
    ids: Vec<u32>,
    text: String,
}

fn record(log: &mut Vec<(RequestId, Option<u32>, String)>) -> impl FnMut(RequestId, Event<'_>) + '_ {
    move |id, event| match event {
        Event::Token(t) => log.push((id, Some(t.id), String::new())),
        Event::Content(t) | Event::Reasoning(t) => log.push((id, None, t.to_owned())),
        Event::Done(_) => panic!("the scheduler returns replies, it does not stream Done"),
    }
}

fn streamed(log: &[(RequestId, Option<u32>, String)], id: RequestId) -> Streamed {
    let mut out = Streamed::default();
    for (_, token, text) in log.iter().filter(|(i, _, _)| *i == id) {
        out.ids.extend(token);
        out.text.push_str(text);
    }
    out
}

/// Runs one request on a scheduler of its own.
fn alone(
    lm: &Arc<LanguageModel>,
    options: SchedulerOptions,
    prompt: &Prompt,
    params: &ChatParams,
) -> Streamed {
    let mut scheduler = Scheduler::new(lm.clone(), options);
    scheduler.start(1, prompt, params).unwrap();
    let mut log = Vec::new();
    while scheduler.step(&mut record(&mut log)).is_empty() {}
    streamed(&log, 1)
}

#[test]
fn running_requests_advance_together_and_match_requests_alone() {
    let lm = lm();
    let opts = options(3, 0, DEFAULT_PREFILL_CHUNK);
    let prompts: Vec<Prompt> =
        ["one", "two two", "three three three"].iter().map(|q| prompt(&lm, q)).collect();
    let p = params(&lm, 5);
    let solo: Vec<Streamed> = prompts.iter().map(|pr| alone(&lm, opts, pr, &p)).collect();

    let mut scheduler = Scheduler::new(lm.clone(), opts);
    for (id, pr) in prompts.iter().enumerate() {
        scheduler.start(id as RequestId, pr, &p).unwrap();
    }
    let mut log = Vec::new();
    let mut first_step: Option<HashSet<RequestId>> = None;
    let mut ended = 0;
    while ended < prompts.len() {
        let before = log.len();
        let done = scheduler.step(&mut record(&mut log));
        assert!(done.iter().all(|(_, outcome)| outcome.is_ok()));
        ended += done.len();
        first_step.get_or_insert_with(|| log[before..].iter().map(|(id, _, _)| *id).collect());
    }
    assert_eq!(first_step.unwrap(), HashSet::from([0, 1, 2]), "one step streams for every running request");
    for (id, want) in solo.iter().enumerate() {
        assert_eq!(&streamed(&log, id as RequestId), want, "request {id}");
        assert_eq!(want.ids.len(), 5);
    }
    assert_eq!(scheduler.running(), 0);
}

#[test]
fn a_long_prompt_prefills_in_pieces_while_a_running_request_keeps_streaming() {
    const CHUNK: usize = 8;
    let lm = lm();
    let opts = options(2, 64 << 20, CHUNK);
    let running = prompt(&lm, "Hi");
    let long = prompt(&lm, &"Tell me everything about the delta rule, gated attention, ".repeat(6));
    let header = lm.encode("<|im_start|>assistant\n").unwrap();
    let point =
        long.ids().windows(header.len()).rposition(|w| w == header.as_slice()).unwrap() + header.len();
    let pieces = point.div_ceil(CHUNK) + (long.len() - point).div_ceil(CHUNK);
    assert!(pieces > 10, "a prompt of {} tokens", long.len());
    let (running_params, long_params) = (params(&lm, 40), params(&lm, 6));

    let mut scheduler = Scheduler::new(lm.clone(), opts);
    let mut log = Vec::new();
    scheduler.start(1, &running, &running_params).unwrap();
    for _ in 0..2 {
        assert!(scheduler.step(&mut record(&mut log)).is_empty());
    }
    scheduler.start(2, &long, &long_params).unwrap();
    assert_eq!(scheduler.context_tokens(2), Some(0), "starting a request prefills nothing");
    let admitted = log.len();
    let mut ended = 0;
    while ended < 2 {
        ended += scheduler.step(&mut record(&mut log)).len();
    }
    let first_of_long = log.iter().position(|(id, token, _)| *id == 2 && token.is_some()).unwrap();
    let meanwhile =
        log[admitted..first_of_long].iter().filter(|(id, token, _)| *id == 1 && token.is_some()).count();
    assert!(
        meanwhile >= pieces - 1,
        "the running request got {meanwhile} tokens during the {pieces} steps of the prefill"
    );
    assert_eq!(streamed(&log, 1), alone(&lm, opts, &running, &running_params));
    assert_eq!(streamed(&log, 2), alone(&lm, opts, &long, &long_params));
}

#[test]
fn prompts_arriving_together_prefill_in_the_same_steps() {
    let lm = lm();
    let prompts: Vec<Prompt> =
        ["one", "two two", "three three three"].iter().map(|q| prompt(&lm, q)).collect();
    let p = params(&lm, 3);
    // The step in which each request gets its first token.
    let first_token_steps = |prefill_chunk: usize| {
        let mut scheduler = Scheduler::new(lm.clone(), options(3, 0, prefill_chunk));
        for (id, pr) in prompts.iter().enumerate() {
            scheduler.start(id as RequestId, pr, &p).unwrap();
        }
        let mut first = vec![0; prompts.len()];
        let (mut step, mut ended) = (0, 0);
        while ended < prompts.len() {
            step += 1;
            ended += scheduler
                .step(&mut |id, event| {
                    if matches!(event, Event::Token(_)) && first[id as usize] == 0 {
                        first[id as usize] = step;
                    }
                })
                .len();
        }
        first
    };
    let total: usize = prompts.iter().map(Prompt::len).sum();
    assert_eq!(first_token_steps(total), [1, 1, 1]);
    let staggered = first_token_steps(prompts[0].len() + prompts[1].len() / 2);
    assert!(staggered[0] == 1 && staggered[1] <= staggered[2] && staggered[2] > 1, "{staggered:?}");
}

#[test]
fn a_follow_up_goes_to_the_slot_that_holds_its_conversation() {
    let lm = lm();
    let mut scheduler = Scheduler::new(lm.clone(), options(3, 64 << 20, DEFAULT_PREFILL_CHUNK));
    let p = params(&lm, 4);
    // Three conversations, one per slot.
    let firsts: Vec<Vec<Message>> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|q| vec![Message::user(format!("Tell me about {q}."))])
        .collect();
    let mut answers = vec![String::new(); 3];
    for (id, messages) in firsts.iter().enumerate() {
        let ids = lm.encode(&lm.render_chat(messages, true, None).unwrap()).unwrap();
        scheduler.start(id as RequestId, &Prompt::text(ids), &p).unwrap();
    }
    while scheduler.running() > 0 {
        scheduler.step(&mut |id, event| {
            if let Event::Content(text) = event {
                answers[id as usize].push_str(text)
            }
        });
    }
    // The second turn of conversation 1 reuses the state its first turn saved after the
    // assistant header, which only the slot that ran it holds.
    let mut follow_up = firsts[1].clone();
    follow_up.push(Message::assistant(answers[1].clone()));
    follow_up.push(Message::user("And more?"));
    let ids = lm.encode(&lm.render_chat(&follow_up, true, None).unwrap()).unwrap();
    let first = lm.encode(&lm.render_chat(&firsts[1], true, None).unwrap()).unwrap();
    let saved = header_end(&lm, &first);
    assert_eq!(&ids[..saved], &first[..saved]);
    scheduler.start(10, &Prompt::text(ids), &p).unwrap();
    let mut reply = None;
    while reply.is_none() {
        reply = scheduler.step(&mut |_, _| {}).pop();
    }
    let (_, outcome) = reply.unwrap();
    let usage = outcome.unwrap().usage;
    assert_eq!(usage.cached_prompt_tokens, saved, "of {} prompt tokens", usage.prompt_tokens);
}

/// Where a prompt's last assistant header ends: the point a session saves its state at.
fn header_end(lm: &LanguageModel, prompt: &[u32]) -> usize {
    let header = lm.encode("<|im_start|>assistant\n").unwrap();
    prompt.windows(header.len()).rposition(|w| w == header.as_slice()).unwrap() + header.len()
}

#[test]
fn the_reusable_prefix_is_a_pure_question() {
    let lm = lm();
    let mut session = ChatSession::with_options(
        lm.clone(),
        qwenrt::SessionOptions { prompt_cache_bytes: 64 << 20, ..Default::default() },
    );
    let p = params(&lm, 3);
    let first = prompt(&lm, "Hello");
    let reply = session.complete(first.ids(), &p, |_| {}).unwrap();
    let held = session.context_tokens();
    let more = lm.encode(" and more text").unwrap();
    // The live state (prompt and answer but its last token), continued.
    let mut live: Vec<u32> =
        first.ids().iter().chain(&reply.tokens[..reply.tokens.len() - 1]).copied().collect();
    assert_eq!(live.len(), held);
    live.extend(&more);
    // The prompt continued without the answer: only the state saved after the header serves.
    let mut branch = first.ids().to_vec();
    branch.extend(&more);
    let stats = session.stats();
    for _ in 0..2 {
        assert_eq!(session.reusable_prefix(&Prompt::text(live.clone())), held);
        assert_eq!(session.reusable_prefix(&Prompt::text(branch.clone())), header_end(&lm, first.ids()));
        // Exactly what the live state holds: a turn must feed at least one token and the live
        // state cannot step back one, so only the saved state serves.
        assert_eq!(
            session.reusable_prefix(&Prompt::text(live[..held].to_vec())),
            header_end(&lm, first.ids())
        );
        assert_eq!(session.reusable_prefix(&Prompt::text(lm.encode("Something else").unwrap())), 0);
    }
    assert_eq!(session.context_tokens(), held, "nothing was restored");
    assert_eq!(session.stats(), stats, "no lookup was counted");
    // And a turn then reuses exactly what it said.
    let reply = session.complete(&branch, &p, |_| {}).unwrap();
    assert_eq!(reply.usage.cached_prompt_tokens, header_end(&lm, first.ids()));
}

#[test]
fn a_request_that_fails_fails_alone_and_the_others_finish() {
    let lm = lm();
    let opts = options(2, 0, DEFAULT_PREFILL_CHUNK);
    let seven = lm.encode("7").unwrap()[0];
    let mut impossible = ChatParams { constraint: Some(Constraint::Regex("7".into())), ..params(&lm, 4) };
    impossible.sampling.logit_bias.push((seven, f32::NEG_INFINITY));
    let fine = params(&lm, 6);
    let healthy = prompt(&lm, "Hello there");
    let want = alone(&lm, opts, &healthy, &fine);

    let mut scheduler = Scheduler::new(lm.clone(), opts);
    scheduler.start(1, &prompt(&lm, "Seven?"), &impossible).unwrap();
    scheduler.start(2, &healthy, &fine).unwrap();
    assert!(scheduler.start(3, &healthy, &fine).is_err(), "both slots are busy");
    let mut log = Vec::new();
    let mut outcomes = Vec::new();
    while scheduler.running() > 0 {
        outcomes.extend(scheduler.step(&mut record(&mut log)));
    }
    outcomes.sort_by_key(|(id, _)| *id);
    assert!(
        matches!(&outcomes[0], (1, Err(Failure::Invalid(m))) if m.contains("allows no token")),
        "{outcomes:?}"
    );
    assert!(outcomes[1].1.is_ok());
    assert_eq!(streamed(&log, 2), want);
}

#[test]
fn a_cancelled_request_frees_its_slot() {
    let lm = lm();
    let mut scheduler = Scheduler::new(lm.clone(), options(1, 0, DEFAULT_PREFILL_CHUNK));
    let p = params(&lm, 50);
    scheduler.start(1, &prompt(&lm, "Long answer"), &p).unwrap();
    scheduler.step(&mut |_, _| {});
    scheduler.step(&mut |_, _| {});
    let reply = scheduler.cancel(1).expect("running");
    assert_eq!(reply.finish_reason, qwenrt::FinishReason::Cancelled);
    assert!(scheduler.cancel(1).is_none());
    assert_eq!(scheduler.running(), 0);
    scheduler.start(2, &prompt(&lm, "Next"), &p).unwrap();
}
