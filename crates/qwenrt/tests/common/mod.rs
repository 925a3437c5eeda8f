//! Shared helpers for integration tests: fixture paths and reference tensors.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

#[allow(unused_imports)] // each test file uses some of them
pub use qwenrt_test_support::{
    copy_to_temp, fixture_model, generated_qwen3_tokenizer, generated_tokenizer, workspace_root,
};

/// Reference outputs recorded by `scripts/make_fixtures.py`.
pub struct Expected {
    tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    pub meta: serde_json::Value,
}

impl Expected {
    /// `expected.safetensors` with `expected.json` as its metadata.
    pub fn load(model_dir: &Path) -> Self {
        let meta = serde_json::from_str(
            &std::fs::read_to_string(model_dir.join("expected.json")).expect("expected.json"),
        )
        .expect("valid expected.json");
        Expected { meta, ..Self::load_tensors(&model_dir.join("expected.safetensors")) }
    }

    /// Any reference file, with its safetensors header metadata as `meta`.
    pub fn load_tensors(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("valid safetensors header");
        let meta = serde_json::to_value(header.metadata()).unwrap();
        let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, (view.dtype(), view.shape().to_vec(), view.data().to_vec())))
            .collect();
        Expected { tensors, meta }
    }

    /// Names of all reference tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> &[usize] {
        &self.tensors.get(name).unwrap_or_else(|| panic!("no reference tensor {name}")).1
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        let (dtype, _, data) = self.tensors.get(name).unwrap_or_else(|| panic!("no reference tensor {name}"));
        assert_eq!(*dtype, Dtype::F32, "{name}");
        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        let (dtype, _, data) = self.tensors.get(name).unwrap_or_else(|| panic!("no reference tensor {name}"));
        match dtype {
            Dtype::I32 => {
                data.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32).collect()
            }
            Dtype::I64 => {
                data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect()
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    }

    /// Prompt indices recorded in the file (`prompt{i}.ids`).
    pub fn prompts(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("prompt")?.strip_suffix(".ids")?.parse().ok())
            .collect();
        v.sort();
        v
    }

    /// The `prompts` entry of expected.json for prompt `i`.
    pub fn prompt_meta(&self, i: usize) -> &serde_json::Value {
        let name = format!("prompt{i}");
        self.meta["prompts"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("expected.json has no entry for {name}"))
    }

    /// Prompts without images (images need the vision tower, which these tests do not cover).
    pub fn text_prompts(&self) -> Vec<usize> {
        self.prompts()
            .into_iter()
            .filter(|&i| !self.prompt_meta(i)["kind"].as_str().unwrap_or("").contains("image"))
            .collect()
    }
}

pub fn std_dev(x: &[f32]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).fold(0.0, f64::max)
}

/// tiny-vl with the generated tokenizer, loaded once per test binary.
pub fn tiny_vl_lm() -> std::sync::Arc<qwenrt::LanguageModel> {
    static LM: std::sync::OnceLock<std::sync::Arc<qwenrt::LanguageModel>> = std::sync::OnceLock::new();
    LM.get_or_init(|| {
        let dir = qwenrt_test_support::tiny_vl_folder("shared");
        std::sync::Arc::new(qwenrt::LanguageModel::load(&dir).unwrap())
    })
    .clone()
}
