//! Image and video preprocessing, numerically transformers' Qwen3.5 processors
//! (`Qwen2VLImageProcessor` / `Qwen3VLVideoProcessor`, torchvision backend).
//!
//! ```python
//! image = decode_image(path, mode=RGB, apply_exif_orientation=True)       # uint8 [3, H, W]
//! h, w  = smart_resize(H, W, factor=patch*merge, min_pixels, max_pixels)
//! image = tvF.resize(image, [h, w], BICUBIC, antialias=True)              # still uint8
//! image = tvF.normalize(image.float(), mean / rescale, std / rescale)      # (x - 127.5) / 127.5
//! patches = image.reshape(C, h/P/m, m, P, w/P/m, m, P).permute(1, 4, 2, 5, 0, 3, 6)
//! rows  = patches repeated over the temporal patch -> [h/P * w/P, C*T*P*P]  # row = (c, t, y, x)
//! ```
//!
//! The resize is torch's antialiased bicubic on `uint8` (`_upsample_bicubic2d_aa`, the
//! Pillow-SIMD algorithm): separable, horizontal pass first, Keys cubic with `a = -0.5` stretched
//! by the downscale factor, weights normalised in f64 and then rounded to int16 fixed point with
//! the largest precision that keeps the biggest weight below 2^15, integer accumulation rounded
//! and clamped to `uint8` after each pass. Reproduced exactly, it gives the same bytes.
//!
//! Decoding is the `image` crate's. PNG, GIF and lossless WebP decode to the same bytes as
//! torchvision; JPEG does not quite: zune-jpeg and libjpeg-turbo round the IDCT, the chroma
//! upsampling and the colour conversion differently (on the fixture photo a quarter of the values
//! differ, by 1–2 levels mostly, 4 at most; the tower output keeps a cosine of 0.99999).
//!
//! Patch rows come out in 2×2-merge block order: block (row, column) row-major, inside a block
//! (row, column) row-major, so that four consecutive rows form one merged token.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{AnimationDecoder, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use rayon::prelude::*;

use super::config::{ImagePreprocessorConfig, VideoPreprocessorConfig};
use crate::error::{Error, Result};

/// `(t, h, w)`: a grid of patches (`image_grid_thw` / `video_grid_thw`); `t` counts temporal
/// patches (pairs of frames), `h` and `w` patches of `patch_size` pixels.
pub type GridThw = (usize, usize, usize);

/// Input images larger than this many pixels are refused before they are decoded (64 Mpx, about
/// 200 MB of RGB). [`ImagePreprocessor::max_input_pixels`] changes it.
pub const DEFAULT_MAX_INPUT_PIXELS: u64 = 64 << 20;

/// A video's frames together may hold this many times an image's pixel limit before they are
/// sampled (128 Mpx by default, about 400 MB of RGB): decoding stops at the frame that passes it.
pub const VIDEO_PIXELS_PER_IMAGE_LIMIT: u64 = 2;

/// `smart_resize` refuses images whose long side exceeds 200 times the short side.
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// An 8-bit RGB picture, rows top to bottom, `[height, width, 3]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * 3 {
            return Err(Error::InvalidInput(format!(
                "RGB buffer has {} bytes, expected {width} x {height} x 3",
                data.len()
            )));
        }
        Ok(RgbImage { width, height, data })
    }

    fn pixel(&self, y: usize, x: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * 3 + c]
    }
}

/// Decodes a PNG, JPEG, WebP or GIF (its first frame) to RGB, with the EXIF orientation applied
/// as transformers' loader does. Alpha is dropped, not composited (torchvision's
/// `ImageReadMode.RGB`). `name` only labels error messages.
pub fn decode_image(bytes: &[u8], name: &str, max_input_pixels: u64) -> Result<RgbImage> {
    let reader = reader(bytes, name, max_input_pixels)?;
    let mut decoder =
        reader.into_decoder().map_err(|e| invalid(format!("{name}: cannot decode the image: {e}")))?;
    let (width, height) = decoder.dimensions();
    check_input_size(name, width as u64, height as u64, max_input_pixels)?;
    let orientation = decoder.orientation().map_err(|e| invalid(format!("{name}: {e}")))?;
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| invalid(format!("{name}: cannot decode the image: {e}")))?;
    image.apply_orientation(orientation);
    Ok(from_dynamic(image))
}

/// Reads and decodes an image file (see [`decode_image`]).
pub fn load_image(path: &Path, max_input_pixels: u64) -> Result<RgbImage> {
    let bytes = crate::files::read(path, crate::files::MEDIA_LIMIT)
        .map_err(|source| Error::Io { path: path.to_owned(), source })?;
    decode_image(&bytes, &path.display().to_string(), max_input_pixels)
}

fn reader<'a>(bytes: &'a [u8], name: &str, max_input_pixels: u64) -> Result<ImageReader<Cursor<&'a [u8]>>> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid(format!("{name}: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif) => {}
        Some(other) => {
            return Err(invalid(format!("{name}: {other:?} images are not supported (PNG, JPEG, WebP, GIF)")))
        }
        None => return Err(invalid(format!("{name}: not a PNG, JPEG, WebP or GIF image"))),
    }
    reader.limits(decoder_limits(max_input_pixels));
    Ok(reader)
}

/// What a decoder may allocate: a picture within the pixel limit at 16-bit RGBA (8 bytes a pixel),
/// the most any decoder buffers for one frame. The header's size is checked against the limit
/// before decoding, but a GIF frame declares its own size, which may be far larger than the
/// picture's: this cap refuses that frame instead of allocating it.
fn decoder_limits(max_input_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_input_pixels.saturating_mul(8));
    limits
}

fn check_input_size(name: &str, width: u64, height: u64, max_input_pixels: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(invalid(format!("{name}: the image is empty ({width}x{height})")));
    }
    if width * height > max_input_pixels {
        return Err(invalid(format!(
            "{name}: {width}x{height} = {} pixels exceeds the limit of {max_input_pixels} pixels",
            width * height
        )));
    }
    Ok(())
}

fn from_dynamic(image: DynamicImage) -> RgbImage {
    let rgb = image.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    RgbImage { width, height, data: rgb.into_raw() }
}

/// transformers' `smart_resize` for images: the size nearest to `(height, width)` with both sides
/// multiples of `factor` and `min_pixels <= h*w <= max_pixels`, aspect ratio kept as well as
/// possible. Python's arithmetic: `round` rounds half to even, floats are f64.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize)> {
    check_aspect_ratio(height, width)?;
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    // h_bar = round(height / factor) * factor
    let mut h_bar = (h / f).round_ties_even() as u64 * factor as u64;
    let mut w_bar = (w / f).round_ties_even() as u64 * factor as u64;
    if h_bar * w_bar > max_pixels {
        // beta = math.sqrt((height * width) / max_pixels)
        let beta = ((height as u64 * width as u64) as f64 / max_pixels as f64).sqrt();
        h_bar = (factor as u64).max((h / beta / f).floor() as u64 * factor as u64);
        w_bar = (factor as u64).max((w / beta / f).floor() as u64 * factor as u64);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / (height as u64 * width as u64) as f64).sqrt();
        h_bar = (h * beta / f).ceil() as u64 * factor as u64;
        w_bar = (w * beta / f).ceil() as u64 * factor as u64;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// transformers' `smart_resize` of `Qwen3VLVideoProcessor`: the pixel bounds count all frames
/// (`t_bar * h * w`), and sides below `factor` are first scaled up.
pub fn smart_resize_video(
    num_frames: usize,
    height: usize,
    width: usize,
    temporal_factor: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize)> {
    if num_frames < temporal_factor {
        return Err(invalid(format!(
            "a video needs at least {temporal_factor} frames after sampling, got {num_frames}"
        )));
    }
    let (mut height, mut width) = (height, width);
    if height < factor || width < factor {
        // scale = max(factor / height, factor / width); height = int(height * scale)
        let scale = (factor as f64 / height as f64).max(factor as f64 / width as f64);
        height = (height as f64 * scale) as usize;
        width = (width as f64 * scale) as usize;
    }
    check_aspect_ratio(height, width)?;
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let mut h_bar = (h / f).round_ties_even() as u64 * factor as u64;
    let mut w_bar = (w / f).round_ties_even() as u64 * factor as u64;
    let t_bar =
        (num_frames as f64 / temporal_factor as f64).round_ties_even() as u64 * temporal_factor as u64;
    let frames_pixels = (num_frames * height * width) as f64;
    if t_bar * h_bar * w_bar > max_pixels {
        let beta = (frames_pixels / max_pixels as f64).sqrt();
        h_bar = (factor as u64).max((h / beta / f).floor() as u64 * factor as u64);
        w_bar = (factor as u64).max((w / beta / f).floor() as u64 * factor as u64);
    } else if t_bar * h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / frames_pixels).sqrt();
        h_bar = (h * beta / f).ceil() as u64 * factor as u64;
        w_bar = (w * beta / f).ceil() as u64 * factor as u64;
    }
    Ok((h_bar as usize, w_bar as usize))
}

fn check_aspect_ratio(height: usize, width: usize) -> Result<()> {
    if height == 0 || width == 0 {
        return Err(invalid(format!("the image is empty ({width}x{height})")));
    }
    let ratio = height.max(width) as f64 / height.min(width) as f64;
    if ratio > MAX_ASPECT_RATIO {
        return Err(invalid(format!(
            "the image is {width}x{height}: its aspect ratio {ratio:.1} exceeds {MAX_ASPECT_RATIO}"
        )));
    }
    Ok(())
}

/// Resizes to `height x width` exactly as torchvision's `resize(uint8 image, BICUBIC,
/// antialias=True)` does on CPU (see the module documentation).
pub fn resize_bicubic(image: &RgbImage, height: usize, width: usize) -> RgbImage {
    let mut current = std::borrow::Cow::Borrowed(image);
    if width != image.width {
        current = std::borrow::Cow::Owned(resize_horizontal(&current, width));
    }
    if height != image.height {
        current = std::borrow::Cow::Owned(resize_vertical(&current, height));
    }
    current.into_owned()
}

/// The taps of one output pixel along one axis: first input index and int16 fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// `_compute_index_ranges_int16_weights` for the antialiased bicubic filter: per output index, the
/// input window and its weights in fixed point, plus the number of fractional bits.
fn fixed_point_taps(input_size: usize, output_size: usize) -> (Vec<Taps>, u32) {
    // Pillow's bicubic (Keys, a = -0.5), as torch's `HelperInterpCubic::aa_filter`.
    fn cubic(x: f64) -> f64 {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
        } else {
            0.0
        }
    }
    const INTERP_SIZE: f64 = 4.0;
    let scale = input_size as f64 / output_size as f64;
    // Downscaling widens the filter by the scale factor (that is the antialiasing).
    let support = if scale >= 1.0 { INTERP_SIZE * 0.5 * scale } else { INTERP_SIZE * 0.5 };
    let max_taps = support.ceil() as i64 * 2 + 1;
    let inv_scale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };

    let mut windows = Vec::with_capacity(output_size);
    let mut max_weight = 0.0f64;
    for i in 0..output_size {
        let center = scale * (i as f64 + 0.5);
        // static_cast<int64_t> truncates toward zero
        let first = ((center - support + 0.5) as i64).max(0);
        let end = ((center + support + 0.5) as i64).min(input_size as i64);
        let count = (end - first).clamp(0, max_taps);
        let mut weights: Vec<f64> =
            (0..count).map(|j| cubic((j as f64 + first as f64 - center + 0.5) * inv_scale)).collect();
        let total: f64 = weights.iter().sum();
        if total != 0.0 {
            for w in &mut weights {
                *w /= total;
                max_weight = max_weight.max(*w);
            }
        }
        windows.push((first as usize, weights));
    }
    // The most fractional bits (at most 22) that keep the largest weight below 2^15 (int16).
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + max_weight * (1u64 << (precision + 1)) as f64) as i64;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let one = (1u64 << precision) as f64;
    let taps = windows
        .into_iter()
        .map(|(first, weights)| Taps {
            first,
            weights: weights
                .into_iter()
                .map(|w| {
                    let v = w * one;
                    let rounded = if v < 0.0 { (-0.5 + v) as i32 } else { (0.5 + v) as i32 };
                    rounded as i16 as i32
                })
                .collect(),
        })
        .collect();
    (taps, precision)
}

/// `clamp((acc + 2^(p-1)) >> p, 0, 255)`: the rounding of the integer kernels.
#[inline]
fn to_u8(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

fn resize_horizontal(image: &RgbImage, width: usize) -> RgbImage {
    let (taps, precision) = fixed_point_taps(image.width, width);
    let half = 1i32 << (precision - 1);
    let mut data = vec![0u8; image.height * width * 3];
    data.par_chunks_mut(width * 3).enumerate().for_each(|(y, out_row)| {
        let row = &image.data[y * image.width * 3..(y + 1) * image.width * 3];
        for (x, tap) in taps.iter().enumerate() {
            let mut acc = [half; 3];
            for (j, &w) in tap.weights.iter().enumerate() {
                let px = &row[(tap.first + j) * 3..(tap.first + j) * 3 + 3];
                for c in 0..3 {
                    acc[c] += px[c] as i32 * w;
                }
            }
            for c in 0..3 {
                out_row[x * 3 + c] = to_u8(acc[c], precision);
            }
        }
    });
    RgbImage { width, height: image.height, data }
}

fn resize_vertical(image: &RgbImage, height: usize) -> RgbImage {
    let (taps, precision) = fixed_point_taps(image.height, height);
    let half = 1i32 << (precision - 1);
    let row_len = image.width * 3;
    let mut data = vec![0u8; height * row_len];
    data.par_chunks_mut(row_len).zip(taps.par_iter()).for_each_init(
        || Vec::<i32>::with_capacity(row_len),
        |acc, (out_row, tap)| {
            acc.clear();
            acc.resize(row_len, half);
            for (j, &w) in tap.weights.iter().enumerate() {
                let row = &image.data[(tap.first + j) * row_len..(tap.first + j + 1) * row_len];
                for (a, &p) in acc.iter_mut().zip(row) {
                    *a += p as i32 * w;
                }
            }
            for (o, &a) in out_row.iter_mut().zip(acc.iter()) {
                *o = to_u8(a, precision);
            }
        },
    );
    RgbImage { width: image.width, height, data }
}

/// Per channel, the normalised value of every byte: `rescale_and_normalize` as a lookup table.
struct Normalizer {
    table: [[f32; 256]; 3],
}

impl Normalizer {
    fn new(mean: [f64; 3], std: [f64; 3], rescale: f64, do_rescale: bool, do_normalize: bool) -> Self {
        let mut table = [[0.0f32; 256]; 3];
        for c in 0..3 {
            for (v, out) in table[c].iter_mut().enumerate() {
                let x = v as f32;
                *out = match (do_rescale, do_normalize) {
                    // Fused: normalize(x, mean / rescale, std / rescale), the f32 tensors that
                    // `tensor(mean) * (1 / rescale_factor)` gives: (x - 127.5) / 127.5 for 0.5.
                    (true, true) => {
                        let inv = (1.0 / rescale) as f32;
                        (x - mean[c] as f32 * inv) / (std[c] as f32 * inv)
                    }
                    (false, true) => (x - mean[c] as f32) / std[c] as f32,
                    (true, false) => x * rescale as f32,
                    (false, false) => x,
                };
            }
        }
        Normalizer { table }
    }
}

/// Lays frames out as patch rows `[t * h * w, 3 * temporal * patch^2]` in 2×2-merge block order,
/// row inner order (channel, frame, y, x). `frames.len()` is a multiple of `temporal`.
fn patchify(
    frames: &[&RgbImage],
    temporal: usize,
    patch: usize,
    merge: usize,
    normalizer: &Normalizer,
) -> (Vec<f32>, GridThw) {
    let (height, width) = (frames[0].height, frames[0].width);
    let (grid_t, grid_h, grid_w) = (frames.len() / temporal, height / patch, width / patch);
    let row_len = 3 * temporal * patch * patch;
    let mut rows = vec![0.0f32; grid_t * grid_h * grid_w * row_len];
    let blocks_w = grid_w / merge;
    rows.par_chunks_mut(row_len).enumerate().for_each(|(index, row)| {
        // index = ((t * blocks_h + block_row) * blocks_w + block_col) * merge^2 + in_row * merge + in_col
        let in_col = index % merge;
        let in_row = index / merge % merge;
        let block = index / (merge * merge);
        let block_col = block % blocks_w;
        let block_row = block / blocks_w % (grid_h / merge);
        let t = block / blocks_w / (grid_h / merge);
        let (y0, x0) = ((block_row * merge + in_row) * patch, (block_col * merge + in_col) * patch);
        let mut out = row.iter_mut();
        for c in 0..3 {
            let table = &normalizer.table[c];
            for frame in &frames[t * temporal..(t + 1) * temporal] {
                for y in 0..patch {
                    for x in 0..patch {
                        *out.next().expect("row length") = table[frame.pixel(y0 + y, x0 + x, c) as usize];
                    }
                }
            }
        }
    });
    (rows, (grid_t, grid_h, grid_w))
}

/// One image ready for the tower.
#[derive(Clone, Debug)]
pub struct ProcessedImage {
    /// `[t * h * w, 1536]` patch rows (see the module documentation).
    pub pixel_values: Vec<f32>,
    pub grid: GridThw,
}

impl ProcessedImage {
    /// Merged tokens this image contributes to the prompt: `t * h * w / merge^2`.
    pub fn token_count(&self, merge: usize) -> usize {
        self.grid.0 * self.grid.1 * self.grid.2 / (merge * merge)
    }
}

/// transformers' image processor for Qwen3.5 (`preprocessor_config.json`).
#[derive(Clone, Debug)]
pub struct ImagePreprocessor {
    pub config: ImagePreprocessorConfig,
    /// Images with more pixels than this are refused before decoding.
    pub max_input_pixels: u64,
}

impl ImagePreprocessor {
    pub fn new(config: ImagePreprocessorConfig) -> Self {
        ImagePreprocessor { config, max_input_pixels: DEFAULT_MAX_INPUT_PIXELS }
    }

    /// Reads `preprocessor_config.json` of a model folder (Qwen3.5's values if there is none).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Ok(Self::new(ImagePreprocessorConfig::from_dir(dir)?))
    }

    fn factor(&self) -> usize {
        self.config.patch_size * self.config.merge_size
    }

    /// The `(height, width)` an image of this size is resized to.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let (min_pixels, max_pixels) = self.config.pixel_bounds();
        if !self.config.do_resize {
            check_aspect_ratio(height, width)?;
            return Ok((height, width));
        }
        smart_resize(height, width, self.factor(), min_pixels, max_pixels)
    }

    /// The image as the tower sees it, before normalisation.
    pub fn resize(&self, image: &RgbImage) -> Result<RgbImage> {
        check_input_size("image", image.width as u64, image.height as u64, self.max_input_pixels)?;
        let (height, width) = self.target_size(image.height, image.width)?;
        Ok(resize_bicubic(image, height, width))
    }

    pub fn preprocess(&self, image: &RgbImage) -> Result<ProcessedImage> {
        self.patchify(&self.resize(image)?)
    }

    /// The patch grid [`preprocess`](Self::preprocess) gives an image of this size, from the size
    /// alone: what the prompt's placeholders and positions need.
    pub fn grid(&self, height: usize, width: usize) -> Result<GridThw> {
        let (h, w) = self.target_size(height, width)?;
        check_multiple(w, h, self.factor())?;
        // One temporal patch: the image fills each of its frames.
        Ok((1, h / self.config.patch_size, w / self.config.patch_size))
    }

    /// Normalises an already resized image (sides multiples of `patch_size * merge_size`) and
    /// lays out its patch rows.
    pub fn patchify(&self, resized: &RgbImage) -> Result<ProcessedImage> {
        let c = &self.config;
        check_multiple(resized.width, resized.height, self.factor())?;
        let normalizer =
            Normalizer::new(c.image_mean, c.image_std, c.rescale_factor, c.do_rescale, c.do_normalize);
        // An image fills every frame of its temporal patch.
        let frames = vec![resized; c.temporal_patch_size];
        let (pixel_values, grid) =
            patchify(&frames, c.temporal_patch_size, c.patch_size, c.merge_size, &normalizer);
        Ok(ProcessedImage { pixel_values, grid })
    }

    /// Decodes and preprocesses an image file.
    pub fn load(&self, path: &Path) -> Result<ProcessedImage> {
        self.preprocess(&load_image(path, self.max_input_pixels)?)
    }
}

/// The frames of a video and their rate.
#[derive(Clone, Debug)]
pub struct VideoFrames {
    pub frames: Vec<RgbImage>,
    /// Frames per second of `frames`.
    pub fps: f64,
}

/// Animated GIFs that ask for no delay (or under 20 ms) play at 10 frames per second in browsers;
/// the same convention gives such a GIF its frame rate here.
const GIF_DEFAULT_FRAME_MS: f64 = 100.0;

/// Loads a video: a folder of image files (frames in file-name order, `folder_fps` frames per
/// second) or an animated GIF (all frames, composited; its frame rate from the frame delays).
pub fn load_video(path: &Path, folder_fps: f64, max_input_pixels: u64) -> Result<VideoFrames> {
    let io_error = |source| Error::Io { path: path.to_owned(), source };
    if path.is_dir() {
        if !(folder_fps > 0.0 && folder_fps.is_finite()) {
            return Err(invalid(format!("{}: the frame rate {folder_fps} is not positive", path.display())));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io_error)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg" | "webp" | "gif")
                })
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(invalid(format!(
                "{}: no PNG, JPEG, WebP or GIF frames in the folder",
                path.display()
            )));
        }
        let name = path.display().to_string();
        let mut budget = VideoBudget::new(&name, max_input_pixels);
        let mut frames = Vec::with_capacity(files.len());
        for file in &files {
            let frame = load_image(file, max_input_pixels)?;
            budget.spend(frame.width as u64 * frame.height as u64)?;
            frames.push(frame);
        }
        return Ok(VideoFrames { frames, fps: folder_fps });
    }
    let bytes = crate::files::read(path, crate::files::MEDIA_LIMIT).map_err(io_error)?;
    decode_gif_video(&bytes, &path.display().to_string(), max_input_pixels)
}

/// All frames of an animated GIF.
pub fn decode_gif_video(bytes: &[u8], name: &str, max_input_pixels: u64) -> Result<VideoFrames> {
    let reader = reader(bytes, name, max_input_pixels)?;
    if reader.format() != Some(ImageFormat::Gif) {
        return Err(invalid(format!("{name}: a video is a folder of frames or an animated GIF")));
    }
    let mut decoder = image::codecs::gif::GifDecoder::new(Cursor::new(bytes))
        .map_err(|e| invalid(format!("{name}: cannot decode the GIF: {e}")))?;
    decoder
        .set_limits(decoder_limits(max_input_pixels))
        .map_err(|e| invalid(format!("{name}: cannot decode the GIF: {e}")))?;
    let (width, height) = decoder.dimensions();
    check_input_size(name, width as u64, height as u64, max_input_pixels)?;
    let mut frames = Vec::new();
    let mut total_ms = 0.0;
    let mut budget = VideoBudget::new(name, max_input_pixels);
    for frame in decoder.into_frames() {
        // Every frame is composited on the whole canvas.
        budget.spend(width as u64 * height as u64)?;
        let frame = frame.map_err(|e| invalid(format!("{name}: cannot decode the GIF: {e}")))?;
        let (numer, denom) = frame.delay().numer_denom_ms();
        let ms = numer as f64 / denom.max(1) as f64;
        total_ms += if ms < 20.0 { GIF_DEFAULT_FRAME_MS } else { ms };
        frames.push(from_dynamic(DynamicImage::ImageRgba8(frame.into_buffer())));
    }
    if frames.is_empty() {
        return Err(invalid(format!("{name}: the GIF has no frames")));
    }
    let fps = frames.len() as f64 / (total_ms / 1000.0);
    Ok(VideoFrames { frames, fps })
}

/// Counts the pixels of a video's frames as they are decoded.
struct VideoBudget<'a> {
    name: &'a str,
    spent: u64,
    limit: u64,
}

impl<'a> VideoBudget<'a> {
    fn new(name: &'a str, max_input_pixels: u64) -> Self {
        VideoBudget { name, spent: 0, limit: max_input_pixels.saturating_mul(VIDEO_PIXELS_PER_IMAGE_LIMIT) }
    }

    fn spend(&mut self, pixels: u64) -> Result<()> {
        self.spent = self.spent.saturating_add(pixels);
        if self.spent > self.limit {
            return Err(invalid(format!(
                "{}: the video's frames hold more than {} pixels (the limit for one video)",
                self.name, self.limit
            )));
        }
        Ok(())
    }
}

/// One video ready for the tower, with what its prompt needs.
#[derive(Clone, Debug)]
pub struct ProcessedVideo {
    /// `[t * h * w, 1536]` patch rows; temporal patch `i` holds sampled frames `2i` and `2i + 1`.
    pub pixel_values: Vec<f32>,
    pub grid: GridThw,
    /// The frames of the source that were sampled.
    pub frame_indices: Vec<usize>,
    /// Seconds into the video of each temporal patch (the mean of its frames' times); the prompt
    /// writes them as `<{t:.1} seconds>`.
    pub timestamps: Vec<f64>,
}

/// How a video will be preprocessed ([`VideoPreprocessor::plan`]).
#[derive(Clone, Debug, PartialEq)]
pub struct VideoPlan {
    /// The frames of the source that are sampled.
    pub frame_indices: Vec<usize>,
    /// The size every sampled frame is resized to.
    pub height: usize,
    pub width: usize,
    pub grid: GridThw,
    /// Seconds into the video of each temporal patch.
    pub timestamps: Vec<f64>,
}

/// transformers' `Qwen3VLVideoProcessor` (`video_preprocessor_config.json`).
#[derive(Clone, Debug)]
pub struct VideoPreprocessor {
    pub config: VideoPreprocessorConfig,
    /// Frames with more pixels than this are refused.
    pub max_input_pixels: u64,
}

impl VideoPreprocessor {
    pub fn new(config: VideoPreprocessorConfig) -> Self {
        VideoPreprocessor { config, max_input_pixels: DEFAULT_MAX_INPUT_PIXELS }
    }

    pub fn from_dir(dir: &Path) -> Result<Self> {
        Ok(Self::new(VideoPreprocessorConfig::from_dir(dir)?))
    }

    /// `sample_frames`: `fps` frames per second of video, at least `min_frames`, at most
    /// `max_frames` and the frames there are, spread evenly from the first frame to the last.
    pub fn sample_frame_indices(&self, total_frames: usize, source_fps: f64) -> Vec<usize> {
        let c = &self.config;
        // num_frames = int(total_num_frames / metadata.fps * fps)
        let wanted = (total_frames as f64 / source_fps * c.fps) as usize;
        let count = wanted.max(c.min_frames).min(c.max_frames).min(total_frames);
        linspace_rounded(total_frames.saturating_sub(1), count)
    }

    /// What [`preprocess`](Self::preprocess) will make of a video, from its frame count, size and
    /// rate alone (no pixel is touched): the sampled frames, the size they are resized to, the
    /// grid and the timestamps. Checks the frames as `preprocess` does.
    pub fn plan(&self, video: &VideoFrames) -> Result<VideoPlan> {
        let c = &self.config;
        let first = video.frames.first().ok_or_else(|| invalid("the video has no frames".into()))?;
        if !(video.fps > 0.0 && video.fps.is_finite()) {
            return Err(invalid(format!("the video's frame rate {} is not positive", video.fps)));
        }
        for (i, frame) in video.frames.iter().enumerate() {
            check_input_size(
                &format!("video frame {i}"),
                frame.width as u64,
                frame.height as u64,
                self.max_input_pixels,
            )?;
            if (frame.width, frame.height) != (first.width, first.height) {
                return Err(invalid(format!(
                    "video frame {i} is {}x{} but frame 0 is {}x{}: all frames must have one size",
                    frame.width, frame.height, first.width, first.height
                )));
            }
        }
        let frame_indices = self.sample_frame_indices(video.frames.len(), video.fps);
        let factor = c.patch_size * c.merge_size;
        let (height, width) = if c.do_resize {
            smart_resize_video(
                frame_indices.len(),
                first.height,
                first.width,
                c.temporal_patch_size,
                factor,
                c.size.shortest_edge,
                c.size.longest_edge,
            )?
        } else {
            (first.height, first.width)
        };
        check_multiple(width, height, factor)?;
        // Timestamps of the padded frames, as `_calculate_timestamps` pads the sampled indices.
        let mut padded_indices = frame_indices.clone();
        while !padded_indices.len().is_multiple_of(c.temporal_patch_size) {
            padded_indices.push(*padded_indices.last().expect("at least one frame"));
        }
        // `_calculate_timestamps`: the mean time of the first and last frame of each temporal patch.
        let timestamps: Vec<f64> = padded_indices
            .chunks(c.temporal_patch_size)
            .map(|group| {
                let (a, b) = (group[0] as f64 / video.fps, group[group.len() - 1] as f64 / video.fps);
                (a + b) / 2.0
            })
            .collect();
        let grid = (timestamps.len(), height / c.patch_size, width / c.patch_size);
        Ok(VideoPlan { frame_indices, height, width, grid, timestamps })
    }

    pub fn preprocess(&self, video: &VideoFrames) -> Result<ProcessedVideo> {
        let VideoPlan { frame_indices, height, width, grid, timestamps } = self.plan(video)?;
        let resized: Vec<RgbImage> =
            frame_indices.par_iter().map(|&i| resize_bicubic(&video.frames[i], height, width)).collect();
        let (pixel_values, patched) = self.patchify(&resized)?;
        debug_assert_eq!(patched, grid, "the plan and the patches agree");
        Ok(ProcessedVideo { pixel_values, grid, frame_indices, timestamps })
    }

    /// Normalises already resized frames (all one size, sides multiples of `patch_size *
    /// merge_size`) and lays out their patch rows; an odd last temporal patch repeats the last
    /// frame.
    pub fn patchify(&self, resized: &[RgbImage]) -> Result<(Vec<f32>, GridThw)> {
        let c = &self.config;
        let first = resized.first().ok_or_else(|| invalid("the video has no frames".into()))?;
        check_multiple(first.width, first.height, c.patch_size * c.merge_size)?;
        if let Some(i) = resized.iter().position(|f| (f.width, f.height) != (first.width, first.height)) {
            return Err(invalid(format!("resized frame {i} differs in size from frame 0")));
        }
        let mut frames: Vec<&RgbImage> = resized.iter().collect();
        let last = &resized[resized.len() - 1];
        while !frames.len().is_multiple_of(c.temporal_patch_size) {
            frames.push(last);
        }
        let normalizer =
            Normalizer::new(c.image_mean, c.image_std, c.rescale_factor, c.do_rescale, c.do_normalize);
        Ok(patchify(&frames, c.temporal_patch_size, c.patch_size, c.merge_size, &normalizer))
    }

    /// Loads (see [`load_video`]) and preprocesses a video.
    pub fn load(&self, path: &Path, folder_fps: f64) -> Result<ProcessedVideo> {
        self.preprocess(&load_video(path, folder_fps, self.max_input_pixels)?)
    }
}

fn check_multiple(width: usize, height: usize, factor: usize) -> Result<()> {
    if width == 0 || height == 0 || !width.is_multiple_of(factor) || !height.is_multiple_of(factor) {
        return Err(invalid(format!(
            "a {width}x{height} image cannot be cut into patches: both sides must be positive multiples of {factor} \
             (patch_size * merge_size); is do_resize false?"
        )));
    }
    Ok(())
}

/// `np.linspace(0, stop, count).round().astype(int)`: numpy's `i * step` with the last value
/// exactly `stop`, rounded half to even.
fn linspace_rounded(stop: usize, count: usize) -> Vec<usize> {
    match count {
        0 => Vec::new(),
        1 => vec![0],
        _ => {
            let step = stop as f64 / (count - 1) as f64;
            (0..count)
                .map(|i| if i == count - 1 { stop } else { (i as f64 * step).round_ties_even() as usize })
                .collect()
        }
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidInput(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_python_examples() {
        // ARCHITECTURE-qwen3_5.md §3: 224x160 (WxH) -> 320x224; 300x300 -> 288x288.
        assert_eq!(smart_resize(160, 224, 32, 65_536, 16_777_216).unwrap(), (224, 320));
        assert_eq!(smart_resize(300, 300, 32, 65_536, 16_777_216).unwrap(), (288, 288));
        // round(400 / 32) = round(12.5) = 12 (half to even)
        assert_eq!(smart_resize(260, 400, 32, 65_536, 16_777_216).unwrap(), (256, 384));
        // over max_pixels: floor after scaling down
        assert_eq!(smart_resize(10_000, 10_000, 32, 65_536, 16_777_216).unwrap(), (4096, 4096));
        assert!(smart_resize(10, 2010, 32, 65_536, 16_777_216).is_err());
        assert!(smart_resize(10, 2000, 32, 65_536, 16_777_216).is_ok());
    }

    #[test]
    fn linspace_rounds_half_to_even() {
        assert_eq!(linspace_rounded(5, 4), vec![0, 2, 3, 5]);
        // 0, 1.5, 3, 4.5, 6 -> 0, 2, 3, 4, 6
        assert_eq!(linspace_rounded(6, 5), vec![0, 2, 3, 4, 6]);
        assert_eq!(linspace_rounded(0, 1), vec![0]);
    }

    #[test]
    fn resize_to_same_size_is_identity_and_constant_stays_constant() {
        let image = RgbImage::new(7, 5, (0..105).map(|v| v as u8).collect()).unwrap();
        assert_eq!(resize_bicubic(&image, 5, 7), image);
        let flat = RgbImage::new(9, 13, vec![77; 9 * 13 * 3]).unwrap();
        for (h, w) in [(32, 32), (4, 3), (13, 40)] {
            assert!(resize_bicubic(&flat, h, w).data.iter().all(|&v| v == 77));
        }
    }
}
