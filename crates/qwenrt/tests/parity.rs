//! Parity with transformers on tiny random-weight Qwen3.5 models (`scripts/make_fixtures.py`):
//! logits at every position, the logits of each decode step, 64 greedy tokens, and the output of
//! every decoder module on the way.

mod common;

use common::{fixture_model, max_abs_diff, std_dev, Expected};
use qwenrt::{generate, GenerateOptions, Logits, Model, SamplingParams};

/// Logits must match within this fraction of the reference logits' standard deviation.
const TOLERANCE: f64 = 1e-3;

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, sampling: SamplingParams::greedy(), stop_ids: vec![] }
}

#[test]
fn tiny_causal_logits_at_every_position_match_transformers() {
    let dir = fixture_model("tiny-causal");
    let model = Model::load(&dir).unwrap();
    let expected = Expected::load(&dir);
    let vocab = model.vocab_size();
    let prompts = expected.prompts();
    assert!(prompts.len() >= 5, "fixture has too few prompts");
    for i in prompts {
        let ids = expected.ids(&format!("prompt{i}.ids"));
        let want = expected.f32(&format!("prompt{i}.logits"));
        assert_eq!(want.len(), ids.len() * vocab);
        let mut got = vec![0.0f32; want.len()];
        let mut state = model.new_state();
        model
            .forward_all(&mut state, &ids, |pos, logits| {
                got[pos * vocab..(pos + 1) * vocab].copy_from_slice(logits)
            })
            .unwrap();
        let (err, std) = (max_abs_diff(&got, &want), std_dev(&want));
        eprintln!(
            "tiny-causal prompt{i} ({} tokens): max |Δlogit| {err:.3e}, logit std {std:.3}, ratio {:.2e}",
            ids.len(),
            err / std
        );
        assert!(err <= TOLERANCE * std, "prompt{i}: max abs error {err} > {TOLERANCE} × std {std}");

        // The last-position path (generation's) agrees with the all-positions path.
        let mut state = model.new_state();
        let last = model.forward(&mut state, &ids, Logits::Last).unwrap();
        let err_last = max_abs_diff(last, &want[(ids.len() - 1) * vocab..]);
        assert!(err_last <= TOLERANCE * std, "prompt{i}: last-position error {err_last}");
    }
}

/// Each module's output (the references are transformers' forward hooks) matches, in the order
/// the forward pass makes them. A failure names the first module that strays, which is where a
/// parity bug lives, rather than only the logits downstream of it.
#[test]
fn tiny_causal_activations_match_transformers_module_by_module() {
    let dir = fixture_model("tiny-causal");
    let model = Model::load(&dir).unwrap();
    let references = Expected::load_tensors(&dir.join("activations.safetensors"));
    let prompt = references.meta["prompt"].as_str().expect("activations.safetensors names its prompt");
    let ids = Expected::load(&dir).ids(&format!("{prompt}.ids"));
    let mut seen: Vec<(String, Vec<f32>)> = Vec::new();
    let mut state = model.new_state();
    model
        .forward_traced(&mut state, &ids, Logits::Last, &mut |activation, rows| {
            seen.push((model.activation_name(activation), rows.to_vec()))
        })
        .unwrap();
    let layers = model.config().text.num_hidden_layers;
    assert_eq!(seen.len(), 2 + 3 * layers, "embeddings, 3 per layer, final norm");
    let mut unseen: Vec<&str> = references.names().collect();
    unseen.retain(|name| !seen.iter().any(|(n, _)| n == name));
    assert!(unseen.is_empty(), "no activation of qwenrt's is named {unseen:?}");
    for (name, got) in &seen {
        let want = references.f32(name);
        assert_eq!(got.len(), want.len(), "{name}: {} values, reference has {}", got.len(), want.len());
        let (err, std) = (max_abs_diff(got, &want), std_dev(&want));
        assert!(
            err <= TOLERANCE * std,
            "first activation to stray from transformers: {name}, max abs error {err:.3e} > {TOLERANCE} × std {std:.3e}"
        );
    }
}

#[test]
fn tiny_causal_greedy_tokens_match_transformers() {
    let dir = fixture_model("tiny-causal");
    let model = Model::load(&dir).unwrap();
    let expected = Expected::load(&dir);
    for i in expected.prompts() {
        let ids = expected.ids(&format!("prompt{i}.ids"));
        let want = expected.ids(&format!("prompt{i}.greedy"));
        let mut state = model.new_state();
        let got = generate(&model, &mut state, &ids, &greedy(want.len()), |_| true).unwrap();
        assert_eq!(got.tokens, want, "prompt{i} ({} tokens)", ids.len());
    }
}

#[test]
fn tiny_causal_decode_step_logits_match_transformers() {
    let dir = fixture_model("tiny-causal");
    let model = Model::load(&dir).unwrap();
    let expected = Expected::load(&dir);
    let vocab = model.vocab_size();
    let mut checked = 0;
    for i in expected.prompts() {
        let name = format!("prompt{i}.decode_logits");
        if !expected.has(&name) {
            continue;
        }
        let ids = expected.ids(&format!("prompt{i}.ids"));
        let greedy_ids = expected.ids(&format!("prompt{i}.greedy"));
        let want = expected.f32(&name);
        let steps = want.len() / vocab;
        let std = std_dev(&want);
        let mut state = model.new_state();
        let mut logits = model.forward(&mut state, &ids, Logits::Last).unwrap().to_vec();
        let mut worst: f64 = 0.0;
        for step in 0..steps {
            let err = max_abs_diff(&logits, &want[step * vocab..(step + 1) * vocab]);
            worst = worst.max(err);
            assert!(
                err <= TOLERANCE * std,
                "prompt{i} decode step {step}: error {err} > {TOLERANCE} × {std}"
            );
            if step + 1 < steps {
                logits = model.forward(&mut state, &[greedy_ids[step]], Logits::Last).unwrap().to_vec();
            }
        }
        eprintln!(
            "tiny-causal prompt{i}: {steps} decode steps, worst max |Δlogit| {worst:.3e} (std {std:.3})"
        );
        checked += 1;
    }
    assert!(checked > 0, "no decode logits in the fixture");
}

#[test]
fn tiny_vl_checkpoint_layout_matches_transformers() {
    let dir = fixture_model("tiny-vl");
    let model = Model::load(&dir).unwrap();
    let expected = Expected::load(&dir);
    for i in expected.text_prompts() {
        let ids = expected.ids(&format!("prompt{i}.ids"));
        let want = expected.f32(&format!("prompt{i}.last_logits"));
        let std = std_dev(&want);
        let mut state = model.new_state();
        let got = model.forward(&mut state, &ids, Logits::Last).unwrap();
        let err = max_abs_diff(got, &want);
        eprintln!(
            "tiny-vl prompt{i} ({} tokens): max |Δlogit| {err:.3e}, std {std:.3}, ratio {:.2e}",
            ids.len(),
            err / std
        );
        assert!(err <= TOLERANCE * std, "prompt{i}: error {err} > {TOLERANCE} × std {std}");

        let want_greedy = expected.ids(&format!("prompt{i}.greedy"));
        let mut state = model.new_state();
        let got = generate(&model, &mut state, &ids, &greedy(want_greedy.len()), |_| true).unwrap();
        assert_eq!(got.tokens, want_greedy, "prompt{i} greedy tokens");
    }
}
