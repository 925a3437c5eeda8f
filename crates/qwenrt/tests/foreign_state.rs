//! A state or snapshot made for one model, handed to another, is a typed error and never a
//! panic: every entry point checks the state's layout fingerprint before touching it.

mod common;

use common::fixture_model;
use qwenrt::{LoadOptions, Logits, Model, WeightDtype};

#[test]
fn every_fixture_model_refuses_every_other_models_state() {
    let models: Vec<(String, Model)> = ["tiny-causal", "tiny-vl", "tiny-embed"]
        .iter()
        .map(|name| (name.to_string(), Model::load(&fixture_model(name)).unwrap()))
        .chain(std::iter::once((
            // The same weights with an f16 KV cache instead of f32: another state layout.
            "tiny-causal int8".to_string(),
            Model::load_with(&fixture_model("tiny-causal"), &LoadOptions::with_dtype(WeightDtype::Int8))
                .unwrap(),
        )))
        .collect();
    let foreign = |e: qwenrt::Error| {
        let message = e.to_string();
        assert!(message.contains("another model"), "{message}");
    };
    for (a, model_a) in &models {
        for (b, model_b) in &models {
            let mut state = model_a.new_state();
            let fed = model_a.forward(&mut state, &[1, 2, 3], Logits::None);
            assert!(fed.is_ok(), "{a} on its own state");
            let snapshot = state.snapshot();
            if a == b {
                assert!(model_b.forward(&mut state, &[4], Logits::None).is_ok());
                continue;
            }
            let held = state.len();
            let what = format!("{a}'s state given to {b}");
            foreign(model_b.forward(&mut state, &[4], Logits::Last).map(drop).expect_err(&what));
            foreign(model_b.forward_all(&mut state, &[4, 5], |_, _| {}).expect_err(&what));
            foreign(model_b.forward_batch(&mut [&mut state], &[&[4]]).map(drop).expect_err(&what));
            foreign(model_b.last_hidden_batch(&mut [&mut state], &[&[4]]).map(drop).expect_err(&what));
            assert_eq!(state.len(), held, "{what}: the state was touched");
            let mut own = model_b.new_state();
            let restored = own.restore(&snapshot);
            assert!(restored.unwrap_err().to_string().contains("another model"), "{what}: snapshot");
            assert!(own.is_empty());
        }
    }
}
