//! Vision preprocessing, tower and prompt positions against transformers
//! (`scripts/make_vision_fixtures.py` wrote `fixtures/vision/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qwenrt::vision::positions::{expand_prompt_ids, expand_prompt_text, rope_index, VideoPlaceholder};
use qwenrt::vision::preprocess::{decode_gif_video, decode_image, load_image, load_video, RgbImage};
use qwenrt::vision::{GridThw, ImagePreprocessor, VideoPreprocessor, VisionModelConfig, VisionTower};
use qwenrt::WeightDtype;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

const IMAGES: [&str; 3] = ["a_small.png", "b_photo.jpg", "c_tall.png"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("fixtures/vision")
}

/// Tensors of one reference file, widened to what the tests compare.
struct Reference {
    tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

impl Reference {
    fn load(name: &str) -> Self {
        let bytes = std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, (view.dtype(), view.shape().to_vec(), view.data().to_vec())))
            .collect();
        Reference { tensors }
    }

    fn get(&self, name: &str, dtype: Dtype) -> (&[usize], &[u8]) {
        let (d, shape, data) = self.tensors.get(name).unwrap_or_else(|| panic!("no reference tensor {name}"));
        assert_eq!(*d, dtype, "{name}");
        (shape, data)
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let (_, data) = self.get(name, Dtype::F32);
        data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn f64(&self, name: &str) -> Vec<f64> {
        let (_, data) = self.get(name, Dtype::F64);
        data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn i32(&self, name: &str) -> Vec<i64> {
        let (_, data) = self.get(name, Dtype::I32);
        data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect()
    }

    fn i64(&self, name: &str) -> Vec<i64> {
        let (_, data) = self.get(name, Dtype::I64);
        data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        self.i32(name).into_iter().map(|v| v as u32).collect()
    }

    fn grid(&self, name: &str) -> GridThw {
        let g = self.i32(name);
        (g[0] as usize, g[1] as usize, g[2] as usize)
    }

    /// `[H, W, 3]` uint8 as an image.
    fn image(&self, name: &str) -> RgbImage {
        let (shape, data) = self.get(name, Dtype::U8);
        RgbImage::new(shape[1], shape[0], data.to_vec()).unwrap()
    }

    /// `[T, H, W, 3]` uint8 as frames.
    fn frames(&self, name: &str) -> Vec<RgbImage> {
        let (shape, data) = self.get(name, Dtype::U8);
        data.chunks_exact(shape[1] * shape[2] * 3)
            .map(|f| RgbImage::new(shape[2], shape[1], f.to_vec()).unwrap())
            .collect()
    }
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).fold(0.0, f64::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
    let nb: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    dot / (na * nb).sqrt()
}

/// (differing bytes, largest difference) between two images of one size.
fn byte_diff(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.data.iter().zip(&b.data).fold((0, 0), |(n, m), (&x, &y)| (n + (x != y) as usize, m.max(x.abs_diff(y))))
}

fn image_preprocessor() -> ImagePreprocessor {
    ImagePreprocessor::from_dir(&fixtures()).unwrap()
}

fn video_preprocessor() -> VideoPreprocessor {
    VideoPreprocessor::from_dir(&fixtures()).unwrap()
}

fn row_len() -> usize {
    3 * 2 * 16 * 16
}

/// The reference pixel rows of all three images, rebuilt exactly from the resized images.
fn reference_image_rows(reference: &Reference) -> (Vec<f32>, Vec<GridThw>) {
    let processor = image_preprocessor();
    let mut rows = Vec::new();
    let mut grids = Vec::new();
    for i in 0..IMAGES.len() {
        let image = processor.patchify(&reference.image(&format!("image{i}.resized"))).unwrap();
        assert_eq!(image.grid, reference.grid(&format!("image{i}.grid")));
        rows.extend(image.pixel_values);
        grids.push(image.grid);
    }
    (rows, grids)
}

fn reference_video_rows(reference: &Reference) -> (Vec<f32>, GridThw) {
    let (rows, grid) = video_preprocessor().patchify(&reference.frames("video.resized")).unwrap();
    assert_eq!(grid, reference.grid("video.grid"));
    (rows, grid)
}

#[test]
fn configs_are_the_published_ones() {
    let image = image_preprocessor().config;
    assert_eq!(image.pixel_bounds(), (65_536, 16_777_216));
    assert_eq!((image.patch_size, image.temporal_patch_size, image.merge_size), (16, 2, 2));
    assert_eq!(image, qwenrt::vision::ImagePreprocessorConfig::qwen3_5());
    assert_eq!(video_preprocessor().config, qwenrt::vision::VideoPreprocessorConfig::qwen3_5());
    let model = VisionModelConfig::from_file(&root().join("fixtures/models/tiny-vl/config.json")).unwrap();
    assert_eq!(model.tokens, qwenrt::vision::VisionTokens::default());
    assert_eq!((model.vision.depth, model.vision.hidden_size, model.vision.out_hidden_size), (1, 32, 12));
}

/// Decoding, smart_resize, the bicubic resize and the patch layout, against transformers'
/// processor on the same files. PNG decoding is lossless, so those images must match bit for bit;
/// the JPEG decoders (libjpeg-turbo there, zune-jpeg here) may round differently.
#[test]
fn image_preprocessing_matches_transformers() {
    let reference = Reference::load("expected.safetensors");
    let processor = image_preprocessor();
    for (i, name) in IMAGES.iter().enumerate() {
        let decoded = load_image(&fixtures().join(name), processor.max_input_pixels).unwrap();
        let decoded_sum: i64 = decoded.data.iter().map(|&v| v as i64).sum();
        let resized = processor.resize(&decoded).unwrap();
        let (differing, largest) = byte_diff(&resized, &reference.image(&format!("image{i}.resized")));
        let processed = processor.preprocess(&decoded).unwrap();
        assert_eq!(processed.grid, reference.grid(&format!("image{i}.grid")), "{name}");
        let index = reference.i32(&format!("image{i}.rows_index"));
        let ours: Vec<f32> = index
            .iter()
            .flat_map(|&r| {
                processed.pixel_values[r as usize * row_len()..(r as usize + 1) * row_len()].to_vec()
            })
            .collect();
        let pixel_diff = max_abs_diff(&ours, &reference.f32(&format!("image{i}.rows")));
        eprintln!(
            "{name}: {}x{} -> grid {:?}; resized bytes differing {differing} (max {largest}), \
             max |pixel value diff| {pixel_diff:.3e}, decoded sum diff {}",
            decoded.width,
            decoded.height,
            processed.grid,
            decoded_sum - reference.i64(&format!("image{i}.decoded_sum"))[0]
        );
        if name.ends_with(".png") {
            assert_eq!(decoded_sum, reference.i64(&format!("image{i}.decoded_sum"))[0], "{name}");
            assert_eq!((differing, pixel_diff), (0, 0.0), "{name}");
        } else {
            // zune-jpeg is not bit-exact with libjpeg-turbo (IDCT, chroma upsampling and colour
            // conversion round differently): on this photo a quarter of the decoded values differ,
            // by 1-2 levels mostly and 4 at most, and the resize carries that through.
            assert!(
                largest <= 6 && differing * 5 < resized.data.len() * 2,
                "{name}: {differing} of {} bytes differ, by up to {largest}",
                resized.data.len()
            );
            assert!(pixel_diff <= 6.0 / 127.5 + 1e-6, "{name}: {pixel_diff}");
        }
    }
}

/// The same resize and patch layout from the stored resized images: isolates the layout from
/// the decoders.
#[test]
fn patch_rows_from_resized_images_are_exact() {
    let reference = Reference::load("expected.safetensors");
    let (rows, _) = reference_image_rows(&reference);
    let mut start = 0;
    for i in 0..IMAGES.len() {
        let (t, h, w) = reference.grid(&format!("image{i}.grid"));
        let index = reference.i32(&format!("image{i}.rows_index"));
        let ours: Vec<f32> = index
            .iter()
            .flat_map(|&r| {
                rows[(start + r as usize) * row_len()..(start + r as usize + 1) * row_len()].to_vec()
            })
            .collect();
        assert_eq!(ours, reference.f32(&format!("image{i}.rows")), "image {i}");
        start += t * h * w;
    }
}

#[test]
fn video_preprocessing_matches_transformers() {
    let reference = Reference::load("expected.safetensors");
    let processor = video_preprocessor();
    let clip = load_video(&fixtures().join("v_clip.gif"), 1.0, processor.max_input_pixels).unwrap();
    assert_eq!(clip.frames.len(), 6);
    assert!((clip.fps - 4.0).abs() < 1e-9, "GIF frame rate {}", clip.fps);
    let video = processor.preprocess(&clip).unwrap();
    assert_eq!(video.grid, reference.grid("video.grid"));
    let indices: Vec<i64> = video.frame_indices.iter().map(|&i| i as i64).collect();
    assert_eq!(indices, reference.i32("video.frame_indices"));
    assert_eq!(video.timestamps, reference.f64("video.timestamps"));
    let strided: Vec<f32> =
        video.pixel_values.chunks_exact(row_len()).step_by(16).flat_map(|r| r.to_vec()).collect();
    assert_eq!(strided, reference.f32("video.rows"));
    let (rows, _) = reference_video_rows(&reference);
    assert_eq!(video.pixel_values, rows);

    // The same clip as a folder of frames: same rows.
    let dir = std::env::temp_dir().join(format!("qwenrt-vision-frames-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, frame) in clip.frames.iter().enumerate() {
        image::save_buffer(
            dir.join(format!("frame{i:03}.png")),
            &frame.data,
            frame.width as u32,
            frame.height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    }
    let from_folder = processor.load(&dir, 4.0).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(from_folder.pixel_values, video.pixel_values);
    assert_eq!(from_folder.timestamps, video.timestamps);
}

#[test]
fn webp_and_gif_decode_like_their_sources() {
    let limit = image_preprocessor().max_input_pixels;
    let png = load_image(&fixtures().join("a_small.png"), limit).unwrap();
    let webp = load_image(&fixtures().join("d_small.webp"), limit).unwrap();
    assert_eq!(webp, png, "lossless WebP");
    let gif_first = load_image(&fixtures().join("v_clip.gif"), limit).unwrap();
    let bytes = std::fs::read(fixtures().join("v_clip.gif")).unwrap();
    let clip = decode_gif_video(&bytes, "v_clip.gif", limit).unwrap();
    assert_eq!(gif_first, clip.frames[0], "a GIF as an image is its first frame");
}

/// The tiny 2-block tower (bf16 weights) at f32 against transformers' float32 forward.
#[test]
fn tower_matches_transformers_in_f32() {
    let reference = Reference::load("expected.safetensors");
    let tower = VisionTower::load_dir(&fixtures().join("tower"), WeightDtype::F32).unwrap();
    let (rows, grids) = reference_image_rows(&reference);

    let hidden = tower.encode_patches(&rows, &grids).unwrap();
    let want_hidden = reference.f32("tower.image_hidden");
    let (cos_h, max_h) = (cosine(&hidden, &want_hidden), max_abs_diff(&hidden, &want_hidden));
    let embeds = tower.merge(&hidden).unwrap();
    let want = reference.f32("tower.image_embeds");
    let (cos_i, max_i) = (cosine(&embeds, &want), max_abs_diff(&embeds, &want));
    assert_eq!(embeds, tower.encode(&rows, &grids).unwrap());

    let (video_rows, video_grid) = reference_video_rows(&reference);
    let video = tower.encode(&video_rows, &[video_grid]).unwrap();
    let want_video = reference.f32("tower.video_embeds");
    let (cos_v, max_v) = (cosine(&video, &want_video), max_abs_diff(&video, &want_video));
    eprintln!(
        "tower f32: blocks output cosine {cos_h:.9} max|diff| {max_h:.2e}; image embeds cosine {cos_i:.9} \
         max|diff| {max_i:.2e} (std {:.3}); video embeds cosine {cos_v:.9} max|diff| {max_v:.2e}",
        std_dev(&want)
    );
    for (what, cos, max) in [("blocks", cos_h, max_h), ("images", cos_i, max_i), ("video", cos_v, max_v)] {
        assert!(cos >= 0.99999 && max < 2e-5, "{what}: cosine {cos}, max |diff| {max}");
    }

    // End to end from the files: the JPEG decoder's rounding is the only difference left.
    let processor = image_preprocessor();
    let file_rows: Vec<f32> =
        IMAGES.iter().flat_map(|name| processor.load(&fixtures().join(name)).unwrap().pixel_values).collect();
    let from_files = tower.encode(&file_rows, &grids).unwrap();
    let (cos_f, max_f) = (cosine(&from_files, &want), max_abs_diff(&from_files, &want));
    eprintln!("tower f32 from the image files: cosine {cos_f:.9} max|diff| {max_f:.2e}");
    assert!(cos_f >= 0.9999, "from files: cosine {cos_f}");
}

/// tiny-vl's own 1-block tower (sharded real-checkpoint layout): what the prompt test embeds.
#[test]
fn tiny_vl_tower_matches_transformers() {
    let reference = Reference::load("expected.safetensors");
    let prompt = Reference::load("prompt.safetensors");
    let tower = VisionTower::load_dir(&root().join("fixtures/models/tiny-vl"), WeightDtype::F32).unwrap();
    let (rows, grids) = reference_image_rows(&reference);
    let images = tower.encode(&rows, &grids).unwrap();
    let (video_rows, video_grid) = reference_video_rows(&reference);
    let video = tower.encode(&video_rows, &[video_grid]).unwrap();
    for (what, ours, want) in [
        ("images", images, prompt.f32("tinyvl.image_embeds")),
        ("video", video, prompt.f32("tinyvl.video_embeds")),
    ] {
        let (cos, max) = (cosine(&ours, &want), max_abs_diff(&ours, &want));
        eprintln!("tiny-vl tower {what}: cosine {cos:.9} max|diff| {max:.2e}");
        assert!(cos >= 0.99999 && max < 2e-5, "{what}: cosine {cos}, max |diff| {max}");
    }
}

/// Quantized towers stay close to the f32 one (weights and activations in 8 bits).
#[test]
fn quantized_tower_stays_close_to_f32() {
    let reference = Reference::load("expected.safetensors");
    let (rows, grids) = reference_image_rows(&reference);
    let dir = fixtures().join("tower");
    let exact = VisionTower::load_dir(&dir, WeightDtype::F32).unwrap().encode(&rows, &grids).unwrap();
    for (dtype, bound) in [(WeightDtype::Bf16, 0.9999), (WeightDtype::Int8, 0.999), (WeightDtype::Int4, 0.98)]
    {
        let ours = VisionTower::load_dir(&dir, dtype).unwrap().encode(&rows, &grids).unwrap();
        let cos = cosine(&ours, &exact);
        eprintln!(
            "tower {}: cosine to f32 {cos:.6}, max|diff| {:.3e}",
            dtype.name(),
            max_abs_diff(&ours, &exact)
        );
        assert!(cos >= bound, "{}: cosine {cos} < {bound}", dtype.name());
    }
}

fn prompt_vision_inputs(reference: &Reference) -> (Vec<GridThw>, VideoPlaceholder) {
    let grids = (0..IMAGES.len()).map(|i| reference.grid(&format!("image{i}.grid"))).collect();
    let video = VideoPlaceholder {
        grid: reference.grid("video.grid"),
        timestamps: reference.f64("video.timestamps"),
    };
    (grids, video)
}

/// Placeholder expansion and M-RoPE positions of a two-turn prompt with three images and a
/// video, against the processor's input_ids and `get_rope_index`.
#[test]
fn expanded_ids_and_positions_match_transformers() {
    let reference = Reference::load("expected.safetensors");
    let prompt = Reference::load("prompt.safetensors");
    let meta = meta();
    let tokens =
        VisionModelConfig::from_file(&root().join("fixtures/models/tiny-vl/config.json")).unwrap().tokens;
    let (images, video) = prompt_vision_inputs(&reference);
    let timestamp_ids = &meta["prompt"]["timestamp_token_ids"];
    let encode = |text: &str| {
        let ids = timestamp_ids[text].as_array().unwrap_or_else(|| panic!("no ids for {text}"));
        Ok(ids.iter().map(|v| v.as_u64().unwrap() as u32).collect())
    };
    let expanded = expand_prompt_ids(
        &prompt.ids("prompt.ids"),
        &tokens,
        &images,
        std::slice::from_ref(&video),
        2,
        encode,
    )
    .unwrap();
    let want = prompt.ids("prompt.expanded_ids");
    assert_eq!(expanded, want);

    let index = rope_index(&expanded, &tokens, &images, &[video.grid], 2).unwrap();
    let want_positions = prompt.i32("prompt.position_ids");
    let axes = index.axis_major();
    for axis in 0..3 {
        assert_eq!(axes[axis], want_positions[axis * want.len()..(axis + 1) * want.len()], "axis {axis}");
    }
    assert_eq!(index.rope_delta, prompt.i32("prompt.rope_delta")[0]);
    assert_eq!(index.rope_delta, meta["prompt"]["rope_delta"].as_i64().unwrap());

    // Text-level expansion gives the processor's text.
    let text = expand_prompt_text(meta["prompt"]["text"].as_str().unwrap(), &images, &[video], 2).unwrap();
    assert_eq!(text, meta["prompt"]["text_expanded"].as_str().unwrap());
}

/// With the real tokenizer: expanding the text then tokenizing gives the processor's ids.
#[test]
fn expanded_text_tokenizes_to_the_processor_ids() {
    let dir = std::env::var_os("QWENRT_TOKENIZER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("fixtures-gen/qwen3_5-tokenizer"));
    let path = dir.join("tokenizer.json");
    assert!(path.exists(), "{} is missing: run scripts/build_tokenizer.py --family qwen3_5", path.display());
    let tokenizer =
        qwenrt::tokenizer::Tokenizer::from_file(&path, Some(qwenrt::tokenizer::QWEN3_5_PRETOKENIZE_REGEX))
            .unwrap();
    let reference = Reference::load("expected.safetensors");
    let prompt = Reference::load("prompt.safetensors");
    let (images, video) = prompt_vision_inputs(&reference);
    let text = expand_prompt_text(meta()["prompt"]["text"].as_str().unwrap(), &images, &[video], 2).unwrap();
    assert_eq!(tokenizer.encode(&text).unwrap(), prompt.ids("prompt.expanded_ids"));
}

fn error_of<T: std::fmt::Debug>(r: qwenrt::Result<T>) -> String {
    r.expect_err("an error").to_string()
}

#[test]
fn bad_inputs_give_clear_errors() {
    let processor = image_preprocessor();
    let limit = processor.max_input_pixels;

    let missing = fixtures().join("no-such-image.png");
    let e = error_of(load_image(&missing, limit));
    assert!(e.contains("no-such-image.png"), "{e}");

    let e = error_of(qwenrt::vision::decode_image(b"plain text, not a picture", "note.txt", limit));
    assert!(e.contains("note.txt") && e.contains("not a PNG, JPEG, WebP or GIF"), "{e}");

    let png = std::fs::read(fixtures().join("c_tall.png")).unwrap();
    let e = error_of(qwenrt::vision::decode_image(&png[..png.len() / 2], "cut.png", limit));
    assert!(e.contains("cut.png") && e.contains("cannot decode"), "{e}");

    let e = error_of(processor.preprocess(&RgbImage::new(0, 0, Vec::new()).unwrap()));
    assert!(e.contains("empty"), "{e}");

    let e = error_of(processor.preprocess(&RgbImage::new(201, 1, vec![0; 603]).unwrap()));
    assert!(e.contains("aspect ratio") && e.contains("201x1"), "{e}");
    assert!(
        processor.preprocess(&RgbImage::new(200, 1, vec![0; 600]).unwrap()).is_ok(),
        "ratio 200 is allowed"
    );

    let mut small_limit = image_preprocessor();
    small_limit.max_input_pixels = 1000;
    let e = error_of(small_limit.load(&fixtures().join("a_small.png")));
    assert!(e.contains("1200 pixels exceeds the limit of 1000"), "{e}");

    let mut frames = load_video(&fixtures().join("v_clip.gif"), 1.0, limit).unwrap();
    frames.frames[3] = RgbImage::new(8, 8, vec![0; 192]).unwrap();
    let e = error_of(video_preprocessor().preprocess(&frames));
    assert!(e.contains("frame 3") && e.contains("one size"), "{e}");
    let e = error_of(load_video(&fixtures().join("a_small.png"), 1.0, limit));
    assert!(e.contains("folder of frames or an animated GIF"), "{e}");

    let tower = VisionTower::load_dir(&fixtures().join("tower"), WeightDtype::F32).unwrap();
    let e = error_of(tower.encode(&vec![0.0; 5 * row_len()], &[(1, 2, 2)]));
    assert!(e.contains("patch rows"), "{e}");
    let e = error_of(tower.encode(&vec![0.0; 3 * row_len()], &[(1, 1, 3)]));
    assert!(e.contains("multiples of 2"), "{e}");

    let tokens = qwenrt::vision::VisionTokens::default();
    let e = error_of(expand_prompt_text("<|image_pad|> and <|image_pad|>", &[(1, 2, 2)], &[], 2));
    assert!(e.contains("2 <|image_pad|> placeholder(s) but 1 image(s)"), "{e}");
    let e = error_of(rope_index(&[1, tokens.image_pad, 2], &tokens, &[(1, 4, 4)], &[], 2));
    assert!(e.contains("needs 4 consecutive placeholders"), "{e}");
}

fn std_dev(x: &[f32]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// A GIF whose frames together pass the video pixel budget is refused while it is decoded, at
/// the frame that passes it, not after every frame sits in memory.
#[test]
fn a_video_with_too_many_pixels_is_refused_while_decoding() {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame, RgbaImage};
    let gif = |frames: usize| {
        let mut bytes = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut bytes);
            for i in 0..frames {
                let canvas = RgbaImage::from_pixel(64, 64, image::Rgba([i as u8, 0, 0, 255]));
                encoder
                    .encode_frame(Frame::from_parts(canvas, 0, 0, Delay::from_numer_denom_ms(100, 1)))
                    .unwrap();
            }
        }
        bytes
    };
    // Ten 64×64 frames per image limit: a video may hold twenty.
    let limit = 64 * 64 * 10;
    assert_eq!(decode_gif_video(&gif(20), "ok.gif", limit).unwrap().frames.len(), 20);
    let e = decode_gif_video(&gif(200), "big.gif", limit).unwrap_err().to_string();
    assert!(e.contains("big.gif") && e.contains("more than 81920 pixels"), "{e}");
}

/// Found by fuzzing: a 90×60 GIF whose frame declares itself far larger than the picture made
/// the decoder allocate gigabytes. The frame is refused instead.
#[test]
fn a_gif_frame_larger_than_its_picture_is_refused() {
    let bytes = std::fs::read(root().join("fixtures/fuzz/gif-frame-larger-than-screen.gif")).unwrap();
    // Before the fix both calls allocated the frame (gigabytes); now the decoder's cap stops it.
    let limit = 1 << 20;
    for result in [
        decode_image(&bytes, "f.gif", limit).map(|i| i.width * i.height),
        decode_gif_video(&bytes, "f.gif", limit).map(|v| v.frames.len()),
    ] {
        let e = result.expect_err("the oversized frame is refused").to_string();
        assert!(e.contains("f.gif") && e.contains("Memory limit exceeded"), "{e}");
    }
}
