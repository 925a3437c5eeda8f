//! Images and videos attached to chat messages ([`crate::chat::ContentPart::Image`] / `Video`).
//!
//! An attachment is decoded once, when it is made (so a missing, unreadable or oversized file is
//! an error right away, not at generation time), and hashed once: the hash of its pixels tells
//! saved states apart (see [`crate::prompt_cache::MediaMark`]), so that a conversation showing
//! another picture at the same token positions never reuses a state computed with this one.
//! Resizing and patch rows are left to the turn that feeds the image to the vision tower; the
//! prompt only needs the image's size. Clones share the pixels.
//!
//! The hash is SipHash under a key drawn once per process: nobody who cannot see the key can
//! make two different pictures hash alike on purpose (a server's sessions serve many clients).

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::preprocess::{
    decode_gif_video, decode_image, load_image, load_video, RgbImage, VideoFrames, DEFAULT_MAX_INPUT_PIXELS,
};
use crate::error::{Error, Result};

struct ImageInner {
    image: RgbImage,
    path: Option<PathBuf>,
    hash: u64,
}

/// A decoded image attached to a message.
#[derive(Clone)]
pub struct ImageInput(Arc<ImageInner>);

impl ImageInput {
    /// Reads and decodes a PNG, JPEG, WebP or GIF (first frame) file; images over
    /// [`DEFAULT_MAX_INPUT_PIXELS`] are refused.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_limit(path, DEFAULT_MAX_INPUT_PIXELS)
    }

    /// [`open`](Self::open) with another limit on the number of pixels.
    pub fn open_with_limit(path: &Path, max_pixels: u64) -> Result<Self> {
        let image = load_image(path, max_pixels)?;
        Ok(Self::new(image, Some(path.to_owned())))
    }

    /// Decodes an image held in memory (e.g. the payload of a `data:` URL); `name` labels errors.
    pub fn decode(bytes: &[u8], name: &str, max_pixels: u64) -> Result<Self> {
        Ok(Self::new(decode_image(bytes, name, max_pixels)?, None))
    }

    /// An already decoded picture.
    pub fn from_rgb(image: RgbImage) -> Result<Self> {
        check_rgb(&image, "the image")?;
        Ok(Self::new(image, None))
    }

    fn new(image: RgbImage, path: Option<PathBuf>) -> Self {
        let mut h = hasher();
        hash_rgb(&mut h, &image);
        ImageInput(Arc::new(ImageInner { hash: h.finish(), image, path }))
    }

    pub fn image(&self) -> &RgbImage {
        &self.0.image
    }

    pub fn width(&self) -> usize {
        self.0.image.width
    }

    pub fn height(&self) -> usize {
        self.0.image.height
    }

    /// The file it was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }

    /// A 64-bit hash of the size and pixels: equal pictures hash equal.
    pub fn hash(&self) -> u64 {
        self.0.hash
    }
}

impl PartialEq for ImageInput {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.hash == other.0.hash && self.0.image == other.0.image)
    }
}

impl fmt::Debug for ImageInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageInput")
            .field("width", &self.width())
            .field("height", &self.height())
            .field("path", &self.0.path)
            .field("hash", &format_args!("{:016x}", self.0.hash))
            .finish()
    }
}

struct VideoInner {
    video: VideoFrames,
    path: Option<PathBuf>,
    hash: u64,
}

/// A decoded video (its frames and their rate) attached to a message.
#[derive(Clone)]
pub struct VideoInput(Arc<VideoInner>);

impl VideoInput {
    /// Loads a video: an animated GIF (its own frame rate) or a folder of frames in file-name
    /// order, `folder_fps` frames per second. Frames over [`DEFAULT_MAX_INPUT_PIXELS`] are refused.
    pub fn open(path: &Path, folder_fps: f64) -> Result<Self> {
        Self::open_with_limit(path, folder_fps, DEFAULT_MAX_INPUT_PIXELS)
    }

    /// [`open`](Self::open) with another limit on the pixels of a frame.
    pub fn open_with_limit(path: &Path, folder_fps: f64, max_pixels: u64) -> Result<Self> {
        let video = load_video(path, folder_fps, max_pixels)?;
        Self::new(video, Some(path.to_owned()))
    }

    /// Decodes an animated GIF held in memory; `name` labels errors.
    pub fn decode_gif(bytes: &[u8], name: &str, max_pixels: u64) -> Result<Self> {
        Self::new(decode_gif_video(bytes, name, max_pixels)?, None)
    }

    /// Already decoded frames (all of one size) at `video.fps` frames per second.
    pub fn from_frames(video: VideoFrames) -> Result<Self> {
        Self::new(video, None)
    }

    fn new(video: VideoFrames, path: Option<PathBuf>) -> Result<Self> {
        let first =
            video.frames.first().ok_or_else(|| Error::InvalidInput("the video has no frames".into()))?;
        if !(video.fps > 0.0 && video.fps.is_finite()) {
            return Err(Error::InvalidInput(format!("the video's frame rate {} is not positive", video.fps)));
        }
        for (i, frame) in video.frames.iter().enumerate() {
            check_rgb(frame, &format!("video frame {i}"))?;
            if (frame.width, frame.height) != (first.width, first.height) {
                return Err(Error::InvalidInput(format!(
                    "video frame {i} is {}x{} but frame 0 is {}x{}: all frames must have one size",
                    frame.width, frame.height, first.width, first.height
                )));
            }
        }
        let mut h = hasher();
        // The rate decides which frames are sampled and their timestamps.
        h.write_u64(video.fps.to_bits());
        h.write_usize(video.frames.len());
        for frame in &video.frames {
            hash_rgb(&mut h, frame);
        }
        Ok(VideoInput(Arc::new(VideoInner { hash: h.finish(), video, path })))
    }

    pub fn video(&self) -> &VideoFrames {
        &self.0.video
    }

    /// The file or folder it was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }

    /// A 64-bit hash of the frame rate, sizes and pixels.
    pub fn hash(&self) -> u64 {
        self.0.hash
    }
}

impl PartialEq for VideoInput {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash
                && self.0.video.fps == other.0.video.fps
                && self.0.video.frames == other.0.video.frames)
    }
}

impl fmt::Debug for VideoInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = &self.0.video.frames[0];
        f.debug_struct("VideoInput")
            .field("frames", &self.0.video.frames.len())
            .field("fps", &self.0.video.fps)
            .field("width", &first.width)
            .field("height", &first.height)
            .field("path", &self.0.path)
            .field("hash", &format_args!("{:016x}", self.0.hash))
            .finish()
    }
}

/// A hasher under the process's key.
fn hasher() -> DefaultHasher {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new).build_hasher()
}

/// A picture's fields are public: check that they agree before anything indexes the pixels.
fn check_rgb(image: &RgbImage, what: &str) -> Result<()> {
    if image.width == 0 || image.height == 0 {
        return Err(Error::InvalidInput(format!("{what} is empty ({}x{})", image.width, image.height)));
    }
    if image.data.len() != image.width * image.height * 3 {
        return Err(Error::InvalidInput(format!(
            "{what} has {} bytes, expected {} x {} x 3",
            image.data.len(),
            image.width,
            image.height
        )));
    }
    Ok(())
}

fn hash_rgb(h: &mut DefaultHasher, image: &RgbImage) {
    h.write_usize(image.width);
    h.write_usize(image.height);
    h.write(&image.data);
}
