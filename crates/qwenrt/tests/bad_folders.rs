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

/// Numbers that would abort, wrap or compute garbage are refused with their key.
#[test]
fn absurd_config_numbers_name_their_key() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "layers",
            Box::new(|v| {
                v["num_hidden_layers"] = 1_000_000_000u64.into();
                v.as_object_mut().unwrap().remove("layer_types");
            }),
            "num_hidden_layers is 1000000000; it must be 1 to 1024",
        ),
        ("vocab", Box::new(|v| v["vocab_size"] = (1u64 << 40).into()), "vocab_size is 1099511627776"),
        ("head-dim", Box::new(|v| v["head_dim"] = 4096.into()), "head_dim is 4096; it must be 1 to 512"),
        (
            "linear-head-dim",
            Box::new(|v| v["linear_value_head_dim"] = 100_000.into()),
            "linear_value_head_dim is 100000",
        ),
        // The sum wraps to 4, the value the check wants.
        (
            "mrope",
            Box::new(|v| v["rope_parameters"]["mrope_section"] = serde_json::json!([u64::MAX, 1, 4])),
            "mrope_section",
        ),
        ("eps", Box::new(|v| v["rms_norm_eps"] = 0.0.into()), "rms_norm_eps 0 must be a positive number"),
        ("eps-negative", Box::new(|v| v["rms_norm_eps"] = (-1e-6).into()), "rms_norm_eps"),
        ("theta", Box::new(|v| v["rope_parameters"]["rope_theta"] = (-1.0).into()), "rope_theta -1 must be"),
        (
            "rotary-factor",
            Box::new(|v| v["rope_parameters"]["partial_rotary_factor"] = 2.0.into()),
            "partial_rotary_factor 2 must be in (0, 1]",
        ),
    ];
    for (tag, edit, want) in cases {
        let dir = fresh(&format!("config-{tag}"));
        edit_config(&dir, edit);
        let e = load_err(&dir);
        assert!(e.contains("config.json") && e.contains(want), "{tag}: {e}");
    }
}

/// Only regular files are read: a FIFO or a device named as a config fails at once (opening a
/// FIFO would block), and a link loop is not taken for a missing file.
#[cfg(unix)]
#[test]
fn special_files_are_refused_not_read() {
    let dir = fresh("fifo-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(dir.join("config.json")).status().unwrap().success());
    let e = load_err(&dir);
    assert!(e.contains("config.json") && e.contains("a FIFO, not a regular file"), "{e}");

    let dir = fresh("device-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("a device, not a regular file"), "{e}");

    let dir = fresh("device-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("a device"), "{e}");

    let dir = qwenrt_test_support::tiny_vl_folder("loop-generation-config");
    let link = dir.join("generation_config.json");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&link, &link).unwrap();
    let e = match LanguageModel::load(&dir) {
        Ok(_) => panic!("loaded with a looping generation_config.json"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("generation_config.json") && !e.contains("No such file"), "{e}");
}

/// A shard named in the index is a file of the folder: nothing outside it is opened.
#[test]
fn shard_paths_stay_inside_the_folder() {
    for shard in ["../model.safetensors", "/etc/passwd", "sub/../../x.safetensors"] {
        let dir = fresh("shard-escape");
        let index = serde_json::json!({"weight_map": {"model.norm.weight": shard}});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let e = load_err(&dir);
        assert!(e.contains("is not a file name inside the model folder"), "{shard}: {e}");
    }
}

/// NaN or infinite weights are refused at load: norms and matrices that are quantized or
/// converted while their values are read, matrices used in place by a scan of their bits.
#[test]
fn non_finite_weights_are_refused() {
    use qwenrt::linear::{LoadOptions, WeightDtype};
    let poison = |target: &'static str, value: f32| {
        move |name: &str, d: Dtype, s: Vec<usize>, mut b: Vec<u8>| {
            if name == target {
                assert_eq!(d, Dtype::F32);
                b[4..8].copy_from_slice(&value.to_le_bytes());
            }
            Some((d, s, b))
        }
    };
    let dir = fresh("nan-norm");
    rewrite_weights(&dir, poison("model.layers.2.input_layernorm.weight", f32::NAN));
    let e = load_err(&dir);
    assert!(e.contains("`model.layers.2.input_layernorm.weight` holds a non-finite value"), "{e}");

    let matrix = "model.layers.3.mlp.down_proj.weight";
    let dir = fresh("nan-matrix");
    rewrite_weights(&dir, poison(matrix, f32::NAN));
    // F32 is the stored type: used in place, found by the scan.
    for dtype in [WeightDtype::Int8, WeightDtype::Int4, WeightDtype::Bf16, WeightDtype::F32] {
        let e = match Model::load_with(&dir, &LoadOptions::with_dtype(dtype)) {
            Ok(_) => panic!("{dtype:?}: loaded NaN weights"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(&format!("`{matrix}` holds a non-finite value")), "{dtype:?}: {e}");
    }

    // Stored as bf16 and used in place: an infinity (exponent all ones, mantissa zero).
    let dir = fresh("inf-bf16-matrix");
    rewrite_weights(&dir, |name, d, s, b| {
        if name != matrix {
            return Some((d, s, b));
        }
        let mut bf16: Vec<u8> = b
            .chunks_exact(4)
            .flat_map(|v| half::bf16::from_f32(f32::from_le_bytes([v[0], v[1], v[2], v[3]])).to_le_bytes())
            .collect();
        bf16[6..8].copy_from_slice(&half::bf16::INFINITY.to_le_bytes());
        Some((Dtype::BF16, s, bf16))
    });
    let e = match Model::load_with(&dir, &LoadOptions::with_dtype(WeightDtype::Bf16)) {
        Ok(_) => panic!("loaded an infinite bf16 weight"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(&format!("`{matrix}` holds a non-finite value")), "{e}");

    // Finite weights can still overflow: generation refuses the non-finite logits that result.
    let dir = fresh("huge-matrix");
    rewrite_weights(&dir, |name, d, s, b| {
        let b =
            if name == matrix { b.chunks_exact(4).flat_map(|_| f32::MAX.to_le_bytes()).collect() } else { b };
        Some((d, s, b))
    });
    let model = Model::load_with(&dir, &LoadOptions::with_dtype(WeightDtype::F32)).unwrap();
    let mut state = model.new_state();
    let options = qwenrt::GenerateOptions {
        max_tokens: 4,
        sampling: qwenrt::SamplingParams::greedy(),
        stop_ids: vec![],
    };
    let e = qwenrt::generate(&model, &mut state, &[1, 2, 3], &options, |_| true).unwrap_err().to_string();
    assert!(e.contains("non-finite logit"), "{e}");
}

/// Processor configs that would divide by zero, resize a picture to terapixels or loop over a
/// zero-sized patch are refused at load, naming the key.
#[test]
fn absurd_processor_configs_are_refused() {
    let cases = [
        ("preprocessor_config.json", r#"{"image_std": [0.0, 0.5, 0.5]}"#, "image_std"),
        ("preprocessor_config.json", r#"{"image_mean": [1e400, 0, 0]}"#, "preprocessor_config.json"),
        (
            "preprocessor_config.json",
            r#"{"size": {"shortest_edge": 10000000000000, "longest_edge": 100000000000000}}"#,
            "pixel bounds",
        ),
        ("preprocessor_config.json", r#"{"patch_size": 0}"#, "patch_size is 0"),
        ("preprocessor_config.json", r#"{"rescale_factor": -1}"#, "rescale_factor"),
        ("video_preprocessor_config.json", r#"{"merge_size": 100000}"#, "merge_size is 100000"),
        ("video_preprocessor_config.json", r#"{"image_std": [0.5, 0.5, 0]}"#, "image_std"),
    ];
    for (file, json, wanted) in cases {
        let dir = qwenrt_test_support::tiny_vl_folder("absurd-processor");
        std::fs::write(dir.join(file), json).unwrap();
        let e = match LanguageModel::load(&dir) {
            Ok(_) => panic!("{file} {json} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(file) && e.contains(wanted), "{file} {json}: {e}");
    }
}
