//! Speculative decoding with the MTP head: the draft against a PyTorch reference built on
//! transformers' modules (`scripts/make_fixtures.py`, `mtp_reference`), and verification with
//! rollback against plain decoding.

mod common;

use common::{fixture_model, max_abs_diff, std_dev, Expected};
use qwenrt::sampling::argmax;
use qwenrt::{Logits, Model};

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
