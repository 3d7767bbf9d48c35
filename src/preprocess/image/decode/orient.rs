//! EXIF / TIFF orientation as PIL applies it (`ImageOps.exif_transpose`): the transposition of
//! an image in its own mode. Decoders of formats whose orientation PIL applies on open (TIFF,
//! since Pillow's `TiffImageFile.load_end`) call it themselves.

use super::{Decoded, Pixels};

/// The pixels of a `w` x `h` image of `c` samples per pixel, transposed for orientation `o`.
pub(crate) fn orient<T: Copy>(v: &[T], c: usize, w: usize, h: usize, o: u16) -> Vec<T> {
    let (nw, nh) = if o >= 5 { (h, w) } else { (w, h) };
    let mut out = Vec::with_capacity(v.len());
    for y in 0..nh {
        for x in 0..nw {
            let (sx, sy) = match o {
                2 => (w - 1 - x, y),         // FLIP_LEFT_RIGHT
                3 => (w - 1 - x, h - 1 - y), // ROTATE_180
                4 => (x, h - 1 - y),         // FLIP_TOP_BOTTOM
                5 => (y, x),                 // TRANSPOSE
                6 => (y, h - 1 - x),         // ROTATE_270
                7 => (w - 1 - y, h - 1 - x), // TRANSVERSE
                8 => (w - 1 - y, x),         // ROTATE_90
                _ => (x, y),
            };
            let s = (sy * w + sx) * c;
            out.extend_from_slice(&v[s..s + c]);
        }
    }
    out
}

/// `img` transposed for orientation `o` (2..=8; any other value leaves it as it is).
pub(crate) fn transpose(img: Decoded, o: u16) -> Decoded {
    if !(2..=8).contains(&o) {
        return img;
    }
    let (w, h) = (img.width, img.height);
    let pixels = match &img.pixels {
        Pixels::Bilevel(d) => Pixels::Bilevel(orient(d, 1, w, h, o)),
        Pixels::L(d) => Pixels::L(orient(d, 1, w, h, o)),
        Pixels::P { idx, palette } => Pixels::P {
            idx: orient(idx, 1, w, h, o),
            palette: palette.clone(),
        },
        Pixels::La(d) => Pixels::La(orient(d, 2, w, h, o)),
        Pixels::Rgb(d) => Pixels::Rgb(orient(d, 3, w, h, o)),
        Pixels::Rgba(d) => Pixels::Rgba(orient(d, 4, w, h, o)),
        Pixels::Cmyk(d) => Pixels::Cmyk(orient(d, 4, w, h, o)),
        Pixels::I16(d) => Pixels::I16(orient(d, 1, w, h, o)),
        Pixels::I16B(d) => Pixels::I16B(orient(d, 1, w, h, o)),
        Pixels::I32(d) => Pixels::I32(orient(d, 1, w, h, o)),
        Pixels::F32(d) => Pixels::F32(orient(d, 1, w, h, o)),
    };
    let (width, height) = if o >= 5 { (h, w) } else { (w, h) };
    Decoded {
        width,
        height,
        pixels,
        orientation: None,
    }
}
