//! New-style JPEG in TIFF (compression 7), decoded the way libtiff's `tif_jpeg.c` does for PIL:
//! every strip or tile is a JPEG stream of its own, abbreviated when the JPEGTables tag holds the
//! shared quantization/Huffman tables, and goes through libjpeg (libjpeg-turbo here, as in PIL's
//! wheels). Photometric YCbCr is converted to RGB by libjpeg (PIL sets `JPEGCOLORMODE_RGB`),
//! photometric RGB and gray are taken as stored. zune-jpeg (the `tiff` crate's `jpeg` feature)
//! differs from libjpeg-turbo by a few levels, so it is not used.

use super::super::jpeg::{Raw, decompress};
use super::super::{Format, ImageError, Pixels, corrupt, unsupported};
use super::chunks::Chunk;

const SOI: [u8; 2] = [0xFF, 0xD8];
const EOI: [u8; 2] = [0xFF, 0xD9];

/// An Adobe APP14 segment whose transform flag tells libjpeg the colour space, as libtiff does by
/// setting `jpeg_color_space` from the Photometric tag (component ids alone could mislead it).
fn adobe_app14(transform: u8) -> [u8; 16] {
    [
        0xFF, 0xEE, 0x00, 0x0E, b'A', b'd', b'o', b'b', b'e', 0x00, 0x64, 0, 0, 0, 0, transform,
    ]
}

/// The complete JPEG stream of one chunk: the tables (without their EOI) and then the chunk
/// (without its SOI), as libtiff feeds them to one decompressor.
fn stream(tables: Option<&[u8]>, data: &[u8], transform: Option<u8>) -> Option<Vec<u8>> {
    let body = data.strip_prefix(&SOI)?;
    let tables = match tables {
        Some(t) if t.len() > 4 => {
            let t = t.strip_prefix(&SOI)?;
            t.strip_suffix(&EOI).unwrap_or(t)
        }
        _ => &[],
    };
    let mut v = Vec::with_capacity(2 + 16 + tables.len() + body.len());
    v.extend_from_slice(&SOI);
    if let Some(t) = transform {
        v.extend_from_slice(&adobe_app14(t));
    }
    v.extend_from_slice(tables);
    v.extend_from_slice(body);
    Some(v)
}

/// Decode the chunks of a JPEG-compressed TIFF into mode "L" or "RGB".
pub(super) fn decode_jpeg(
    chunks: &[Chunk<'_>],
    tables: Option<&[u8]>,
    width: usize,
    height: usize,
    photometric: u16,
    max_pixels: u64,
) -> Result<Pixels, ImageError> {
    let f = Format::Tiff;
    let (channels, transform) = match photometric {
        1 => (1, None),
        2 => (3, Some(0)),
        6 => (3, Some(1)),
        p => {
            return Err(unsupported(
                f,
                format!("JPEG compression with photometric interpretation {p} is not supported"),
            ));
        }
    };
    let mut out = vec![0u8; width * height * channels];
    for (i, c) in chunks.iter().enumerate() {
        let s = stream(tables, c.data, transform)
            .ok_or_else(|| corrupt(f, format!("JPEG strip/tile {i} does not start with SOI")))?;
        let Raw {
            width: jw,
            height: jh,
            channels: jc,
            samples,
        } = decompress(&s, max_pixels).map_err(|e| match e {
            ImageError::Corrupt { reason, .. } => {
                corrupt(f, format!("JPEG strip/tile {i}: {reason}"))
            }
            ImageError::Unsupported { reason, .. } => {
                unsupported(f, format!("JPEG strip/tile {i}: {reason}"))
            }
            other => other,
        })?;
        // libtiff refuses a chunk whose JPEG size differs from the strip/tile size.
        if (jw, jh, jc) != (c.width, c.height, channels) {
            return Err(corrupt(
                f,
                format!(
                    "JPEG strip/tile {i} is {jw} x {jh} with {jc} components, expected {} x {} with {channels}",
                    c.width, c.height
                ),
            ));
        }
        let cols = c.width.min(width.saturating_sub(c.x0));
        let rows = c.height.min(height.saturating_sub(c.y0));
        for r in 0..rows {
            let src = &samples[r * jw * jc..][..cols * jc];
            let d = ((c.y0 + r) * width + c.x0) * channels;
            out[d..d + cols * channels].copy_from_slice(src);
        }
    }
    Ok(if channels == 1 {
        Pixels::L(out)
    } else {
        Pixels::Rgb(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abbreviated_streams_get_the_shared_tables() {
        let tables = [0xFF, 0xD8, 0xFF, 0xDB, 1, 2, 0xFF, 0xD9];
        let data = [0xFF, 0xD8, 0xFF, 0xDA, 9, 0xFF, 0xD9];
        let s = stream(Some(&tables), &data, None).expect("stream");
        assert_eq!(s, [0xFF, 0xD8, 0xFF, 0xDB, 1, 2, 0xFF, 0xDA, 9, 0xFF, 0xD9]);
        let s = stream(None, &data, Some(1)).expect("stream");
        assert_eq!(&s[2..6], &[0xFF, 0xEE, 0x00, 0x0E]);
        assert_eq!(s[17], 1, "Adobe transform: YCbCr");
        assert!(stream(None, &[0, 1, 2], None).is_none(), "no SOI");
    }
}
