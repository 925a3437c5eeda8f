//! The vision parts of a model folder's configuration: `vision_config` and the vision token ids
//! of `config.json`, `preprocessor_config.json` (images) and `video_preprocessor_config.json`.
//!
//! Keys mirror the files; a key a file leaves out takes the default of the transformers class that
//! reads it (`Qwen3_5VisionConfig`, `Qwen2VLImageProcessor`, `Qwen3VLVideoProcessor`), so that a
//! folder means here what it means to transformers.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// `vision_config` of `config.json` (`Qwen3_5VisionConfig`). Field names are the config keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "defaults::depth")]
    pub depth: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::num_heads")]
    pub num_heads: usize,
    #[serde(default = "defaults::in_channels")]
    pub in_channels: usize,
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::merge_size")]
    pub spatial_merge_size: usize,
    #[serde(default = "defaults::temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "defaults::out_hidden_size")]
    pub out_hidden_size: usize,
    #[serde(default = "defaults::num_position_embeddings")]
    pub num_position_embeddings: usize,
    #[serde(default)]
    pub deepstack_visual_indexes: Vec<usize>,
    #[serde(default)]
    pub rope_parameters: Option<VisionRopeParameters>,
}

/// `vision_config.rope_parameters` (axial 2-D rotary).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionRopeParameters {
    #[serde(default = "defaults::vision_rope_theta")]
    pub rope_theta: f64,
}

/// The MLP activation of the vision blocks (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionActivation {
    /// `gelu_pytorch_tanh`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
    /// `gelu`: the exact `0.5 x (1 + erf(x / sqrt 2))`.
    GeluErf,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Values of one patch row: `in_channels * temporal_patch_size * patch_size^2` (1536 for Qwen3.5).
    pub fn patch_row_len(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Side of the square learned position table (48 for 2304 entries).
    pub fn position_grid_side(&self) -> usize {
        (self.num_position_embeddings as f64).sqrt().round() as usize
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters.as_ref().map_or(defaults::vision_rope_theta(), |r| r.rope_theta)
    }

    pub fn activation(&self) -> Result<VisionActivation> {
        match self.hidden_act.as_str() {
            "gelu_pytorch_tanh" => Ok(VisionActivation::GeluTanh),
            "gelu" => Ok(VisionActivation::GeluErf),
            other => Err(invalid(format!(
                "vision_config.hidden_act `{other}` is not supported (expected gelu_pytorch_tanh or gelu)"
            ))),
        }
    }

    /// Checks what the tower relies on; the message names the key.
    pub fn validate(&self) -> Result<()> {
        // Far above the published tower's sizes: a larger value is a corrupt file.
        let bounded = [
            ("depth", self.depth, 1024),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_heads", self.num_heads, 1024),
            ("patch_size", self.patch_size, 1024),
            ("spatial_merge_size", self.spatial_merge_size, 64),
            ("temporal_patch_size", self.temporal_patch_size, 64),
            ("out_hidden_size", self.out_hidden_size, 1 << 16),
            ("num_position_embeddings", self.num_position_embeddings, 1 << 20),
        ];
        if let Some((key, value, max)) = bounded.iter().find(|(_, v, max)| !(1..=*max).contains(v)) {
            return Err(invalid(format!("vision_config.{key} is {value}; it must be 1 to {max}")));
        }
        if self.in_channels != 3 {
            return Err(invalid(format!(
                "vision_config.in_channels is {}; only RGB (3) is supported",
                self.in_channels
            )));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(invalid(format!(
                "vision_config.hidden_size {} is not a multiple of num_heads {}",
                self.hidden_size, self.num_heads
            )));
        }
        // The 2-D rotary splits each head in halves, each half in (row, column) quarters.
        if !self.head_dim().is_multiple_of(4) {
            return Err(invalid(format!(
                "vision_config: head dim {} (hidden_size / num_heads) must be a multiple of 4 for the 2-D rotary",
                self.head_dim()
            )));
        }
        let side = self.position_grid_side();
        if side * side != self.num_position_embeddings {
            return Err(invalid(format!(
                "vision_config.num_position_embeddings {} is not a square grid",
                self.num_position_embeddings
            )));
        }
        if !self.deepstack_visual_indexes.is_empty() {
            return Err(invalid(format!(
                "vision_config.deepstack_visual_indexes {:?}: deepstack features are not supported (Qwen3.5 has none)",
                self.deepstack_visual_indexes
            )));
        }
        self.activation()?;
        Ok(())
    }
}

/// Token ids of the vision placeholders (top-level keys of `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct VisionTokens {
    #[serde(default = "defaults::image_token_id", rename = "image_token_id")]
    pub image_pad: u32,
    #[serde(default = "defaults::video_token_id", rename = "video_token_id")]
    pub video_pad: u32,
    #[serde(default = "defaults::vision_start_token_id", rename = "vision_start_token_id")]
    pub vision_start: u32,
    #[serde(default = "defaults::vision_end_token_id", rename = "vision_end_token_id")]
    pub vision_end: u32,
}

impl Default for VisionTokens {
    /// The Qwen3.5 vocabulary's ids (`Qwen3_5Config` defaults).
    fn default() -> Self {
        VisionTokens {
            image_pad: defaults::image_token_id(),
            video_pad: defaults::video_token_id(),
            vision_start: defaults::vision_start_token_id(),
            vision_end: defaults::vision_end_token_id(),
        }
    }
}

/// What `config.json` says about vision: the tower and the placeholder token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionModelConfig {
    pub vision: VisionConfig,
    pub tokens: VisionTokens,
}

impl VisionModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read(path)?;
        Self::from_json_str(&text, path)
    }

    /// Parses a `config.json`; `path` is only used in messages.
    pub fn from_json_str(json: &str, path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct File {
            vision_config: Option<VisionConfig>,
            #[serde(flatten)]
            tokens: VisionTokens,
        }
        let file: File =
            serde_json::from_str(json).map_err(|source| Error::Json { path: path.to_owned(), source })?;
        let vision = file.vision_config.ok_or_else(|| {
            Error::config(
                path,
                "no `vision_config`: not a multimodal (Qwen3_5ForConditionalGeneration) checkpoint",
            )
        })?;
        vision.validate().map_err(|e| Error::config(path, e.to_string()))?;
        Ok(VisionModelConfig { vision, tokens: file.tokens })
    }
}

/// `size` of a processor config: the pixel-count bounds of `smart_resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PixelBounds {
    /// `min_pixels`.
    pub shortest_edge: u64,
    /// `max_pixels`.
    pub longest_edge: u64,
}

/// `preprocessor_config.json` (`Qwen2VLImageProcessor`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImagePreprocessorConfig {
    #[serde(default = "defaults::image_size")]
    pub size: PixelBounds,
    /// Legacy spellings of `size`; they win when present, as in transformers' constructor.
    #[serde(default)]
    pub min_pixels: Option<u64>,
    #[serde(default)]
    pub max_pixels: Option<u64>,
    #[serde(default = "defaults::image_patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "defaults::merge_size")]
    pub merge_size: usize,
    #[serde(default = "defaults::clip_mean")]
    pub image_mean: [f64; 3],
    #[serde(default = "defaults::clip_std")]
    pub image_std: [f64; 3],
    #[serde(default = "defaults::rescale_factor")]
    pub rescale_factor: f64,
    #[serde(default = "defaults::yes")]
    pub do_resize: bool,
    #[serde(default = "defaults::yes")]
    pub do_rescale: bool,
    #[serde(default = "defaults::yes")]
    pub do_normalize: bool,
}

/// `video_preprocessor_config.json` (`Qwen3VLVideoProcessor`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VideoPreprocessorConfig {
    #[serde(default = "defaults::video_size")]
    pub size: PixelBounds,
    #[serde(default = "defaults::video_patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "defaults::merge_size")]
    pub merge_size: usize,
    #[serde(default = "defaults::half")]
    pub image_mean: [f64; 3],
    #[serde(default = "defaults::half")]
    pub image_std: [f64; 3],
    #[serde(default = "defaults::rescale_factor")]
    pub rescale_factor: f64,
    #[serde(default = "defaults::yes")]
    pub do_resize: bool,
    #[serde(default = "defaults::yes")]
    pub do_rescale: bool,
    #[serde(default = "defaults::yes")]
    pub do_normalize: bool,
    /// Frames sampled per second of video.
    #[serde(default = "defaults::video_fps")]
    pub fps: f64,
    #[serde(default = "defaults::min_frames")]
    pub min_frames: usize,
    #[serde(default = "defaults::max_frames")]
    pub max_frames: usize,
}

impl ImagePreprocessorConfig {
    /// The published Qwen3.5 `preprocessor_config.json`.
    pub fn qwen3_5() -> Self {
        ImagePreprocessorConfig {
            size: PixelBounds { shortest_edge: 65_536, longest_edge: 16_777_216 },
            min_pixels: None,
            max_pixels: None,
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: defaults::rescale_factor(),
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
        }
    }

    /// `preprocessor_config.json` in `dir`, or [`Self::qwen3_5`] when the folder has none.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        optional_file(&dir.join("preprocessor_config.json"), Self::from_file, Self::qwen3_5)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = parse(path)?;
        check_processor(
            path,
            [config.patch_size, config.merge_size, config.temporal_patch_size],
            config.pixel_bounds(),
            [config.image_mean, config.image_std],
            config.rescale_factor,
        )?;
        Ok(config)
    }

    /// `(min_pixels, max_pixels)`.
    pub fn pixel_bounds(&self) -> (u64, u64) {
        (
            self.min_pixels.unwrap_or(self.size.shortest_edge),
            self.max_pixels.unwrap_or(self.size.longest_edge),
        )
    }
}

impl VideoPreprocessorConfig {
    /// The published Qwen3.5 `video_preprocessor_config.json` with the class's sampling defaults.
    pub fn qwen3_5() -> Self {
        VideoPreprocessorConfig {
            size: PixelBounds { shortest_edge: 4096, longest_edge: 25_165_824 },
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: defaults::rescale_factor(),
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            fps: defaults::video_fps(),
            min_frames: defaults::min_frames(),
            max_frames: defaults::max_frames(),
        }
    }

    /// `video_preprocessor_config.json` in `dir`, or [`Self::qwen3_5`] when the folder has none.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        optional_file(&dir.join("video_preprocessor_config.json"), Self::from_file, Self::qwen3_5)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = parse(path)?;
        check_processor(
            path,
            [config.patch_size, config.merge_size, config.temporal_patch_size],
            (config.size.shortest_edge, config.size.longest_edge),
            [config.image_mean, config.image_std],
            config.rescale_factor,
        )?;
        let fps_ok = config.fps.is_finite() && config.fps > 0.0;
        if !fps_ok || config.min_frames == 0 || config.max_frames < config.min_frames {
            return Err(Error::config(
                path,
                format!(
                    "fps {} / min_frames {} / max_frames {}: need fps > 0 and 1 <= min_frames <= max_frames",
                    config.fps, config.min_frames, config.max_frames
                ),
            ));
        }
        Ok(config)
    }
}

/// Most pixels a processor config may resize an image (or a video frame) to: four times the
/// published video bound. A larger bound would let one picture take gigabytes.
pub const MAX_PIXELS_BOUND: u64 = 1 << 27;

/// What a processor config must hold for preprocessing to be bounded and finite; the message
/// names the key.
fn check_processor(
    path: &Path,
    [patch, merge, temporal]: [usize; 3],
    (min_pixels, max_pixels): (u64, u64),
    [mean, std]: [[f64; 3]; 2],
    rescale_factor: f64,
) -> Result<()> {
    let fail = |message: String| Err(Error::config(path, message));
    for (key, value, max) in
        [("patch_size", patch, 1024), ("merge_size", merge, 64), ("temporal_patch_size", temporal, 64)]
    {
        if !(1..=max).contains(&value) {
            return fail(format!("{key} is {value}; it must be 1 to {max}"));
        }
    }
    if min_pixels > max_pixels || max_pixels > MAX_PIXELS_BOUND {
        return fail(format!(
            "the pixel bounds (size.shortest_edge / min_pixels {min_pixels}, size.longest_edge / \
             max_pixels {max_pixels}) must satisfy min <= max <= {MAX_PIXELS_BOUND}"
        ));
    }
    if !mean.iter().all(|m| m.is_finite()) {
        return fail(format!("image_mean {mean:?} must be finite"));
    }
    if !std.iter().all(|s| s.is_finite() && *s > 0.0) {
        return fail(format!("image_std {std:?} must be positive (it divides every pixel)"));
    }
    if !(rescale_factor.is_finite() && rescale_factor > 0.0) {
        return fail(format!("rescale_factor {rescale_factor} must be a positive number"));
    }
    Ok(())
}

/// `path` through `from_file` if it exists, else `default()`.
fn optional_file<T>(path: &Path, from_file: fn(&Path) -> Result<T>, default: fn() -> T) -> Result<T> {
    if crate::files::exists(path).map_err(|source| Error::Io { path: path.to_owned(), source })? {
        from_file(path)
    } else {
        Ok(default())
    }
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read(path)?).map_err(|source| Error::Json { path: path.to_owned(), source })
}

fn read(path: &Path) -> Result<String> {
    crate::files::read_to_string(path, crate::files::CONFIG_LIMIT)
        .map_err(|source| Error::Io { path: path.to_owned(), source })
}

fn invalid(message: String) -> Error {
    Error::InvalidInput(message)
}

/// Class defaults of the transformers classes (used for keys a file leaves out).
mod defaults {
    use super::PixelBounds;

    pub fn depth() -> usize {
        27
    }
    pub fn hidden_size() -> usize {
        1152
    }
    pub fn hidden_act() -> String {
        "gelu_pytorch_tanh".into()
    }
    pub fn intermediate_size() -> usize {
        4304
    }
    pub fn num_heads() -> usize {
        16
    }
    pub fn in_channels() -> usize {
        3
    }
    pub fn patch_size() -> usize {
        16
    }
    pub fn merge_size() -> usize {
        2
    }
    pub fn temporal_patch_size() -> usize {
        2
    }
    pub fn out_hidden_size() -> usize {
        3584
    }
    pub fn num_position_embeddings() -> usize {
        2304
    }
    pub fn vision_rope_theta() -> f64 {
        10_000.0
    }
    pub fn image_token_id() -> u32 {
        248_056
    }
    pub fn video_token_id() -> u32 {
        248_057
    }
    pub fn vision_start_token_id() -> u32 {
        248_053
    }
    pub fn vision_end_token_id() -> u32 {
        248_054
    }
    /// `Qwen2VLImageProcessor.size`: 56*56 .. 28*28*1280.
    pub fn image_size() -> PixelBounds {
        PixelBounds { shortest_edge: 56 * 56, longest_edge: 28 * 28 * 1280 }
    }
    pub fn image_patch_size() -> usize {
        14
    }
    /// OPENAI_CLIP_MEAN / OPENAI_CLIP_STD.
    pub fn clip_mean() -> [f64; 3] {
        [0.481_454_66, 0.457_827_5, 0.408_210_73]
    }
    pub fn clip_std() -> [f64; 3] {
        [0.268_629_54, 0.261_302_58, 0.275_777_11]
    }
    /// IMAGENET_STANDARD_MEAN / _STD.
    pub fn half() -> [f64; 3] {
        [0.5; 3]
    }
    pub fn rescale_factor() -> f64 {
        1.0 / 255.0
    }
    pub fn yes() -> bool {
        true
    }
    /// `Qwen3VLVideoProcessor.size`: 128*32*32 .. 32*32*768.
    pub fn video_size() -> PixelBounds {
        PixelBounds { shortest_edge: 128 * 32 * 32, longest_edge: 32 * 32 * 768 }
    }
    pub fn video_patch_size() -> usize {
        16
    }
    pub fn video_fps() -> f64 {
        2.0
    }
    pub fn min_frames() -> usize {
        4
    }
    pub fn max_frames() -> usize {
        768
    }
}
