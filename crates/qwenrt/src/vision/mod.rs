//! Images and videos for Qwen3.5: preprocessing, the vision tower, and prompt positions, each
//! numerically transformers' (`Qwen2VLImageProcessor` / `Qwen3VLVideoProcessor` with the
//! torchvision backend, `Qwen3_5VisionModel`, `Qwen3_5Model.get_rope_index`).
//!
//! From files to what the decoder needs:
//!
//! 1. [`ImagePreprocessor::load`] / [`VideoPreprocessor::load`]: decode, resize, normalise, lay out
//!    patch rows `[patches, 1536]` and the grid `(t, h, w)` (videos also get sampled frames and
//!    timestamps).
//! 2. [`VisionTower::encode`]: patch rows of all images (or videos) with their grids ->
//!    `[merged tokens, out_hidden]`, one row per `<|image_pad|>` (or `<|video_pad|>`) token.
//! 3. [`expand_prompt_text`] (before tokenizing) or [`expand_prompt_ids`] (after): one
//!    placeholder per image/video becomes one token per merged patch, videos get
//!    `<t seconds>` timestamps per temporal patch.
//! 4. [`rope_index`]: the `(t, h, w)` M-RoPE position of every prompt token and the
//!    `rope_delta` that decoding adds to the cache length.
//!
//! The decoder then embeds the expanded ids, replaces the rows of image tokens by the image
//! embeddings in order (and video tokens by the video embeddings), and runs its layers at these
//! positions ([`crate::Model::forward_embedded`]).
//!
//! For chat, [`ImageInput`] / [`VideoInput`] are what messages carry
//! ([`crate::chat::ContentPart::Image`]), [`Vision`] is a model folder's vision side (loaded by
//! [`crate::LanguageModel`]), and [`Prompt`] ties the steps together: rendered chat text and
//! attachments in, expanded ids and positions out, the tower's embeddings only for the part of
//! the prompt no saved state holds ([`Vision::encode`], [`Prompt::piece`]).

pub mod config;
pub mod media;
pub mod positions;
pub mod preprocess;
pub mod prompt;
pub mod tower;

pub use config::{
    ImagePreprocessorConfig, VideoPreprocessorConfig, VisionConfig, VisionModelConfig, VisionTokens,
};
pub use media::{ImageInput, VideoInput};
pub use positions::{
    expand_prompt_ids, expand_prompt_text, rope_index, token_count, RopeIndex, VideoPlaceholder,
};
pub use preprocess::{
    decode_image, load_image, load_video, GridThw, ImagePreprocessor, ProcessedImage, ProcessedVideo,
    RgbImage, VideoFrames, VideoPlan, VideoPreprocessor, DEFAULT_MAX_INPUT_PIXELS,
};
pub use prompt::{EncodedMedia, Prompt, PromptPiece, Vision};
pub use tower::VisionTower;
