//! Every kind of broken model folder gets an error that names the file and what is wrong.

mod common;

use std::path::Path;

use common::{copy_to_temp, fixture_model};
use qwenrt::{LanguageModel, Model};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// A tensor as raw parts: dtype, shape, little-endian bytes.
type RawTensor = (Dtype, Vec<usize>, Vec<u8>);

fn load_err(dir: &Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites `model.safetensors`, letting `edit` drop or replace tensors.
fn rewrite_weights(dir: &Path, edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<RawTensor>) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, RawTensor)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, v)| {
            edit(&name, v.dtype(), v.shape().to_vec(), v.data().to_vec()).map(|t| (name, t))
        })
        .collect();
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (name.clone(), TensorView::new(*dtype, shape.clone(), data).unwrap())
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

fn fresh(tag: &str) -> std::path::PathBuf {
    copy_to_temp(&fixture_model("tiny-causal"), tag)
}

#[test]
fn the_fixture_itself_loads() {
    Model::load(&fresh("ok")).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let dir = fresh("missing-tensor");
    rewrite_weights(&dir, |name, d, s, b| (name != "model.layers.0.linear_attn.A_log").then_some((d, s, b)));
    let e = load_err(&dir);
    assert!(e.contains("missing tensor `model.layers.0.linear_attn.A_log`"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn wrong_shape_names_file_tensor_and_expected_shape() {
    let dir = fresh("wrong-shape");
    rewrite_weights(&dir, |name, d, s, b| {
        if name == "model.layers.1.self_attn.k_norm.weight" {
            let n = s[0] - 1;
            Some((d, vec![n], b[..n * 4].to_vec()))
        } else {
            Some((d, s, b))
        }
    });
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors: tensor `model.layers.1.self_attn.k_norm.weight` has shape [31], expected [32]"), "{e}");
}

#[test]
fn config_that_contradicts_the_weights_is_caught_by_shape() {
    let dir = fresh("config-mismatch");
    edit_config(&dir, |v| v["intermediate_size"] = 100.into());
    let e = load_err(&dir);
    assert!(e.contains("mlp.gate_proj.weight` has shape [96, 64], expected [100, 64]"), "{e}");
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = fresh("dtype");
    rewrite_weights(&dir, |name, d, s, b| {
        if name == "model.norm.weight" {
            Some((Dtype::I32, s, b))
        } else {
            Some((d, s, b))
        }
    });
    let e = load_err(&dir);
    assert!(e.contains("tensor `model.norm.weight` has dtype I32"), "{e}");
}

#[test]
fn unknown_model_type_and_layer_type() {
    let dir = fresh("model-type");
    edit_config(&dir, |v| v["model_type"] = "mamba".into());
    let e = load_err(&dir);
    assert!(e.contains("config.json: unsupported model_type \"mamba\""), "{e}");

    let dir = fresh("layer-type");
    edit_config(&dir, |v| v["layer_types"][1] = "sliding_attention".into());
    let e = load_err(&dir);
    assert!(e.contains("layer_types[1] is \"sliding_attention\""), "{e}");
}

#[test]
fn truncated_weights_file() {
    let dir = fresh("truncated");
    let path = dir.join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors: not a valid safetensors file"), "{e}");
    assert!(e.contains("truncated"), "{e}");

    f.set_len(5).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("too short for a header"), "{e}");
}

#[test]
fn corrupt_header() {
    let dir = fresh("corrupt");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[8..40] {
        *b = b'#';
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors: not a valid safetensors file: corrupt JSON header"), "{e}");
}

#[test]
fn missing_files() {
    let dir = fresh("no-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json") && e.contains("No such file"), "{e}");

    let dir = fresh("no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("no model.safetensors"), "{e}");

    let dir = fresh("no-shard");
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn missing_tokenizer_is_reported_by_the_full_loader() {
    let dir = fresh("no-tokenizer");
    let e = match LanguageModel::load(&dir) {
        Ok(_) => panic!("loaded without a tokenizer"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("tokenizer.json"), "{e}");

    let e = match LanguageModel::load(&dir.join("does-not-exist")) {
        Ok(_) => panic!("loaded a folder that does not exist"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("model folder not found"), "{e}");
}
