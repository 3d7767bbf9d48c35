//! What decoding an image will cost in memory, from its header alone: the server reserves this
//! many bytes of `--max-decode-bytes` before a decode starts, so concurrent decodes stay within a
//! memory budget whatever their sizes (a 40-megapixel 16-bit RGBA PNG needs ~0.6 GB, a thumbnail
//! a few hundred KB).
//!
//! The dimensions come from the header (`imagesize`, plus the first frame's extent for GIF, which
//! PIL grows the canvas to). The decode is then bounded by those dimensions: a file whose pixel
//! data is larger than its header said is refused rather than allowed past its reservation. When
//! the header cannot be read here the estimate is the worst case the pixel limit allows, so an
//! odd file the decoders handle is never refused by the estimate.
//!
//! Bytes per pixel are the worst case per format, for the decoder's output and the copy into
//! PIL's mode (`decode/`), measured against the allocations of every committed fixture by the
//! test below.

use std::io::Cursor;

use super::{
    ImageError,
    decode::{Format, bmp_dimensions, check_dims, gif_with_global_table, sniff},
};

/// Fixed part of every reservation: decoder state, tables, the crop and small buffers.
const BASE_BYTES: u64 = 2 << 20;

/// What a decode will hold at its peak, and the pixel bound its decode runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeCost {
    /// Pixels the decode may produce (width x height from the header, or the pixel limit).
    pub pixels: u64,
    /// Peak bytes of the decode, resize and conversion.
    pub bytes: u64,
    /// (width, height) from the header, when read (`None`: the worst case was assumed).
    pub dimensions: Option<(usize, usize)>,
}

/// Peak working bytes per pixel: the decoder's output plus the conversion into PIL's mode.
fn bytes_per_pixel(format: Format) -> u64 {
    match format {
        // libjpeg-turbo's output (at most 4 samples: CMYK) and, for progressive and multi-scan
        // files, its whole-image coefficient buffer (2 bytes per sample, up to 4 samples).
        Format::Jpeg => 4 + 8,
        // The png crate's output (up to RGBA16, 8 bytes) and PIL's mode (RGBA, or I;16 / RGB).
        Format::Png => 8 + 4,
        // The frame's indices and the canvas they are pasted into.
        Format::Gif => 2,
        // RGBA output of the WebP decoder, then the mode's copy.
        Format::WebP => 4 + 4,
        // Rows read as up to 32-bit pixels, then the mode's copy.
        Format::Bmp => 4 + 4,
        // The tiff crate's samples (up to RGBA16 or one 64-bit float) and the mode's copy (4 bytes).
        Format::Tiff => 8 + 8,
    }
}

/// The header's dimensions, when this module can read them.
fn header_dims(format: Format, bytes: &[u8]) -> Option<(u64, u64)> {
    match format {
        Format::Gif => return gif_dims(bytes),
        // `imagesize` reads every BMP header as 32-bit fields and a top-down (negative) height
        // as unsigned: PIL's reading instead.
        Format::Bmp => return bmp_dimensions(bytes).ok(),
        _ => {}
    }
    let size = imagesize::blob_size(bytes).ok()?;
    Some((size.width as u64, size.height as u64))
}

/// The logical screen grown to the first frame's extent, as `decode/gif.rs` (and PIL) size the
/// canvas; only the frame descriptor is read, no pixel data.
fn gif_dims(bytes: &[u8]) -> Option<(u64, u64)> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    // A GIF without any colour table gets the grey one the decoder gives it (`decode/gif.rs`).
    let bytes = gif_with_global_table(bytes);
    let mut decoder = options.read_info(Cursor::new(&bytes[..])).ok()?;
    let (sw, sh) = (u64::from(decoder.width()), u64::from(decoder.height()));
    let frame = decoder.next_frame_info().ok()??;
    let w = sw.max(u64::from(frame.left) + u64::from(frame.width));
    let h = sh.max(u64::from(frame.top) + u64::from(frame.height));
    Some((w, h))
}

/// The decode cost of `bytes`, refusing from the header what the decoder would refuse: an
/// unrecognised format, a zero size, more than `max_pixels` pixels.
pub fn decode_cost(bytes: &[u8], max_pixels: u64) -> Result<DecodeCost, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = sniff(bytes).ok_or(ImageError::UnrecognizedFormat)?;
    let (pixels, dimensions) = match header_dims(format, bytes) {
        Some((w, h)) => (w * h, Some(check_dims(format, w, h, max_pixels)?)),
        None => (max_pixels, None),
    };
    let bytes = pixels
        .saturating_mul(bytes_per_pixel(format))
        .saturating_add(BASE_BYTES);
    Ok(DecodeCost {
        pixels,
        bytes,
        dimensions,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        alloc::{GlobalAlloc, Layout, System},
        cell::Cell,
    };

    use super::*;
    use crate::preprocess::image::{ImageOptions, PreprocessConfig, ResizeMode, preprocess_within};

    /// Counts the bytes this thread has allocated and their peak, so a test can compare a
    /// decode's real peak with its estimate (other threads' tests do not disturb it).
    struct Counting;

    thread_local! {
        static LIVE: Cell<i64> = const { Cell::new(0) };
        static PEAK: Cell<i64> = const { Cell::new(0) };
    }

    fn track(delta: i64) {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
        });
    }

    // SAFETY: forwards to the system allocator; the counters are plain thread-local cells.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            track(layout.size() as i64);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            track(-(layout.size() as i64));
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            track(new_size as i64 - layout.size() as i64);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Peak bytes this thread allocated while `f` ran, above what it held before.
    pub(crate) fn peak_of(f: impl FnOnce()) -> u64 {
        let start = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(start));
        f();
        (PEAK.with(Cell::get) - start).max(0) as u64
    }

    fn fixture_images() -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixture images")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let name = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                (name, std::fs::read(&p).expect("read fixture"))
            })
            .collect()
    }

    /// The estimate covers what decoding really allocates (libjpeg-turbo's own buffers are
    /// malloc'd in C and not counted here; its output buffer is), for every committed fixture and
    /// every resize mode. Fails if a decoder starts holding more than its format's allowance.
    #[test]
    fn the_estimate_covers_every_fixture_decode() {
        let options = ImageOptions {
            max_pixels: 100_000_000,
            apply_exif_orientation: true,
        };
        let mut failures = Vec::new();
        for mode in [
            ResizeMode::Shortest,
            ResizeMode::Squash,
            ResizeMode::Longest,
        ] {
            let cfg = PreprocessConfig {
                resize_mode: mode,
                ..PreprocessConfig::default()
            };
            for (name, bytes) in fixture_images() {
                let cost = decode_cost(&bytes, options.max_pixels).expect(&name);
                if cost.dimensions.is_none() {
                    failures.push(format!("{name}: dimensions not read from the header"));
                }
                let peak = peak_of(|| {
                    let _ = preprocess_within(&bytes, &cfg, &options, &cost).expect(&name);
                });
                if peak > cost.bytes {
                    failures.push(format!(
                        "{name} ({mode:?}): decode peaked at {peak} bytes, estimate {} ({} pixels)",
                        cost.bytes, cost.pixels
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn headers_over_the_pixel_limit_are_refused_before_decoding() {
        // A PNG header claiming 30,000 x 30,000 (no pixel data at all).
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend(30_000u32.to_be_bytes());
        png.extend(30_000u32.to_be_bytes());
        png.extend([8, 6, 0, 0, 0, 0, 0, 0, 0]);
        let err = decode_cost(&png, 40_000_000).unwrap_err();
        assert!(
            matches!(err, ImageError::TooManyPixels { width: 30_000, .. }),
            "{err}"
        );
        let cost = decode_cost(&png, 1_000_000_000).expect("under a larger limit");
        assert_eq!(cost.pixels, 900_000_000);
        assert!(cost.bytes >= 900_000_000 * 8, "RGBA16 worst case counted");
        assert_eq!(decode_cost(b"", 10), Err(ImageError::Empty));
        assert_eq!(
            decode_cost(b"not an image", 10),
            Err(ImageError::UnrecognizedFormat)
        );
    }

    #[test]
    fn unreadable_headers_assume_the_worst_case() {
        // JPEG magic and nothing else: the decoder will refuse it, the estimate must not.
        let cost = decode_cost(&[0xFF, 0xD8, 0xFF, 0xE0], 1_000).expect("estimate");
        assert!(cost.dimensions.is_none());
        assert_eq!(cost.pixels, 1_000);
    }
}
