//! Prompts with images and videos, end to end: a model folder's vision parts ([`Vision`]), a
//! tokenized prompt with its placeholders expanded and its M-RoPE positions ([`Prompt`]), and the
//! tower's embeddings for the part of it still to be fed ([`EncodedMedia`], [`PromptPiece`]).
//!
//! What transformers does for `model.generate(**processor.apply_chat_template(messages))`:
//!
//! ```python
//! text   = template.render(messages)                        # one placeholder per image / video
//! ids    = tokenizer(expand(text, image_grid_thw, video_grid_thw, timestamps))
//! position_ids, rope_deltas = get_rope_index(ids, image_grid_thw, video_grid_thw)
//! embeds = embed_tokens(ids).masked_scatter(ids == image_token_id, visual(pixel_values, image_grid_thw))
//! embeds = embeds.masked_scatter(ids == video_token_id, visual(pixel_values_videos, video_grid_thw))
//! ```
//!
//! Here the expansion needs only each image's size (its grid), so rendering a long conversation
//! never touches pixels; the tower runs, in [`Vision::encode`], only on the images and videos
//! whose placeholders lie in the part of the prompt that no saved state covers.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::config::{ImagePreprocessorConfig, VideoPreprocessorConfig, VisionModelConfig, VisionTokens};
use super::media::{ImageInput, VideoInput};
use super::positions::{expand_prompt_ids, rope_index, token_count, RopeIndex, VideoPlaceholder};
use super::preprocess::{GridThw, ImagePreprocessor, VideoPreprocessor};
use super::tower::{VisionTower, PREFIX};
use crate::error::{Error, Result};
use crate::linear::WeightDtype;
use crate::model::{EmbeddedInput, Injection, Position3};
use crate::prompt_cache::MediaMark;
use crate::weights::WeightStore;

/// The vision side of a multimodal model folder: configuration, image and video preprocessors,
/// and the tower, which is loaded on first use (text-only work never pays for it in memory or
/// load time; the folder's weights are mapped again then).
pub struct Vision {
    config: VisionModelConfig,
    images: ImagePreprocessor,
    videos: VideoPreprocessor,
    dir: PathBuf,
    dtype: WeightDtype,
    tower: Mutex<Option<Arc<VisionTower>>>,
}

impl std::fmt::Debug for Vision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vision")
            .field("config", &self.config)
            .field("dtype", &self.dtype)
            .field("tower_loaded", &self.tower.lock().unwrap_or_else(PoisonError::into_inner).is_some())
            .finish_non_exhaustive()
    }
}

impl Vision {
    /// The vision parts of model folder `dir`, whose weights `store` holds. `Ok(Err(reason))`
    /// when the folder has none (a text-only checkpoint); `Err` when they are inconsistent.
    /// `text_hidden` is the decoder's width, which the tower's output must have.
    pub(crate) fn from_dir(
        dir: &Path,
        store: &WeightStore,
        dtype: WeightDtype,
        text_hidden: usize,
    ) -> Result<std::result::Result<Self, String>> {
        let path = dir.join("config.json");
        let text = crate::files::read_to_string(&path, crate::files::CONFIG_LIMIT)
            .map_err(|source| Error::Io { path: path.clone(), source })?;
        let has_vision = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|source| Error::Json { path: path.clone(), source })?
            .get("vision_config")
            .is_some_and(|v| !v.is_null());
        if !has_vision {
            return Ok(Err("this model has no vision tower (config.json has no vision_config): \
                           it reads text only"
                .into()));
        }
        let config = VisionModelConfig::from_json_str(&text, &path)?;
        if !store.contains(&format!("{PREFIX}patch_embed.proj.weight")) {
            return Ok(Err(format!(
                "this checkpoint has no vision tower weights ({PREFIX}*) although config.json \
                 has a vision_config: it reads text only"
            )));
        }
        let v = &config.vision;
        if v.out_hidden_size != text_hidden {
            return Err(Error::config(
                &path,
                format!(
                    "vision_config.out_hidden_size {} differs from the text model's hidden_size {text_hidden}",
                    v.out_hidden_size
                ),
            ));
        }
        let images = ImagePreprocessor::from_dir(dir)?;
        let videos = VideoPreprocessor::from_dir(dir)?;
        let geometry = |name: &str, patch: usize, merge: usize, temporal: usize| {
            if (patch, merge, temporal) != (v.patch_size, v.spatial_merge_size, v.temporal_patch_size) {
                return Err(Error::config(
                    dir.join(name),
                    format!(
                        "patch_size {patch}, merge_size {merge}, temporal_patch_size {temporal} differ \
                         from config.json's vision_config ({}, {}, {})",
                        v.patch_size, v.spatial_merge_size, v.temporal_patch_size
                    ),
                ));
            }
            Ok(())
        };
        let (i, vc) = (&images.config, &videos.config);
        geometry("preprocessor_config.json", i.patch_size, i.merge_size, i.temporal_patch_size)?;
        geometry("video_preprocessor_config.json", vc.patch_size, vc.merge_size, vc.temporal_patch_size)?;
        Ok(Ok(Vision { config, images, videos, dir: dir.to_owned(), dtype, tower: Mutex::new(None) }))
    }

    pub fn config(&self) -> &VisionModelConfig {
        &self.config
    }

    pub fn tokens(&self) -> &VisionTokens {
        &self.config.tokens
    }

    pub fn image_config(&self) -> &ImagePreprocessorConfig {
        &self.images.config
    }

    pub fn video_config(&self) -> &VideoPreprocessorConfig {
        &self.videos.config
    }

    /// The tower, loaded (at the model's weight precision) by the first call.
    pub fn tower(&self) -> Result<Arc<VisionTower>> {
        let mut slot = self.tower.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tower) = &*slot {
            return Ok(tower.clone());
        }
        // Mapping the files again is cheap; keeping them mapped since the decoder was loaded
        // would have kept every weight page of the checkpoint resident.
        let store = WeightStore::open_dir(&self.dir)?;
        let tower = Arc::new(VisionTower::load(&store, &self.config.vision, self.dtype)?);
        *slot = Some(tower.clone());
        Ok(tower)
    }

    fn merge(&self) -> usize {
        self.config.vision.spatial_merge_size
    }

    /// Expands tokenized prompt `ids`, in which the chat template wrote one `<|image_pad|>` per
    /// image and one `<|video_pad|>` per video (in the order of `images` and `videos`), and
    /// computes the positions. `encode` tokenizes the timestamps of video frames.
    pub fn expand(
        &self,
        ids: &[u32],
        images: &[ImageInput],
        videos: &[VideoInput],
        encode: impl FnMut(&str) -> Result<Vec<u32>>,
    ) -> Result<Prompt> {
        let merge = self.merge();
        let tokens = self.config.tokens;
        let grids = images
            .iter()
            .enumerate()
            .map(|(i, image)| {
                self.images
                    .grid(image.height(), image.width())
                    .map_err(|e| in_media("image", i, image.path(), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let plans = videos
            .iter()
            .enumerate()
            .map(|(i, video)| {
                self.videos.plan(video.video()).map_err(|e| in_media("video", i, video.path(), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let placeholders: Vec<VideoPlaceholder> = plans
            .iter()
            .map(|p| VideoPlaceholder { grid: p.grid, timestamps: p.timestamps.clone() })
            .collect();
        let ids = expand_prompt_ids(ids, &tokens, &grids, &placeholders, merge, encode)?;
        let video_grids: Vec<GridThw> = plans.iter().map(|p| p.grid).collect();
        let index = rope_index(&ids, &tokens, &grids, &video_grids, merge)?;

        // Where each image's run and each video's runs (one per temporal patch, timestamps
        // between them) lie; rope_index has checked that the runs are whole.
        let next =
            |from: usize, token: u32| {
                ids[from..].iter().position(|&id| id == token).map(|i| from + i).ok_or_else(|| {
                    Error::InvalidInput("the expanded prompt lost a vision placeholder".into())
                })
            };
        let mut at = 0;
        let mut placed_images = Vec::with_capacity(images.len());
        for (input, &grid) in images.iter().zip(&grids) {
            let start = next(at, tokens.image_pad)?;
            at = start + token_count(grid, merge);
            placed_images.push(Placed { input: input.clone(), grid, span: start..at });
        }
        at = 0;
        let mut placed_videos = Vec::with_capacity(videos.len());
        for (input, &grid) in videos.iter().zip(&video_grids) {
            let start = next(at, tokens.video_pad)?;
            at = start;
            for _ in 0..grid.0 {
                at = next(at, tokens.video_pad)? + grid.1 * grid.2 / (merge * merge);
            }
            placed_videos.push(Placed { input: input.clone(), grid, span: start..at });
        }
        let mut marks: Vec<MediaMark> = placed_images
            .iter()
            .map(|m| MediaMark { start: m.span.start, hash: m.input.hash() })
            .chain(placed_videos.iter().map(|m| MediaMark { start: m.span.start, hash: m.input.hash() }))
            .collect();
        marks.sort_by_key(|m| m.start);
        Ok(Prompt {
            ids,
            vision: Some(Arc::new(PromptVision {
                tokens,
                index,
                images: placed_images,
                videos: placed_videos,
                marks,
            })),
        })
    }

    /// Runs the tower over the images and videos of `prompt` that have placeholder tokens at or
    /// after token `from` (those entirely before are already in a state that holds `from`
    /// tokens): images in one pass, videos in another.
    pub fn encode(&self, prompt: &Prompt, from: usize) -> Result<EncodedMedia> {
        let mut out = EncodedMedia { from, width: 0, image_rows: Vec::new(), video_rows: Vec::new() };
        let Some(v) = &prompt.vision else { return Ok(out) };
        // (index in the prompt, medium) of those still to be fed.
        let images: Vec<(usize, &Placed<ImageInput>)> =
            v.images.iter().enumerate().filter(|(_, m)| m.span.end > from).collect();
        let videos: Vec<(usize, &Placed<VideoInput>)> =
            v.videos.iter().enumerate().filter(|(_, m)| m.span.end > from).collect();
        if images.is_empty() && videos.is_empty() {
            return Ok(out);
        }
        let tower = self.tower()?;
        let hidden = tower.out_hidden();
        out.width = hidden;
        let ids = &prompt.ids;
        // Rows of a run of media, less those of tokens before `from` (only the first medium
        // can straddle it).
        let encode = |rows: Vec<f32>, grids: Vec<GridThw>, first: &Range<usize>, token: u32| {
            let mut embeds = tower.encode(&rows, &grids)?;
            let skip_to = from.clamp(first.start, first.end);
            let skip = ids[first.start..skip_to].iter().filter(|&&id| id == token).count();
            embeds.drain(..skip * hidden);
            Ok::<_, Error>(embeds)
        };
        if let Some((_, first)) = images.first() {
            let mut rows = Vec::new();
            let mut grids = Vec::with_capacity(images.len());
            for &(i, m) in &images {
                let processed = self
                    .images
                    .preprocess(m.input.image())
                    .map_err(|e| in_media("image", i, m.input.path(), e))?;
                check_grid(processed.grid, m.grid)?;
                rows.extend_from_slice(&processed.pixel_values);
                grids.push(processed.grid);
            }
            out.image_rows = encode(rows, grids, &first.span, v.tokens.image_pad)?;
        }
        if let Some((_, first)) = videos.first() {
            let mut rows = Vec::new();
            let mut grids = Vec::with_capacity(videos.len());
            for &(i, m) in &videos {
                let processed = self
                    .videos
                    .preprocess(m.input.video())
                    .map_err(|e| in_media("video", i, m.input.path(), e))?;
                check_grid(processed.grid, m.grid)?;
                rows.extend_from_slice(&processed.pixel_values);
                grids.push(processed.grid);
            }
            out.video_rows = encode(rows, grids, &first.span, v.tokens.video_pad)?;
        }
        Ok(out)
    }
}

fn check_grid(processed: GridThw, planned: GridThw) -> Result<()> {
    if processed != planned {
        return Err(Error::InvalidInput(format!(
            "preprocessing gave grid {processed:?} but the prompt was expanded for {planned:?}"
        )));
    }
    Ok(())
}

/// `err` prefixed with which attachment it is about.
fn in_media(kind: &str, index: usize, path: Option<&Path>, err: Error) -> Error {
    let name = path.map_or_else(|| format!("{kind} {}", index + 1), |p| format!("{kind} {}", p.display()));
    Error::InvalidInput(format!("{name}: {err}"))
}

/// An image or video and where its placeholder tokens lie in the expanded prompt.
#[derive(Debug)]
struct Placed<T> {
    input: T,
    grid: GridThw,
    /// From its first placeholder token to just after its last (a video's runs have timestamps
    /// between them).
    span: Range<usize>,
}

/// What a prompt's images and videos add to its token ids.
#[derive(Debug)]
struct PromptVision {
    tokens: VisionTokens,
    index: RopeIndex,
    images: Vec<Placed<ImageInput>>,
    videos: Vec<Placed<VideoInput>>,
    /// One per image and video, by position.
    marks: Vec<MediaMark>,
}

/// A tokenized prompt. For a prompt with images or videos: the placeholders expanded, a 3-axis
/// position per token, and what each image and video is (cheap to clone: attachments are shared).
#[derive(Clone, Debug)]
pub struct Prompt {
    ids: Vec<u32>,
    vision: Option<Arc<PromptVision>>,
}

impl Prompt {
    /// A text prompt.
    pub fn text(ids: Vec<u32>) -> Self {
        Prompt { ids, vision: None }
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub fn into_ids(self) -> Vec<u32> {
        self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether the prompt has images or videos (and so explicit positions).
    pub fn has_media(&self) -> bool {
        self.vision.is_some()
    }

    /// Numbers of images and videos.
    pub fn media_counts(&self) -> (usize, usize) {
        self.vision.as_ref().map_or((0, 0), |v| (v.images.len(), v.videos.len()))
    }

    /// `(t, h, w)` of every token (`get_rope_index`); `None` for text, whose positions are the
    /// token indices.
    pub fn positions(&self) -> Option<&[Position3]> {
        self.vision.as_ref().map(|v| v.index.positions.as_slice())
    }

    /// Where the images and videos are and what they hash to, by position (empty for text): the
    /// prompt's identity beyond its ids, for state reuse.
    pub fn media_marks(&self) -> &[MediaMark] {
        self.vision.as_ref().map_or(&[], |v| v.marks.as_slice())
    }

    /// The rope delta of a state that has consumed the first `len` tokens: the position of the
    /// text token that would come next, less `len` (0 for text; the prompt's `rope_deltas` from
    /// the end on).
    pub fn rope_delta_at(&self, len: usize) -> i64 {
        match &self.vision {
            None => 0,
            Some(v) if len >= self.ids.len() => v.index.rope_delta,
            // A text token's position is the running position on every axis; a vision run's
            // first temporal coordinate is that running position too.
            Some(v) => v.index.positions[len][0] - len as i64,
        }
    }

    /// The decoder input for tokens `range` of a prompt with media, given the tower's outputs
    /// for this prompt from `encoded.start() <= range.start` on.
    pub fn piece<'a>(&'a self, encoded: &'a EncodedMedia, range: Range<usize>) -> Result<PromptPiece<'a>> {
        let v = self
            .vision
            .as_ref()
            .ok_or_else(|| Error::InvalidInput("a text prompt has no image or video input".into()))?;
        if range.start < encoded.from || range.start > range.end || range.end > self.ids.len() {
            return Err(Error::InvalidInput(format!(
                "tokens {range:?} of a {}-token prompt whose media were encoded from token {}",
                self.ids.len(),
                encoded.from
            )));
        }
        // Rows before the piece and rows in it, counted in placeholders from `encoded.from`.
        let rows_of = |all: &'a [f32], token: u32| -> Result<&'a [f32]> {
            let count = |r: Range<usize>| self.ids[r].iter().filter(|&&id| id == token).count();
            let before = count(encoded.from..range.start);
            let inside = count(range.clone());
            let total = count(encoded.from..self.ids.len());
            let width = encoded.width;
            if all.len() != total * width || (total > 0 && width == 0) {
                return Err(Error::InvalidInput(format!(
                    "{} encoded values are not one row per placeholder ({total}) from token {}: \
                     were they encoded for another prompt?",
                    all.len(),
                    encoded.from
                )));
            }
            Ok(&all[before * width..(before + inside) * width])
        };
        Ok(PromptPiece {
            tokens: &self.ids[range.clone()],
            positions: &v.index.positions[range.clone()],
            injections: [
                Injection {
                    token: v.tokens.image_pad,
                    rows: rows_of(&encoded.image_rows, v.tokens.image_pad)?,
                },
                Injection {
                    token: v.tokens.video_pad,
                    rows: rows_of(&encoded.video_rows, v.tokens.video_pad)?,
                },
            ],
            rope_delta: self.rope_delta_at(range.end),
        })
    }
}

/// The tower's outputs for a prompt's images and videos from token [`start`](Self::start) on: one
/// row per `<|image_pad|>` (and per `<|video_pad|>`) at or after it, in order.
#[derive(Clone, Debug)]
pub struct EncodedMedia {
    from: usize,
    /// Values per row (the decoder's hidden size); 0 when nothing was encoded.
    width: usize,
    image_rows: Vec<f32>,
    video_rows: Vec<f32>,
}

impl EncodedMedia {
    /// The first token the rows cover.
    pub fn start(&self) -> usize {
        self.from
    }

    /// Bytes held by the embeddings.
    pub fn bytes(&self) -> usize {
        4 * (self.image_rows.len() + self.video_rows.len())
    }

    /// Drops the rows of `prompt`'s placeholders before token `to` (fed meanwhile), so that
    /// what is left covers the prompt from `to` on.
    pub fn advance(&mut self, prompt: &Prompt, to: usize) -> Result<()> {
        if to < self.from || to > prompt.len() {
            return Err(Error::InvalidInput(format!(
                "cannot move encoded media from token {} to {to} of a {}-token prompt",
                self.from,
                prompt.len()
            )));
        }
        if let Some(v) = &prompt.vision {
            let kinds =
                [(&mut self.image_rows, v.tokens.image_pad), (&mut self.video_rows, v.tokens.video_pad)];
            for (rows, token) in kinds {
                let fed = prompt.ids[self.from..to].iter().filter(|&&id| id == token).count();
                // split_off, unlike drain, gives the memory of the fed rows back.
                *rows = rows.split_off((fed * self.width).min(rows.len()));
            }
        }
        self.from = to;
        Ok(())
    }
}

/// Part of a prompt with media, ready for [`crate::Model::forward_embedded`].
#[derive(Clone, Copy, Debug)]
pub struct PromptPiece<'a> {
    tokens: &'a [u32],
    positions: &'a [Position3],
    injections: [Injection<'a>; 2],
    rope_delta: i64,
}

impl PromptPiece<'_> {
    pub fn input(&self) -> EmbeddedInput<'_> {
        EmbeddedInput {
            tokens: self.tokens,
            positions: self.positions,
            injections: &self.injections,
            rope_delta: self.rope_delta,
        }
    }
}
