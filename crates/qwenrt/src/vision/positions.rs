//! Vision placeholders in the prompt and the 3-axis M-RoPE positions of a multimodal prompt.
//!
//! The chat template writes `<|vision_start|><|image_pad|><|vision_end|>` per image and
//! `<|vision_start|><|video_pad|><|vision_end|>` per video; the processor (`Qwen3VLProcessor`)
//! then replaces, in order of appearance:
//!
//! ```python
//! <|image_pad|>  ->  <|image_pad|> * (t * h * w // merge**2)
//! <|video_pad|>  ->  for each temporal patch i:  f"<{timestamps[i]:.1f} seconds>"
//!                        + <|vision_start|> + <|video_pad|> * (h * w // merge**2) + <|vision_end|>
//! ```
//!
//! Positions follow `Qwen3_5Model.get_rope_index`: a running position `p` starts at 0; a run of
//! `n` text tokens takes `(p + j, p + j, p + j)` and advances `p` by `n`; a run of vision tokens
//! (one image, or one temporal patch of a video, whose grid counts as `(1, h, w)`) takes
//! `(p, p + row, p + column)` over the merged `h/2 x w/2` grid in row-major order and advances `p`
//! by `max(h, w) / 2`. `rope_delta = max(position) + 1 - len`: decoding continues at
//! `cache_len + rope_delta` on all three axes.

use super::config::VisionTokens;
use super::preprocess::{GridThw, ProcessedVideo};
use crate::error::{Error, Result};
use crate::model::rope::Position3;

pub const IMAGE_PAD: &str = "<|image_pad|>";
pub const VIDEO_PAD: &str = "<|video_pad|>";
pub const VISION_START: &str = "<|vision_start|>";
pub const VISION_END: &str = "<|vision_end|>";

/// What the prompt needs to know about a video: its grid and the time of each temporal patch.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoPlaceholder {
    pub grid: GridThw,
    pub timestamps: Vec<f64>,
}

impl From<&ProcessedVideo> for VideoPlaceholder {
    fn from(video: &ProcessedVideo) -> Self {
        VideoPlaceholder { grid: video.grid, timestamps: video.timestamps.clone() }
    }
}

impl VideoPlaceholder {
    fn check(&self, index: usize) -> Result<()> {
        if self.timestamps.len() != self.grid.0 {
            return Err(Error::InvalidInput(format!(
                "video {index}: {} timestamps for {} temporal patches",
                self.timestamps.len(),
                self.grid.0
            )));
        }
        Ok(())
    }
}

/// `<{t:.1f} seconds>` as Python formats it (the exact binary value rounded half to even).
pub fn timestamp_text(seconds: f64) -> String {
    format!("<{seconds:.1} seconds>")
}

/// Merged tokens of one image or one video: `t * h * w / merge^2`.
pub fn token_count(grid: GridThw, merge: usize) -> usize {
    grid.0 * grid.1 * grid.2 / (merge * merge)
}

/// The text that replaces a video's `<|video_pad|>`.
pub fn video_placeholder_text(video: &VideoPlaceholder, merge: usize) -> String {
    let per_frame = video.grid.1 * video.grid.2 / (merge * merge);
    let mut text = String::new();
    for &t in &video.timestamps {
        text.push_str(&timestamp_text(t));
        text.push_str(VISION_START);
        text.push_str(&VIDEO_PAD.repeat(per_frame));
        text.push_str(VISION_END);
    }
    text
}

/// Expands the placeholders of a rendered prompt as the processor does, before tokenization:
/// the `i`-th `<|image_pad|>` becomes `images[i]`'s tokens, the `j`-th `<|video_pad|>` the
/// timestamped frames of `videos[j]`. The counts must match.
pub fn expand_prompt_text(
    prompt: &str,
    images: &[GridThw],
    videos: &[VideoPlaceholder],
    merge: usize,
) -> Result<String> {
    for (i, v) in videos.iter().enumerate() {
        v.check(i)?;
    }
    count_check(prompt.matches(IMAGE_PAD).count(), images.len(), "image", IMAGE_PAD)?;
    count_check(prompt.matches(VIDEO_PAD).count(), videos.len(), "video", VIDEO_PAD)?;
    let (mut images, mut videos) = (images.iter(), videos.iter());
    let mut out = String::with_capacity(prompt.len());
    let mut rest = prompt;
    loop {
        let next_image = rest.find(IMAGE_PAD);
        let next_video = rest.find(VIDEO_PAD);
        let (at, is_image) = match (next_image, next_video) {
            (None, None) => break,
            (Some(i), None) => (i, true),
            (None, Some(v)) => (v, false),
            (Some(i), Some(v)) => (i.min(v), i < v),
        };
        out.push_str(&rest[..at]);
        if is_image {
            let grid = *images.next().expect("counted above");
            out.push_str(&IMAGE_PAD.repeat(token_count(grid, merge)));
            rest = &rest[at + IMAGE_PAD.len()..];
        } else {
            out.push_str(&video_placeholder_text(videos.next().expect("counted above"), merge));
            rest = &rest[at + VIDEO_PAD.len()..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The same expansion on token ids: each `<|image_pad|>` id becomes its image's copies, each
/// `<|video_pad|>` id the timestamped frames of its video; `encode` tokenizes the timestamp texts
/// (e.g. `<0.5 seconds>`). Equal to tokenizing [`expand_prompt_text`]'s result, because the
/// special tokens around each piece split the text before BPE.
pub fn expand_prompt_ids(
    ids: &[u32],
    tokens: &VisionTokens,
    images: &[GridThw],
    videos: &[VideoPlaceholder],
    merge: usize,
    mut encode: impl FnMut(&str) -> Result<Vec<u32>>,
) -> Result<Vec<u32>> {
    for (i, v) in videos.iter().enumerate() {
        v.check(i)?;
    }
    count_check(ids.iter().filter(|&&id| id == tokens.image_pad).count(), images.len(), "image", IMAGE_PAD)?;
    count_check(ids.iter().filter(|&&id| id == tokens.video_pad).count(), videos.len(), "video", VIDEO_PAD)?;
    let (mut images, mut videos) = (images.iter(), videos.iter());
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        if id == tokens.image_pad {
            let grid = *images.next().expect("counted above");
            out.extend(std::iter::repeat_n(tokens.image_pad, token_count(grid, merge)));
        } else if id == tokens.video_pad {
            let video = videos.next().expect("counted above");
            let per_frame = video.grid.1 * video.grid.2 / (merge * merge);
            for &t in &video.timestamps {
                out.extend(encode(&timestamp_text(t))?);
                out.push(tokens.vision_start);
                out.extend(std::iter::repeat_n(tokens.video_pad, per_frame));
                out.push(tokens.vision_end);
            }
        } else {
            out.push(id);
        }
    }
    Ok(out)
}

fn count_check(found: usize, given: usize, what: &str, token: &str) -> Result<()> {
    if found != given {
        return Err(Error::InvalidInput(format!(
            "the prompt has {found} {token} placeholder(s) but {given} {what}(s) were given"
        )));
    }
    Ok(())
}

/// M-RoPE positions of a whole prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RopeIndex {
    /// One `(t, h, w)` position per token.
    pub positions: Vec<Position3>,
    /// `max(position) + 1 - len`: decode position `cache_len + rope_delta` on every axis.
    pub rope_delta: i64,
}

impl RopeIndex {
    /// `[3, len]` axis-major, as transformers' `position_ids[:, 0]`.
    pub fn axis_major(&self) -> [Vec<i64>; 3] {
        [0, 1, 2].map(|axis| self.positions.iter().map(|p| p[axis]).collect())
    }

    /// The position of the token at `cache_len` (0-based index in the whole sequence) when it
    /// follows this prompt.
    pub fn decode_position(&self, cache_len: usize) -> Position3 {
        [cache_len as i64 + self.rope_delta; 3]
    }
}

/// `get_rope_index` for expanded prompt ids: text runs and one vision run per image / video
/// temporal patch (each a `(1, h, w)` grid), in order of appearance.
pub fn rope_index(
    ids: &[u32],
    tokens: &VisionTokens,
    images: &[GridThw],
    videos: &[GridThw],
    merge: usize,
) -> Result<RopeIndex> {
    // A video is split into its temporal patches, each one run between timestamps.
    let mut image_runs = images.iter().map(|&(t, h, w)| (t, h, w));
    let mut frame_runs = videos.iter().flat_map(|&(t, h, w)| std::iter::repeat_n((1, h, w), t));
    let mut positions = Vec::with_capacity(ids.len());
    let mut next = 0i64;
    let mut i = 0;
    while i < ids.len() {
        let id = ids[i];
        let runs: &mut dyn Iterator<Item = GridThw> = if id == tokens.image_pad {
            &mut image_runs
        } else if id == tokens.video_pad {
            &mut frame_runs
        } else {
            positions.push([next; 3]);
            next += 1;
            i += 1;
            continue;
        };
        let kind = if id == tokens.image_pad { "image" } else { "video frame" };
        let (t, h, w) = runs.next().ok_or_else(|| {
            Error::InvalidInput(format!("token {i}: more {kind} placeholders than {kind} grids"))
        })?;
        let (grid_h, grid_w) = (h / merge, w / merge);
        let count = t * grid_h * grid_w;
        if i + count > ids.len() || ids[i..i + count].iter().any(|&x| x != id) {
            return Err(Error::InvalidInput(format!(
                "token {i}: the {kind} with grid ({t}, {h}, {w}) needs {count} consecutive placeholders"
            )));
        }
        for ti in 0..t as i64 {
            for row in 0..grid_h as i64 {
                for col in 0..grid_w as i64 {
                    positions.push([next + ti, next + row, next + col]);
                }
            }
        }
        next += grid_h.max(grid_w) as i64;
        i += count;
    }
    if image_runs.next().is_some() || frame_runs.next().is_some() {
        return Err(Error::InvalidInput("more vision grids than placeholders in the prompt".into()));
    }
    let max = positions.iter().flat_map(|p| p.iter().copied()).max().unwrap_or(-1);
    Ok(RopeIndex { rope_delta: max + 1 - ids.len() as i64, positions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_like_python() {
        // f"{0.25:.1f}" == "0.2" (0.25 is exact: half to even), f"{0.35:.1f}" == "0.3" (0.35 < 0.35)
        assert_eq!(timestamp_text(0.25), "<0.2 seconds>");
        assert_eq!(timestamp_text(0.75), "<0.8 seconds>");
        assert_eq!(timestamp_text(0.35), "<0.3 seconds>");
        assert_eq!(timestamp_text(1.0), "<1.0 seconds>");
        assert_eq!(timestamp_text(12.05), "<12.1 seconds>");
    }

    #[test]
    fn image_positions_follow_the_merged_grid() {
        let tokens = VisionTokens::default();
        let img = tokens.image_pad;
        // text, 2x3 merged image (grid 1x4x6), text
        let ids = [1, 2, img, img, img, img, img, img, 3];
        let index = rope_index(&ids, &tokens, &[(1, 4, 6)], &[], 2).unwrap();
        let [t, h, w] = index.axis_major();
        assert_eq!(t, vec![0, 1, 2, 2, 2, 2, 2, 2, 5]);
        assert_eq!(h, vec![0, 1, 2, 2, 2, 3, 3, 3, 5]);
        assert_eq!(w, vec![0, 1, 2, 3, 4, 2, 3, 4, 5]);
        assert_eq!(index.rope_delta, 6 - 9);
        assert_eq!(index.decode_position(9), [6; 3]);
        assert!(rope_index(&ids[..5], &tokens, &[(1, 4, 6)], &[], 2).is_err());
        assert!(rope_index(&ids, &tokens, &[], &[], 2).is_err());
    }
}
