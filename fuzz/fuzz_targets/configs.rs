//! `config.json` and the processor configs: any text is a validated config or an error, never a
//! panic, an abort or an absurd allocation.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qwenrt::vision::{ImagePreprocessorConfig, VideoPreprocessorConfig};
use qwenrt::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = ModelConfig::from_json_str(text, Path::new("config.json")) {
        // What loading derives from a valid config must be computable.
        let _ = (config.linear_conv_dim(), config.layer_types.len(), config.vocab_size());
    }
    let dir = std::env::temp_dir().join(format!("qwenrt-fuzz-configs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("preprocessor_config.json");
    std::fs::write(&path, text).unwrap();
    if let Ok(config) = ImagePreprocessorConfig::from_file(&path) {
        let _ = config.pixel_bounds();
    }
    let _ = VideoPreprocessorConfig::from_file(&path);
});
