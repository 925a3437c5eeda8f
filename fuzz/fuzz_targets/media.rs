//! Image and GIF decoding under the pixel limits: any bytes decode within the limit or fail
//! with an error, and nothing past the limit is ever allocated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qwenrt::vision::preprocess::{decode_gif_video, decode_image};

/// Small, so that a header asking for more is refused before decoding.
const LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = decode_image(data, "fuzz", LIMIT) {
        assert!((image.width * image.height) as u64 <= LIMIT);
        assert_eq!(image.data.len(), image.width * image.height * 3);
    }
    if let Ok(video) = decode_gif_video(data, "fuzz", LIMIT) {
        let pixels: u64 = video.frames.iter().map(|f| (f.width * f.height) as u64).sum();
        assert!(pixels <= 2 * LIMIT);
    }
});
