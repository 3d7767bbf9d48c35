//! WebP, through image-webp (RGB or RGBA, first frame of animations).

use std::io::Cursor;

use super::{Decoded, Format, ImageError, Pixels, check_dims, corrupt, exif_orientation};

pub(super) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
    let f = Format::WebP;
    let mut dec = image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(|e| corrupt(f, e))?;
    let (w, h) = dec.dimensions();
    let (width, height) = check_dims(f, w as u64, h as u64, max_pixels)?;
    let alpha = dec.has_alpha();
    let orientation = dec
        .exif_metadata()
        .ok()
        .flatten()
        .and_then(|e| exif_orientation(&e));
    let channels = if alpha { 4 } else { 3 };
    let mut buf = vec![0u8; width * height * channels];
    if dec.is_animated() {
        dec.read_frame(&mut buf).map_err(|e| corrupt(f, e))?;
    } else {
        dec.read_image(&mut buf).map_err(|e| corrupt(f, e))?;
    }
    let pixels = if alpha {
        Pixels::Rgba(buf)
    } else {
        Pixels::Rgb(buf)
    };
    Ok(Decoded {
        width,
        height,
        pixels,
        orientation,
    })
}
