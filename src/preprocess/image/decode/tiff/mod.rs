//! TIFF (first image), modes as PIL's TiffImagePlugin maps them.

use std::io::Cursor;

use super::{Decoded, Format, ImageError, Pixels, check_dims, corrupt, unsupported};

/// The layouts the conversion below handles (the arms of its `match`), judged from the header.
fn layout_supported(color: tiff::ColorType, white_is_zero: bool, sample_format: u16) -> bool {
    use tiff::ColorType as C;
    match color {
        C::Gray(1 | 8) | C::RGB(8 | 16) | C::RGBA(8 | 16) | C::CMYK(8) => true,
        C::Palette(1 | 2 | 4 | 8) => true,
        C::Gray(16) => !white_is_zero,
        C::Gray(32) => !white_is_zero && matches!(sample_format, 1..=3),
        _ => false,
    }
}

pub(super) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
    use tiff::ColorType as C;
    use tiff::decoder::DecodingResult as R;
    use tiff::tags::Tag;
    let f = Format::Tiff;
    let mut limits = tiff::decoder::Limits::default();
    limits.decoding_buffer_size = (max_pixels as usize).saturating_mul(16).max(1 << 20);
    let mut dec = tiff::decoder::Decoder::new(Cursor::new(bytes))
        .map_err(|e| corrupt(f, e))?
        .with_limits(limits);
    let (w, h) = dec.dimensions().map_err(|e| corrupt(f, e))?;
    let (width, height) = check_dims(f, w as u64, h as u64, max_pixels)?;
    let color = dec.colortype().map_err(|e| unsupported(f, e.to_string()))?;
    let photometric = dec
        .find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)
        .ok()
        .flatten();
    let extra: Vec<u16> = dec
        .find_tag_unsigned_vec::<u16>(Tag::ExtraSamples)
        .ok()
        .flatten()
        .unwrap_or_default();
    let sample_format = dec
        .find_tag_unsigned_vec::<u16>(Tag::SampleFormat)
        .ok()
        .flatten()
        .and_then(|v| v.first().copied())
        .unwrap_or(1);
    let orientation = dec
        .find_tag_unsigned::<u16>(Tag::Orientation)
        .ok()
        .flatten()
        .filter(|v| (1..=8).contains(v));
    let colormap = dec
        .find_tag_unsigned_vec::<u16>(Tag::ColorMap)
        .ok()
        .flatten();
    let white_is_zero = photometric == Some(0);
    let bad = |what: &str| unsupported(f, format!("{what} ({color:?})"));
    // Refuse a layout this decoder cannot convert from the header, before the pixels are decoded
    // (decoding a 40-megapixel 16-bit image to then refuse it costs seconds and ~650 MB).
    if !layout_supported(color, white_is_zero, sample_format) {
        return Err(bad("unsupported TIFF sample layout"));
    }
    let img = dec.read_image().map_err(|e| corrupt(f, e))?;
    let n = width * height;
    // Unpack 1..4-bit samples (MSB first, rows padded to whole bytes).
    let unpack_bits = |data: &[u8], bits: usize| -> Result<Vec<u8>, ImageError> {
        let stride = (width * bits).div_ceil(8);
        if data.len() < stride * height {
            return Err(corrupt(f, "truncated image data"));
        }
        let per = 8 / bits;
        let mask = ((1u16 << bits) - 1) as u8;
        let mut v = Vec::with_capacity(n);
        for r in data.chunks(stride).take(height) {
            for x in 0..width {
                v.push((r[x / per] >> (8 - bits * (x % per + 1))) & mask);
            }
        }
        Ok(v)
    };
    let need = |len: usize, c: usize| -> Result<(), ImageError> {
        if len < n * c {
            Err(corrupt(f, "truncated image data"))
        } else {
            Ok(())
        }
    };
    let pixels = match (color, img) {
        (C::Gray(1), R::U8(d)) => {
            let v = unpack_bits(&d, 1)?;
            Pixels::Bilevel(
                v.into_iter()
                    .map(|b| if (b == 1) != white_is_zero { 255 } else { 0 })
                    .collect(),
            )
        }
        (C::Gray(8), R::U8(mut d)) => {
            need(d.len(), 1)?;
            d.truncate(n);
            if white_is_zero {
                d.iter_mut().for_each(|v| *v = !*v);
            }
            Pixels::L(d)
        }
        (C::Gray(16), R::U16(mut d)) if !white_is_zero => {
            need(d.len(), 1)?;
            d.truncate(n);
            Pixels::I16(d)
        }
        (C::Gray(32), R::U32(d)) if !white_is_zero => {
            need(d.len(), 1)?;
            Pixels::I32(d[..n].iter().map(|&v| v as i32).collect())
        }
        (C::Gray(32), R::I32(d)) if !white_is_zero => {
            need(d.len(), 1)?;
            Pixels::I32(d[..n].to_vec())
        }
        (C::Gray(32), R::F32(d)) if !white_is_zero && sample_format == 3 => {
            need(d.len(), 1)?;
            Pixels::F32(d[..n].to_vec())
        }
        (
            C::GrayA(8)
            | C::Multiband {
                bit_depth: 8,
                num_samples: 2,
            },
            R::U8(mut d),
        ) if photometric == Some(1) && extra.first() != Some(&1) => {
            need(d.len(), 2)?;
            d.truncate(n * 2);
            Pixels::La(d)
        }
        (C::RGB(8), R::U8(mut d)) => {
            need(d.len(), 3)?;
            d.truncate(n * 3);
            Pixels::Rgb(d)
        }
        (C::RGB(16), R::U16(d)) => {
            need(d.len(), 3)?;
            Pixels::Rgb(d[..n * 3].iter().map(|&v| (v >> 8) as u8).collect())
        }
        (C::RGBA(8), R::U8(mut d)) => {
            need(d.len(), 4)?;
            d.truncate(n * 4);
            match extra.first() {
                Some(1) => Pixels::RgbaPremul(d),
                Some(2) => Pixels::Rgba(d),
                // Unspecified extra sample: PIL uses "RGBX" (the fourth band is ignored).
                _ => Pixels::Rgb(d.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()),
            }
        }
        (C::RGBA(16), R::U16(d)) => {
            need(d.len(), 4)?;
            let v: Vec<u8> = d[..n * 4].iter().map(|&v| (v >> 8) as u8).collect();
            match extra.first() {
                Some(1) => Pixels::RgbaPremul(v),
                Some(2) => Pixels::Rgba(v),
                _ => Pixels::Rgb(v.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()),
            }
        }
        (C::CMYK(8), R::U8(mut d)) => {
            need(d.len(), 4)?;
            d.truncate(n * 4);
            Pixels::Cmyk(d)
        }
        (C::Palette(bits @ (1 | 2 | 4 | 8)), R::U8(d)) => {
            let idx = if bits == 8 {
                need(d.len(), 1)?;
                d[..n].to_vec()
            } else {
                unpack_bits(&d, bits as usize)?
            };
            let cmap = colormap.ok_or_else(|| corrupt(f, "palette image without ColorMap"))?;
            let entries = cmap.len() / 3;
            let mut pal = Box::new([[0u8; 3]; 256]);
            for (i, e) in pal.iter_mut().enumerate().take(entries.min(256)) {
                // PIL: o8(v // 256), planar R..., G..., B...
                *e = [
                    (cmap[i] >> 8) as u8,
                    (cmap[entries + i] >> 8) as u8,
                    (cmap[2 * entries + i] >> 8) as u8,
                ];
            }
            Pixels::P { idx, palette: pal }
        }
        _ => return Err(bad("unsupported TIFF sample layout")),
    };
    Ok(Decoded {
        width,
        height,
        pixels,
        orientation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiff::ColorType as C;

    #[test]
    fn unsupported_layouts_are_known_from_the_header() {
        assert!(layout_supported(C::RGB(8), false, 1));
        assert!(layout_supported(C::Gray(32), false, 3));
        assert!(
            !layout_supported(C::Gray(16), true, 1),
            "16-bit WhiteIsZero"
        );
        assert!(!layout_supported(C::RGB(32), false, 1));
        assert!(!layout_supported(C::YCbCr(8), false, 1));
        assert!(!layout_supported(C::Gray(4), false, 1));
    }
}
