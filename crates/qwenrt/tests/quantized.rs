//! Quantized and reduced-precision weights stay close to the f32 model, on the fixture whose
//! matrices are all quantizable (every row a whole number of 32-value blocks).
//!
//! This fixture is built to be hypersensitive (every component must move the logits), so its
//! bounds are far looser than what full-size models reach (BENCHMARKS.md has those figures):
//! even bf16 weights alone cost it 6e-4 of cosine. The bounds still catch a broken format (a
//! wrong nibble order or scale gives cosines near 0).

mod common;

use common::{fixture_model, Expected};
use qwenrt::quality::compare_logits;
use qwenrt::{LoadOptions, Model, WeightDtype};

#[test]
fn every_dtype_agrees_with_f32_within_its_bound() {
    let dir = fixture_model("tiny-causal");
    let expected = Expected::load(&dir);
    let reference = Model::load(&dir).unwrap();
    let tokens = expected.ids("prompt6.ids"); // 333 tokens
                                              // (dtype, min mean cosine, min top-1 agreement)
    for (dtype, cosine, top1) in [
        (WeightDtype::Bf16, 0.999, 0.9),
        (WeightDtype::F16, 0.99995, 0.99),
        (WeightDtype::Int8, 0.98, 0.7),
        (WeightDtype::Int4, 0.6, 0.1),
    ] {
        let model = Model::load_with(&dir, &LoadOptions::with_dtype(dtype)).unwrap();
        assert_eq!(model.weight_dtype(), dtype.name(), "matrices are held as {}", dtype.name());
        let a = compare_logits(&reference, &model, &tokens).unwrap();
        eprintln!(
            "{:>5}: mean cosine {:.6}, min {:.6}, top-1 {:.3} over {} positions",
            dtype.name(),
            a.mean_cosine,
            a.min_cosine,
            a.top1,
            a.positions
        );
        assert!(a.mean_cosine >= cosine, "{}: mean cosine {} < {cosine}", dtype.name(), a.mean_cosine);
        assert!(a.top1 >= top1, "{}: top-1 agreement {} < {top1}", dtype.name(), a.top1);
    }
}

#[test]
fn int4_keeps_an_int8_lm_head_and_bf16_maps_without_copy() {
    let dir = fixture_model("tiny-causal");
    let model = Model::load_with(&dir, &LoadOptions::with_dtype(WeightDtype::Int4)).unwrap();
    assert_eq!(model.lm_head_dtype(), "int8");
    let f32_model = Model::load(&dir).unwrap();
    let int4_bytes = model.weight_bytes() as f64;
    assert!(int4_bytes < 0.3 * f32_model.weight_bytes() as f64, "int4 should be well under a third of f32");
}
