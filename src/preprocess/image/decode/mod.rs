//! Decoding to the pixel representation PIL would hold after `Image.open(f).load()`.
//!
//! Each decoder reproduces the PIL *mode* of the opened image (e.g. "P" for palette PNG/GIF/BMP,
//! "I;16" for 16-bit grayscale PNG, "CMYK" with inverted Adobe values for 4-channel JPEG) because
//! open_clip resizes before converting to RGB and the mode decides how PIL resizes.
//!
//! Every decoder reads the header dimensions first and refuses images with more than
//! `max_pixels` pixels before allocating pixel buffers.

mod bmp;
mod exif;
mod gif;
mod jpeg;
mod orient;
mod png;
mod tiff;
mod webp;

use super::ImageError;

pub(crate) use bmp::dimensions as bmp_dimensions;
pub(crate) use exif::exif_orientation;
pub(crate) use gif::with_global_table as gif_with_global_table;
#[cfg(test)]
pub(crate) use orient::orient;
pub(crate) use orient::transpose;

/// Image container formats, sniffed from magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Gif,
    WebP,
    Bmp,
    Tiff,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::Gif => "GIF",
            Format::WebP => "WebP",
            Format::Bmp => "BMP",
            Format::Tiff => "TIFF",
        }
    }
}

/// Identify the format from the leading bytes (never from a client-supplied type).
pub fn sniff(b: &[u8]) -> Option<Format> {
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Some(Format::Gif)
    } else if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some(Format::WebP)
    } else if b.starts_with(b"BM") {
        Some(Format::Bmp)
    } else if b.starts_with(b"II*\0")
        || b.starts_with(b"MM\0*")
        || b.starts_with(b"II+\0")
        || b.starts_with(b"MM\0+")
    {
        // Classic TIFF (42) and BigTIFF (43), both byte orders.
        Some(Format::Tiff)
    } else {
        None
    }
}

/// Pixel storage per PIL mode. Multi-channel data is interleaved, rows top to bottom.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Pixels {
    /// Mode "1": one byte per pixel, 0 or 255.
    Bilevel(Vec<u8>),
    /// Mode "L".
    L(Vec<u8>),
    /// Mode "P": indices and a 256-entry RGB palette (missing entries are black, like PIL).
    P {
        idx: Vec<u8>,
        palette: Box<[[u8; 3]; 256]>,
    },
    /// Mode "LA" (straight alpha), 2 bytes per pixel.
    La(Vec<u8>),
    /// Mode "RGB".
    Rgb(Vec<u8>),
    /// Mode "RGBA" (straight alpha).
    Rgba(Vec<u8>),
    /// Mode "CMYK" as PIL stores it (JPEG values already inverted, Adobe convention).
    Cmyk(Vec<u8>),
    /// Mode "I;16".
    I16(Vec<u16>),
    /// Mode "I;16B" (16-bit grayscale from a big-endian TIFF), values as PIL's `getpixel` reads
    /// them. It differs from "I;16" only in how Pillow resizes it (see `resize_window`).
    I16B(Vec<u16>),
    /// Mode "I".
    I32(Vec<i32>),
    /// Mode "F".
    F32(Vec<f32>),
}

impl Pixels {
    pub fn mode(&self) -> &'static str {
        match self {
            Pixels::Bilevel(_) => "1",
            Pixels::L(_) => "L",
            Pixels::P { .. } => "P",
            Pixels::La(_) => "LA",
            Pixels::Rgb(_) => "RGB",
            Pixels::Rgba(_) => "RGBA",
            Pixels::Cmyk(_) => "CMYK",
            Pixels::I16(_) => "I;16",
            Pixels::I16B(_) => "I;16B",
            Pixels::I32(_) => "I",
            Pixels::F32(_) => "F",
        }
    }
}

/// A decoded image in PIL's representation.
#[derive(Clone, Debug)]
pub(crate) struct Decoded {
    pub width: usize,
    pub height: usize,
    pub pixels: Pixels,
    /// EXIF orientation (1..=8) when the file carries one.
    pub orientation: Option<u16>,
}

pub(crate) fn check_dims(
    format: Format,
    w: u64,
    h: u64,
    max_pixels: u64,
) -> Result<(usize, usize), ImageError> {
    if w == 0 || h == 0 {
        return Err(ImageError::Corrupt {
            format: format.name(),
            reason: format!("image has zero size ({w} x {h})"),
        });
    }
    let pixels = w.saturating_mul(h);
    if pixels > max_pixels {
        return Err(ImageError::TooManyPixels {
            width: w,
            height: h,
            limit: max_pixels,
        });
    }
    let too_big = || ImageError::TooManyPixels {
        width: w,
        height: h,
        limit: max_pixels,
    };
    // Buffers hold up to 4 samples of 4 bytes per pixel.
    let w = usize::try_from(w).map_err(|_| too_big())?;
    let h = usize::try_from(h).map_err(|_| too_big())?;
    w.checked_mul(h)
        .and_then(|p| p.checked_mul(16))
        .ok_or_else(too_big)?;
    Ok((w, h))
}

fn corrupt(format: Format, reason: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt {
        format: format.name(),
        reason: reason.to_string(),
    }
}

fn unsupported(format: Format, reason: impl Into<String>) -> ImageError {
    ImageError::Unsupported {
        format: format.name(),
        reason: reason.into(),
    }
}

/// Decode `bytes` (format sniffed from the magic bytes).
pub(crate) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = sniff(bytes).ok_or(ImageError::UnrecognizedFormat)?;
    match format {
        Format::Jpeg => jpeg::decode(bytes, max_pixels),
        Format::Png => png::decode(bytes, max_pixels),
        Format::Gif => gif::decode(bytes, max_pixels),
        Format::WebP => webp::decode(bytes, max_pixels),
        Format::Bmp => bmp::decode(bytes, max_pixels),
        Format::Tiff => tiff::decode(bytes, max_pixels),
    }
}

/// A 256-entry palette from packed RGB triplets (missing entries stay black, like PIL).
pub(crate) fn palette_from_rgb(p: &[u8]) -> Box<[[u8; 3]; 256]> {
    let mut pal = Box::new([[0u8; 3]; 256]);
    for (dst, src) in pal.iter_mut().zip(p.chunks_exact(3)) {
        dst.copy_from_slice(src);
    }
    pal
}
