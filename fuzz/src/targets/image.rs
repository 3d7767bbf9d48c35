//! Every image decoder and the whole preprocessing pipeline, under each resize mode: the first byte
//! picks the mode and EXIF orientation, the rest is the file.
//!
//! `super::preprocess` is src/preprocess wherever this body is compiled (the fuzz crate, or the seeds
//! test that imports `clip_serve::preprocess`).

use super::preprocess::image::{ImageOptions, PreprocessConfig, ResizeMode, preprocess};

pub fn run(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let cfg = PreprocessConfig {
        resize_mode: match mode % 3 {
            0 => ResizeMode::Shortest,
            1 => ResizeMode::Squash,
            _ => ResizeMode::Longest,
        },
        ..PreprocessConfig::default()
    };
    let options = ImageOptions {
        // Small enough that a fuzzed header cannot make one input take seconds.
        max_pixels: 4_000_000,
        apply_exif_orientation: mode & 0x80 != 0,
    };
    if let Ok(pixels) = preprocess(bytes, &cfg, &options) {
        assert_eq!(pixels.len(), 3 * cfg.size.0 as usize * cfg.size.1 as usize);
    }
}
