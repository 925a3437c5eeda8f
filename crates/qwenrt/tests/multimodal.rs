//! Images and videos through the whole model: tiny-vl (a random `Qwen3_5ForConditionalGeneration`
//! with a one-block tower) against transformers' float32 run of a two-turn chat with three images
//! and a video (`fixtures/vision/prompt.safetensors`, written by `scripts/make_vision_fixtures.py`),
//! then what the runtime adds: prefill in pieces, decode after an image, snapshots, batches, and
//! chat sessions whose prompt cache must never confuse two pictures.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{max_abs_diff, std_dev, workspace_root};
use qwenrt::chat::{ContentPart, Message};
use qwenrt::vision::{ImageInput, Prompt, RgbImage, VideoInput};
use qwenrt::{ChatParams, ChatSession, Event, LanguageModel, Logits, SamplingParams, SessionState};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

fn vision_fixtures() -> PathBuf {
    workspace_root().join("fixtures/vision")
}

/// tiny-vl with the generated tokenizer, in a temporary folder.
fn tiny_vl_folder(tag: &str) -> PathBuf {
    qwenrt_test_support::tiny_vl_folder(tag)
}

fn load() -> Arc<LanguageModel> {
    Arc::new(LanguageModel::load(&tiny_vl_folder("multimodal")).unwrap())
}

/// Tensors of a reference file.
struct Reference(HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>);

impl Reference {
    fn load(name: &str) -> Self {
        let bytes = std::fs::read(vision_fixtures().join(name)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        Reference(
            st.tensors()
                .into_iter()
                .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
                .collect(),
        )
    }

    fn get(&self, name: &str, dtype: Dtype) -> (&[usize], &[u8]) {
        let (d, shape, data) = self.0.get(name).unwrap_or_else(|| panic!("no reference tensor {name}"));
        assert_eq!(*d, dtype, "{name}");
        (shape, data)
    }

    fn i32(&self, name: &str) -> Vec<i64> {
        let (_, data) = self.get(name, Dtype::I32);
        data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect()
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        self.i32(name).into_iter().map(|v| v as u32).collect()
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let (_, data) = self.get(name, Dtype::F32);
        data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    /// `[H, W, 3]` uint8.
    fn image(&self, name: &str) -> RgbImage {
        let (shape, data) = self.get(name, Dtype::U8);
        RgbImage::new(shape[1], shape[0], data.to_vec()).unwrap()
    }
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(vision_fixtures().join("expected.json")).unwrap()).unwrap()
}

/// The fixture's attachments: the PNGs and the GIF from their files (their decoders are
/// lossless, so the pixels are transformers'), the JPEG as transformers decoded and resized it
/// (zune-jpeg rounds differently from libjpeg-turbo; at its resized size the resize is the
/// identity).
fn fixture_media() -> (Vec<ImageInput>, VideoInput) {
    let reference = Reference::load("expected.safetensors");
    let images = vec![
        ImageInput::open(&vision_fixtures().join("a_small.png")).unwrap(),
        ImageInput::from_rgb(reference.image("image1.resized")).unwrap(),
        ImageInput::open(&vision_fixtures().join("c_tall.png")).unwrap(),
    ];
    let video = VideoInput::open(&vision_fixtures().join("v_clip.gif"), 1.0).unwrap();
    (images, video)
}

/// The conversation of `expected.json`'s `prompt.messages`.
fn fixture_messages() -> Vec<Message> {
    let (images, video) = fixture_media();
    vec![
        Message::user(vec![
            ContentPart::image(images[0].clone()),
            ContentPart::text("What is in this picture?"),
        ]),
        Message::assistant("A small test pattern."),
        Message::user(vec![
            ContentPart::image(images[1].clone()),
            ContentPart::image(images[2].clone()),
            ContentPart::video(video),
            ContentPart::text("Compare the two pictures with the clip."),
        ]),
    ]
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Prefills the whole prompt into a fresh state (every attachment through the tower) and
/// returns the last logits.
fn prefill(lm: &LanguageModel, state: &mut SessionState, prompt: &Prompt) -> Vec<f32> {
    if !prompt.has_media() {
        return lm.model.forward(state, prompt.ids(), Logits::Last).unwrap().to_vec();
    }
    let encoded = lm.vision().unwrap().encode(prompt, 0).unwrap();
    let piece = prompt.piece(&encoded, 0..prompt.len()).unwrap();
    lm.model.forward_embedded(state, &piece.input(), Logits::Last).unwrap().to_vec()
}

/// Greedy tokens after `logits`, `n` of them (no stop tokens).
fn greedy_after(lm: &LanguageModel, state: &mut SessionState, mut logits: Vec<f32>, n: usize) -> Vec<u32> {
    let mut tokens = Vec::new();
    for _ in 0..n {
        let next = argmax(&logits);
        tokens.push(next);
        logits = lm.model.forward(state, &[next], Logits::Last).unwrap().to_vec();
    }
    tokens
}

/// What a from-scratch run gives for `messages`: the greedy tokens up to a stop token (included)
/// or `n`, and the log-probability of the first.
fn reference(lm: &LanguageModel, messages: &[Message], n: usize) -> (Vec<u32>, f32) {
    let prompt = lm.prompt(messages, true, None).unwrap();
    let mut state = lm.model.new_state();
    let mut logits = prefill(lm, &mut state, &prompt);
    let first_logprob = log_softmax_at(&logits, argmax(&logits));
    let mut tokens = Vec::new();
    while tokens.len() < n {
        let next = argmax(&logits);
        tokens.push(next);
        if lm.stop_ids().contains(&next) {
            break;
        }
        logits = lm.model.forward(&mut state, &[next], Logits::Last).unwrap().to_vec();
    }
    (tokens, first_logprob)
}

fn log_softmax_at(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    logits[id as usize] - max - z.ln() as f32
}

fn greedy(max_tokens: usize) -> ChatParams {
    ChatParams { sampling: SamplingParams::greedy(), max_tokens, logprobs: Some(0), ..Default::default() }
}

/// The prompt of the fixture, its ids and positions, logits and greedy tokens, against
/// transformers (float32 weights and activations on both sides).
#[test]
fn prompt_logits_and_greedy_tokens_match_transformers() {
    let lm = load();
    let reference = Reference::load("prompt.safetensors");
    let meta = meta();
    let messages = fixture_messages();

    let text = lm.render_chat(&messages, true, None).unwrap();
    assert_eq!(text, meta["prompt"]["text"].as_str().unwrap());
    assert_eq!(lm.encode(&text).unwrap(), reference.ids("prompt.ids"));

    let prompt = lm.prompt(&messages, true, None).unwrap();
    let want_ids = reference.ids("prompt.expanded_ids");
    assert_eq!(prompt.ids(), want_ids, "expanded ids");
    assert_eq!(prompt.media_counts(), (3, 1));
    let positions = reference.i32("prompt.position_ids");
    let len = want_ids.len();
    for (i, p) in prompt.positions().unwrap().iter().enumerate() {
        let want = [positions[i], positions[len + i], positions[2 * len + i]];
        assert_eq!(*p, want, "position of token {i}");
    }
    let rope_delta = reference.i32("prompt.rope_delta")[0];
    assert_eq!(prompt.rope_delta_at(len), rope_delta);

    let mut state = lm.model.new_state();
    let logits = prefill(&lm, &mut state, &prompt);
    assert_eq!(state.rope_delta(), rope_delta);
    let want = reference.f32("prompt.last_logits");
    let (diff, std) = (max_abs_diff(&logits, &want), std_dev(&want));
    eprintln!("tiny-vl f32, image prompt of {len} tokens: last logits max|diff| {diff:.3e} (std {std:.3})");
    assert!(diff < 1e-3, "max |diff| {diff}");

    let want_greedy = reference.ids("prompt.greedy");
    let tokens = greedy_after(&lm, &mut state, logits, want_greedy.len());
    assert_eq!(tokens, want_greedy, "greedy tokens after the image prompt");

    // The same through a chat session.
    let mut session = ChatSession::new(lm.clone());
    session.set_messages(messages[..2].to_vec());
    let params = ChatParams { logprobs: None, ..greedy(want_greedy.len()) };
    let reply = session.send(messages[2].clone(), &params, |_| {}).unwrap();
    assert_eq!(reply.tokens, want_greedy);
    assert_eq!(reply.usage.prompt_tokens, len);
}

/// An image prompt longer than one prefill batch (512 tokens), with an image across the batch
/// boundary: one call, pieces cut inside an image and inside the video, a restored state
/// whose first image is encoded from its middle, and one token at a time all agree.
#[test]
fn long_prompts_are_prefilled_in_pieces_cut_anywhere() {
    let lm = load();
    let vision = lm.vision().unwrap();
    let (images, video) = fixture_media();
    let (a, c) = (images[0].clone(), images[2].clone());
    let build = |words: usize| {
        let text = format!(
            "<|im_start|>user\n{}<|vision_start|><|image_pad|><|vision_end|>and a clip \
             <|vision_start|><|video_pad|><|vision_end|>and <|vision_start|><|image_pad|><|vision_end|>\
             What now?<|im_end|>\n<|im_start|>assistant\n",
            "word ".repeat(words)
        );
        lm.encode_prompt(&text, &[a.clone(), c.clone()], std::slice::from_ref(&video)).unwrap()
    };
    let image_pad = vision.tokens().image_pad;
    let first_pad = |p: &Prompt| p.ids().iter().position(|&id| id == image_pad).unwrap();
    // Put the first image (70 tokens) across token 512.
    let mut words = 480;
    let mut prompt = build(words);
    for _ in 0..4 {
        let start = first_pad(&prompt);
        if (480..500).contains(&start) {
            break;
        }
        words = (words as i64 + 490 - start as i64) as usize;
        prompt = build(words);
    }
    let start = first_pad(&prompt);
    assert!(start < 512 && start + 70 > 512, "first image at {start}");
    let video_pad = vision.tokens().video_pad;
    let video_at = prompt.ids().iter().position(|&id| id == video_pad).unwrap();

    let mut whole = lm.model.new_state();
    let want = prefill(&lm, &mut whole, &prompt);

    // Pieces: inside the first image, inside the video's first run, the rest.
    let encoded = vision.encode(&prompt, 0).unwrap();
    let cuts = [0, start + 10, video_at + 3, prompt.len()];
    let mut pieces = lm.model.new_state();
    let mut got = Vec::new();
    let mut snapshot = None;
    for w in cuts.windows(2) {
        let piece = prompt.piece(&encoded, w[0]..w[1]).unwrap();
        got = lm.model.forward_embedded(&mut pieces, &piece.input(), Logits::Last).unwrap().to_vec();
        assert_eq!(pieces.rope_delta(), prompt.rope_delta_at(w[1]));
        snapshot.get_or_insert_with(|| pieces.snapshot());
    }
    let diff = max_abs_diff(&want, &got);
    assert!(diff < 1e-3, "pieces: {diff}");

    // A state restored inside the first image: the tower's rows for its first 10 tokens are
    // skipped, whether encoded from there or advanced there.
    let snapshot = snapshot.unwrap();
    assert_eq!(snapshot.len(), start + 10);
    let from_middle = vision.encode(&prompt, start + 10).unwrap();
    let mut advanced = vision.encode(&prompt, 0).unwrap();
    advanced.advance(&prompt, start + 10).unwrap();
    let mut results = Vec::new();
    for encoded in [&from_middle, &advanced] {
        let mut state = lm.model.new_state();
        state.restore(&snapshot).unwrap();
        assert_eq!(state.rope_delta(), prompt.rope_delta_at(start + 10));
        let piece = prompt.piece(encoded, start + 10..prompt.len()).unwrap();
        results.push(lm.model.forward_embedded(&mut state, &piece.input(), Logits::Last).unwrap().to_vec());
    }
    assert_eq!(results[0], results[1]);
    let diff = max_abs_diff(&want, &results[0]);
    assert!(diff < 1e-3, "restored: {diff}");
    assert!(prompt.piece(&from_middle, 0..5).is_err(), "rows before `from` were not encoded");

    // Token by token (the recurrent decode path at every position).
    let mut stepped = lm.model.new_state();
    for i in 0..prompt.len() {
        let piece = prompt.piece(&encoded, i..i + 1).unwrap();
        let logits = if i + 1 == prompt.len() { Logits::Last } else { Logits::None };
        got = lm.model.forward_embedded(&mut stepped, &piece.input(), logits).unwrap().to_vec();
    }
    let diff = max_abs_diff(&want, &got);
    eprintln!("{}-token image prompt: token by token vs one call max|diff| {diff:.2e}", prompt.len());
    assert!(diff < 1e-3, "token by token: {diff}");
}

/// Decoding continues at `cache_len + rope_delta`; snapshots keep the delta, `reset` clears
/// it, and a batch of decode steps uses each state's own.
#[test]
fn decode_positions_follow_the_rope_delta_through_snapshots_and_batches() {
    let lm = load();
    let prompt = lm.prompt(&fixture_messages(), true, None).unwrap();
    let mut state = lm.model.new_state();
    let logits = prefill(&lm, &mut state, &prompt);
    let snapshot = state.snapshot();
    assert_eq!(snapshot.rope_delta(), prompt.rope_delta_at(prompt.len()));
    assert!(snapshot.rope_delta() < 0);
    let first = greedy_after(&lm, &mut state, logits.clone(), 5);

    let mut restored = lm.model.new_state();
    restored.restore(&snapshot).unwrap();
    assert_eq!(restored.rope_delta(), snapshot.rope_delta());
    assert_eq!(greedy_after(&lm, &mut restored, logits.clone(), 5), first, "restored state decodes alike");
    restored.reset();
    assert_eq!(restored.rope_delta(), 0);

    // One decode step for an image conversation and a text one, batched and alone.
    let text = lm.prompt(&[Message::user("Hello there.")], true, None).unwrap();
    let mut states = [lm.model.new_state(), lm.model.new_state()];
    states[0].restore(&snapshot).unwrap();
    let text_logits = prefill(&lm, &mut states[1], &text);
    let next = [argmax(&logits), argmax(&text_logits)];
    let mut alone = Vec::new();
    for (i, s) in states.iter().enumerate() {
        let mut copy = lm.model.new_state();
        copy.restore(&s.snapshot()).unwrap();
        alone.push(lm.model.forward(&mut copy, &[next[i]], Logits::Last).unwrap().to_vec());
    }
    let [a, b] = &mut states;
    let mut refs = vec![a, b];
    let inputs: [&[u32]; 2] = [&next[..1], &next[1..]];
    let batched = lm.model.forward_batch(&mut refs, &inputs).unwrap().to_vec();
    let vocab = lm.model.vocab_size();
    for (i, want) in alone.iter().enumerate() {
        let diff = max_abs_diff(want, &batched[i * vocab..(i + 1) * vocab]);
        assert!(diff < 1e-4, "sequence {i}: {diff}");
    }
}

fn user_with(image: &ImageInput, text: &str) -> Message {
    Message::user(vec![ContentPart::image(image.clone()), ContentPart::text(text)])
}

/// Images in earlier turns are not encoded or prefilled again: the saved states cover them, and
/// the answers are those of a full prefill.
#[test]
fn images_in_earlier_turns_come_back_with_saved_states() {
    let lm = load();
    let (images, _) = fixture_media();
    let params = greedy(6);
    let turns = [
        user_with(&images[0], "What is in this picture?"),
        Message::user("And its colours?"),
        user_with(&images[2], "And this one?"),
    ];
    let mut session = ChatSession::new(lm.clone());
    for (i, message) in turns.iter().enumerate() {
        let mut messages = session.messages().to_vec();
        messages.push(message.clone());
        let prompt = lm.prompt(&messages, true, None).unwrap();
        let (want, want_logprob) = reference(&lm, &messages, params.max_tokens);
        let reply = session.send(message.clone(), &params, |_| {}).unwrap();
        assert_eq!(reply.tokens, want, "turn {i}");
        assert!((reply.logprobs[0].logprob - want_logprob).abs() < 1e-4, "turn {i}");
        let first_image_end = prompt.media_marks()[0].start + 70;
        if i > 0 {
            assert!(
                reply.usage.cached_prompt_tokens > first_image_end,
                "turn {i}: {} of {} cached",
                reply.usage.cached_prompt_tokens,
                reply.usage.prompt_tokens
            );
        }
        session.prepare(None).unwrap();
    }
}

/// Two pictures of one size expand to the same tokens: neither the live state nor a saved one
/// computed with the first may serve the second.
#[test]
fn another_picture_at_the_same_tokens_is_never_taken_for_the_first() {
    let lm = load();
    let (images, _) = fixture_media();
    let x = images[0].clone();
    let inverted = RgbImage::new(x.width(), x.height(), x.image().data.iter().map(|v| 255 - v).collect());
    let y = ImageInput::from_rgb(inverted.unwrap()).unwrap();
    assert_ne!(x.hash(), y.hash());
    let params = greedy(4);
    let ask = |image: &ImageInput| user_with(image, "Describe it.");
    let (want_x, logprob_x) = reference(&lm, &[ask(&x)], 4);
    let (want_y, logprob_y) = reference(&lm, &[ask(&y)], 4);
    assert_ne!(logprob_x, logprob_y, "the pictures must make a difference for the test to mean something");

    let mut session = ChatSession::new(lm.clone());
    let reply = session.send(ask(&x), &params, |_| {}).unwrap();
    assert_eq!(reply.tokens, want_x);
    let image_start = lm.prompt(&[ask(&x)], true, None).unwrap().media_marks()[0].start;
    let check = |reply: &qwenrt::Reply, want: &[u32], logprob: f32, what: &str| {
        assert_eq!(reply.tokens, want, "{what}");
        assert!((reply.logprobs[0].logprob - logprob).abs() < 1e-4, "{what}");
    };

    // The live state holds x's prompt: same ids, other picture.
    session.set_messages(Vec::new());
    let reply = session.send(ask(&y), &params, |_| {}).unwrap();
    check(&reply, &want_y, logprob_y, "live state");
    assert!(reply.usage.cached_prompt_tokens <= image_start, "{:?}", reply.usage);

    // The cache holds states after x's and after y's prompt header; each serves its own.
    for (image, want, logprob) in [(&x, &want_x, logprob_x), (&y, &want_y, logprob_y)] {
        session.reset();
        let reply = session.send(ask(image), &params, |_| {}).unwrap();
        check(&reply, want, logprob, "saved state");
        assert!(reply.usage.cached_prompt_tokens > image_start + 70, "{:?}", reply.usage);
    }
}

/// A turn whose prompt has images goes through `advance_many` next to a text turn.
#[test]
fn batched_turns_mix_image_and_text_prompts() {
    let lm = load();
    let (images, _) = fixture_media();
    let params = greedy(5);
    let conversations = [vec![user_with(&images[2], "What is it?")], vec![Message::user("Hi!")]];
    let mut sessions: Vec<ChatSession> = conversations.iter().map(|_| ChatSession::new(lm.clone())).collect();
    let mut turns = Vec::new();
    for (session, messages) in sessions.iter_mut().zip(&conversations) {
        let prompt = lm.prompt(messages, true, None).unwrap();
        turns.push(session.begin_prompt(&prompt, &params).unwrap());
    }
    let mut session_refs: Vec<&mut ChatSession> = sessions.iter_mut().collect();
    let mut turn_refs: Vec<&mut qwenrt::Turn> = turns.iter_mut().collect();
    while ChatSession::advance_many(&mut session_refs, &mut turn_refs, |_, _| {}).unwrap() > 0 {}
    for (i, turn) in turns.into_iter().enumerate() {
        let reply = turn.finish(&mut |_: Event<'_>| {});
        assert_eq!(reply.tokens, reference(&lm, &conversations[i], 5).0, "conversation {i}");
    }
}

/// With thinking on and a budget of 0 the turn closes the thought right after the prompt: those
/// tokens follow the image prompt at text positions.
#[test]
fn a_zero_thinking_budget_closes_the_thought_after_an_image_prompt() {
    let lm = load();
    let (images, _) = fixture_media();
    let messages = [user_with(&images[0], "Think about it.")];
    let params = ChatParams { enable_thinking: Some(true), max_thinking_tokens: Some(0), ..greedy(4) };
    let reply = ChatSession::new(lm.clone()).send(messages[0].clone(), &params, |_| {}).unwrap();

    let prompt = lm.prompt(&messages, true, Some(true)).unwrap();
    assert!(lm.tokenizer.decode(prompt.ids()).unwrap().ends_with("<think>\n"));
    let mut state = lm.model.new_state();
    prefill(&lm, &mut state, &prompt);
    let close = lm.encode("\n</think>\n\n").unwrap();
    let logits = lm.model.forward(&mut state, &close, Logits::Last).unwrap().to_vec();
    let mut want = close.clone();
    want.extend(greedy_after(&lm, &mut state, logits, 4));
    // Four sampled tokens after the forced ones, fewer if one of them is a stop token.
    assert!(reply.tokens.len() > close.len() && reply.tokens.len() <= want.len(), "{:?}", reply.tokens);
    assert_eq!(reply.tokens, want[..reply.tokens.len()]);
}

#[test]
fn bad_inputs_give_clear_errors() {
    let lm = load();
    let (images, _) = fixture_media();
    let err = |r: qwenrt::Result<_>| -> String {
        let e: qwenrt::Error = r.map(|_: ()| ()).unwrap_err();
        e.to_string()
    };

    let missing = vision_fixtures().join("no-such-picture.png");
    let e = err(ImageInput::open(&missing).map(|_| ()));
    assert!(e.contains("no-such-picture.png"), "{e}");
    let e = err(ImageInput::open_with_limit(&vision_fixtures().join("a_small.png"), 1000).map(|_| ()));
    assert!(e.contains("exceeds the limit of 1000 pixels"), "{e}");
    let e = err(ImageInput::decode(b"plain text", "upload", 1 << 20).map(|_| ()));
    assert!(e.contains("upload") && e.contains("not a PNG, JPEG, WebP or GIF"), "{e}");
    // A header claiming a huge picture is refused before anything is allocated.
    let e = err(ImageInput::decode(b"GIF89a not really", "upload", 1 << 20).map(|_| ()));
    assert!(e.contains("upload") && e.contains("exceeds the limit"), "{e}");

    let e = err(lm.encode_prompt("no placeholder here", &images[..1], &[]).map(|_| ()));
    assert!(e.contains("0 <|image_pad|> placeholder(s) but 1 image(s)"), "{e}");

    // A client's raw JSON image part carries no pixels.
    let mut raw = serde_json::Map::new();
    raw.insert("type".into(), "image_url".into());
    raw.insert("image_url".into(), serde_json::json!({"url": "https://example.com/cat.png"}));
    let message = Message::user(vec![ContentPart::Other(raw), ContentPart::text("What is this?")]);
    let mut session = ChatSession::new(lm.clone());
    let e = err(session.send(message, &greedy(2), |_| {}).map(|_| ()));
    assert!(e.contains("raw JSON") && e.contains("ContentPart::Image"), "{e}");
    assert!(session.messages().is_empty(), "a refused message is not kept");

    // Wrong rows for the placeholders: refused before the state changes.
    let prompt = lm.prompt(&[user_with(&images[0], "Hi")], true, None).unwrap();
    let encoded = lm.vision().unwrap().encode(&prompt, 0).unwrap();
    let piece = prompt.piece(&encoded, 0..prompt.len()).unwrap();
    let mut input = piece.input();
    let short = &input.injections[0].rows[..12];
    let injections = [qwenrt::Injection { token: input.injections[0].token, rows: short }];
    input.injections = &injections;
    let mut state = lm.model.new_state();
    let e = err(lm.model.forward_embedded(&mut state, &input, Logits::Last).map(|_| ()));
    assert!(e.contains("occurs 70 times"), "{e}");
    assert!(state.is_empty());

    // A checkpoint without a tower reads text only.
    let dir = tiny_vl_folder("text-only");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json.as_object_mut().unwrap().remove("vision_config");
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let text_only = Arc::new(LanguageModel::load(&dir).unwrap());
    assert!(!text_only.has_vision());
    let mut session = ChatSession::new(text_only);
    let e = err(session.send(user_with(&images[0], "Hi"), &greedy(2), |_| {}).map(|_| ()));
    assert!(e.contains("no vision tower"), "{e}");
    assert!(session.send(Message::user("Hi"), &greedy(2), |_| {}).is_ok(), "text still works");
}

/// The template sees `{"type": "image"}`; a saved conversation names the files.
#[test]
fn attachments_serialize_as_template_parts() {
    let path: &Path = &vision_fixtures().join("a_small.png");
    let from_file = ImageInput::open(path).unwrap();
    let value = serde_json::to_value(ContentPart::image(from_file.clone())).unwrap();
    assert_eq!(value, serde_json::json!({"type": "image", "image": path.to_string_lossy()}));
    let in_memory = ImageInput::from_rgb(from_file.image().clone()).unwrap();
    assert_eq!(serde_json::to_value(ContentPart::image(in_memory.clone())).unwrap()["type"], "image");
    assert_eq!(in_memory, from_file, "same pixels");
    assert_eq!(in_memory.hash(), from_file.hash());
    let video = VideoInput::open(&vision_fixtures().join("v_clip.gif"), 1.0).unwrap();
    assert_eq!(serde_json::to_value(ContentPart::video(video)).unwrap()["type"], "video");
}
