//! TIFF (first image), modes as PIL's TiffImagePlugin maps them (its `OPEN_INFO` table), pixels
//! as libtiff decodes them for it.
//!
//! The `tiff` crate reads the directory and most compressions (none, LZW, Deflate, PackBits,
//! CCITT Group 4). CCITT RLE and Group 3 (`fax`) and new-style JPEG (`jpeg`) are decoded here
//! strip by strip, like libtiff; old-style JPEG (compression 6) is refused by name. Sample layouts follow
//! `OPEN_INFO`: 2/4-bit gray scales to 8 bits ("L;2"/"L;4": v * 85 / v * 17, inverted for
//! WhiteIsZero), 12-bit gray of a little-endian file is "I;16" holding the 12-bit values
//! ("I;12"), 16-bit gray is "I;16" or, in a big-endian file, "I;16B" (which Pillow resizes
//! differently), and BigTIFF files read like classic ones. Palette images ("P;1".."P", through
//! `source.rs`, which also hides every IFD after the first), signed samples (8-bit: "L" read
//! unsigned; 16-bit: "I") and FillOrder 2 of uncompressed data ("…R" raw modes) follow PIL too;
//! CIELab and FillOrder 2 of compressed data (which libtiff reverses before decoding) are
//! refused by name.

use super::{Decoded, Format, ImageError, Pixels, check_dims, corrupt, unsupported};

mod chunks;
mod fax;
mod jpeg;
mod source;

use source::Source;

/// TIFF compression codes (tag 259) handled outside the `tiff` crate.
const CCITT_RLE: u16 = 2;
const CCITT_GROUP3: u16 = 3;
const OLD_JPEG: u16 = 6;
const JPEG: u16 = 7;
/// T4Options (tag 292) bit 0: 2-D coding.
const T4_2D: u32 = 1;

/// The layouts the conversion below handles (the arms of its `match`), judged from the header.
fn layout_supported(
    color: tiff::ColorType,
    white_is_zero: bool,
    sample_format: u16,
    big_endian: bool,
) -> bool {
    use tiff::ColorType as C;
    match color {
        C::Gray(1 | 2 | 4) | C::RGB(8 | 16) | C::RGBA(8 | 16) | C::CMYK(8) => true,
        // SampleFormat 2: (II, 1, (2,), 1, (8,)) -> "L" (the bytes read unsigned); no
        // WhiteIsZero entry.
        C::Gray(8) => match sample_format {
            1 => true,
            2 => !white_is_zero,
            _ => false,
        },
        // PIL: (II, 1, (1,), 1, (12,), ()) -> "I;16" only; no big-endian or WhiteIsZero entry.
        C::Gray(12) => !white_is_zero && !big_endian && sample_format == 1,
        // (II, 0, 16) -> "I;16" as stored (not inverted); (MM, 0, 16) is not in OPEN_INFO.
        // Signed: (II, 1, (2,), 1, (16,)) -> "I" ("I;16S"), (MM, ...) -> "I" ("I;16BS").
        C::Gray(16) => match sample_format {
            1 => !(white_is_zero && big_endian),
            2 => !white_is_zero,
            _ => false,
        },
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
    // A palette file is read with its Photometric overlaid as BlackIsZero (`source.rs`): its
    // indices come back as gray samples and are mapped through the ColorMap below.
    // Its first IFD's next pointer reads as 0: PIL takes the first image whatever follows it.
    let (source, palette) = Source::new(bytes);
    let mut dec = tiff::decoder::Decoder::new(source)
        .map_err(|e| corrupt(f, e))?
        .with_limits(limits);
    let (w, h) = dec.dimensions().map_err(|e| corrupt(f, e))?;
    let (width, height) = check_dims(f, w as u64, h as u64, max_pixels)?;
    let photometric = if palette {
        Some(3)
    } else {
        dec.find_tag_unsigned::<u16>(Tag::PhotometricInterpretation)
            .ok()
            .flatten()
    };
    let orientation = dec
        .find_tag_unsigned::<u16>(Tag::Orientation)
        .ok()
        .flatten()
        .filter(|v| (1..=8).contains(v));
    let compression = dec
        .find_tag_unsigned::<u16>(Tag::Compression)
        .ok()
        .flatten()
        .unwrap_or(1);
    // FillOrder 2: bits of each byte in reverse order (PIL's "1;R"/"L;2R"/"L;4R" raw modes).
    let reversed_bits = dec.find_tag_unsigned::<u16>(Tag::FillOrder).ok().flatten() == Some(2);
    let done = |pixels| {
        Ok(Decoded {
            width,
            height,
            pixels,
            orientation,
        })
    };
    match compression {
        OLD_JPEG => {
            return Err(unsupported(
                f,
                "old-style JPEG compression (6) is not supported",
            ));
        }
        CCITT_RLE => {
            one_bit(&mut dec, "CCITT RLE")?;
            let c = chunks::chunks(&mut dec, bytes, width, height, "CCITT RLE")?;
            let white_is_zero = photometric == Some(0);
            return done(fax::decode_rle(
                &c,
                width,
                height,
                white_is_zero,
                reversed_bits,
            )?);
        }
        CCITT_GROUP3 => {
            let t4 = dec
                .find_tag_unsigned::<u32>(Tag::Unknown(292))
                .ok()
                .flatten()
                .unwrap_or(0);
            if t4 & T4_2D != 0 {
                return Err(unsupported(
                    f,
                    "CCITT Group 3 2-D coding (T4Options bit 0) is not supported",
                ));
            }
            one_bit(&mut dec, "CCITT Group 3")?;
            let c = chunks::chunks(&mut dec, bytes, width, height, "CCITT Group 3")?;
            let white_is_zero = photometric == Some(0);
            return done(fax::decode_g3(
                &c,
                width,
                height,
                white_is_zero,
                reversed_bits,
            )?);
        }
        JPEG => {
            let tables = dec.get_tag_u8_vec(Tag::JPEGTables).ok();
            let c = chunks::chunks(&mut dec, bytes, width, height, "JPEG compression")?;
            let photometric = photometric.unwrap_or(1);
            return done(jpeg::decode_jpeg(
                &c,
                tables.as_deref(),
                width,
                height,
                photometric,
                max_pixels,
            )?);
        }
        _ => {}
    }
    if let Some(p @ 8..=10) = photometric {
        // PIL opens 8-bit CIELab as mode "LAB" and converts it to RGB through littleCMS
        // (ImageCms, Lab D50 -> sRGB): not reproduced here.
        return Err(unsupported(
            f,
            format!("CIELab colour (PhotometricInterpretation {p}) is not supported"),
        ));
    }
    let big_endian = dec.byte_order() == tiff::tags::ByteOrder::BigEndian;
    let color = dec.colortype().map_err(|e| unsupported(f, e.to_string()))?;
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
    let colormap = dec
        .find_tag_unsigned_vec::<u16>(Tag::ColorMap)
        .ok()
        .flatten();
    let white_is_zero = photometric == Some(0);
    let bad = |what: &str| unsupported(f, format!("{what} ({color:?})"));
    // Refuse a layout this decoder cannot convert from the header, before the pixels are decoded
    // (decoding a 40-megapixel 16-bit image to then refuse it costs seconds and ~650 MB).
    if palette && !matches!(color, C::Gray(1 | 2 | 4 | 8)) {
        return Err(unsupported(
            f,
            format!("palette TIFF with {color:?} samples is not supported"),
        ));
    }
    if palette && sample_format != 1 {
        return Err(unsupported(
            f,
            format!("palette TIFF with SampleFormat {sample_format} is not supported"),
        ));
    }
    if reversed_bits && compression != 1 {
        // libtiff (PIL's path for compressed files) reverses the bits of the *compressed* strips
        // before decoding them; the `tiff` crate does not, and reversing its output is not the same.
        return Err(unsupported(
            f,
            format!("FillOrder 2 with compression {compression} is not supported"),
        ));
    }
    if !layout_supported(color, white_is_zero, sample_format, big_endian) {
        return Err(bad("unsupported TIFF sample layout"));
    }
    if color == C::Gray(12) {
        // "I;12": the `tiff` crate does not read 12-bit samples; PIL's raw decoder unpacks them
        // into "I;16" holding the 12-bit values. Compressed 12-bit data would need libtiff.
        if compression != 1 {
            return Err(unsupported(
                f,
                format!("12-bit samples with compression {compression} are not supported"),
            ));
        }
        let c = chunks::chunks(&mut dec, bytes, width, height, "12-bit samples")?;
        return done(Pixels::I16(read_12bit(&c, width, height)?));
    }
    let img = dec.read_image().map_err(|e| corrupt(f, e))?;
    let n = width * height;
    // Unpack 1..4-bit samples (MSB first, or LSB first for FillOrder 2; rows padded to bytes).
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
                let byte = if reversed_bits {
                    r[x / per].reverse_bits()
                } else {
                    r[x / per]
                };
                v.push((byte >> (8 - bits * (x % per + 1))) & mask);
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
    // The `tiff` crate already inverts WhiteIsZero gray samples (1 to 64 bits), which is what
    // PIL's "1;I" / "L;2I" / "L;4I" / "L;I" raw modes do: the arms below take them as they come.
    let pixels = match (color, img) {
        // Palette indices ("P;1" / "P;2" / "P;4" / "P", and the bit-reversed "R" variants).
        (C::Gray(bits @ (1 | 2 | 4 | 8)), R::U8(d)) if palette => {
            let idx = if bits == 8 {
                need(d.len(), 1)?;
                if reversed_bits {
                    d[..n].iter().map(|b| b.reverse_bits()).collect()
                } else {
                    d[..n].to_vec()
                }
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
        (C::Gray(1), R::U8(d)) => {
            let v = unpack_bits(&d, 1)?;
            Pixels::Bilevel(
                v.into_iter()
                    .map(|b| if b == 1 { 255 } else { 0 })
                    .collect(),
            )
        }
        // "L;2" / "L;4" (and the inverted "L;2I" / "L;4I"): scaled to 8 bits.
        (C::Gray(bits @ (2 | 4)), R::U8(d)) => {
            let scale = if bits == 2 { 85 } else { 17 };
            let v = unpack_bits(&d, bits as usize)?;
            Pixels::L(v.into_iter().map(|s| s * scale).collect())
        }
        (C::Gray(8), R::U8(mut d)) => {
            need(d.len(), 1)?;
            d.truncate(n);
            if reversed_bits {
                // "L;R" (FillOrder 2).
                d.iter_mut().for_each(|b| *b = b.reverse_bits());
            }
            Pixels::L(d)
        }
        // SampleFormat 2, 8 bits: PIL's "L" raw mode reads the bytes as unsigned.
        (C::Gray(8), R::I8(d)) => {
            need(d.len(), 1)?;
            let it = d[..n].iter().map(|&v| v as u8);
            Pixels::L(if reversed_bits {
                it.map(u8::reverse_bits).collect()
            } else {
                it.collect()
            })
        }
        // SampleFormat 2, 16 bits: mode "I" holding the signed values.
        (C::Gray(16), R::I16(d)) if !white_is_zero => {
            need(d.len(), 1)?;
            Pixels::I32(d[..n].iter().map(|&v| i32::from(v)).collect())
        }
        (C::Gray(16), R::U16(mut d)) => {
            need(d.len(), 1)?;
            d.truncate(n);
            if white_is_zero {
                // PIL reads (II, 0, 16) as plain "I;16": undo the crate's inversion.
                d.iter_mut().for_each(|v| *v = !*v);
            }
            if big_endian {
                Pixels::I16B(d)
            } else {
                Pixels::I16(d)
            }
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
        _ => return Err(bad("unsupported TIFF sample layout")),
    };
    done(pixels)
}

/// CCITT codecs code 1 bit per pixel.
fn one_bit(dec: &mut tiff::decoder::Decoder<Source<'_>>, codec: &str) -> Result<(), ImageError> {
    let bits = dec
        .find_tag_unsigned_vec::<u16>(tiff::tags::Tag::BitsPerSample)
        .ok()
        .flatten();
    if bits.as_deref().is_some_and(|b| b != [1]) {
        return Err(corrupt(
            Format::Tiff,
            format!("{codec} image with more than 1 bit per pixel"),
        ));
    }
    Ok(())
}

/// Uncompressed 12-bit gray chunks: samples MSB first, each chunk row padded to a whole byte.
fn read_12bit(
    chunks: &[chunks::Chunk<'_>],
    width: usize,
    height: usize,
) -> Result<Vec<u16>, ImageError> {
    let mut out = vec![0u16; width * height];
    for (i, c) in chunks.iter().enumerate() {
        let stride = (c.width * 12).div_ceil(8);
        let cols = c.width.min(width.saturating_sub(c.x0));
        let rows = c.height.min(height.saturating_sub(c.y0));
        if c.data.len() < stride * rows {
            return Err(corrupt(
                Format::Tiff,
                format!("strip/tile {i}: truncated image data"),
            ));
        }
        for (r, row) in c.data.chunks(stride).take(rows).enumerate() {
            let d = (c.y0 + r) * width + c.x0;
            for (x, px) in out[d..d + cols].iter_mut().enumerate() {
                let bit = x * 12;
                // Two bytes always exist: a 12-bit sample ends within the padded row.
                let (hi, lo) = (row[bit / 8], row.get(bit / 8 + 1).copied().unwrap_or(0));
                let w = u16::from_be_bytes([hi, lo]);
                *px = if bit % 8 == 0 { w >> 4 } else { w & 0x0FFF };
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiff::ColorType as C;

    #[test]
    fn unsupported_layouts_are_known_from_the_header() {
        assert!(layout_supported(C::RGB(8), false, 1, false));
        assert!(layout_supported(C::Gray(32), false, 3, false));
        assert!(
            !layout_supported(C::Gray(16), true, 1, true),
            "16-bit WhiteIsZero, big-endian (not in PIL's OPEN_INFO)"
        );
        assert!(layout_supported(C::Gray(16), true, 1, false));
        assert!(!layout_supported(C::RGB(32), false, 1, false));
        assert!(!layout_supported(C::YCbCr(8), false, 1, false));
        assert!(layout_supported(C::Gray(4), false, 1, false));
        assert!(layout_supported(C::Gray(12), false, 1, false));
        assert!(!layout_supported(C::Gray(12), false, 1, true));
        assert!(!layout_supported(C::RGB(12), false, 1, false));
    }
}

#[cfg(test)]
mod refusals {
    use super::*;

    /// A little-endian single-strip TIFF: `w` x `h`, the given (tag, value) SHORT/LONG entries
    /// (sorted here), StripOffsets/StripByteCounts pointing at `strip`.
    fn tiff(w: u32, h: u32, tags: &[(u16, u32)], strip: &[u8]) -> Vec<u8> {
        let mut e: Vec<(u16, u32)> = vec![(256, w), (257, h), (278, h), (279, strip.len() as u32)];
        e.extend_from_slice(tags);
        e.push((273, 0)); // patched below
        e.sort_by_key(|t| t.0);
        let data_at = 8 + 2 + 12 * e.len() as u32 + 4;
        let mut b = b"II*\0".to_vec();
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&(e.len() as u16).to_le_bytes());
        for (tag, v) in e {
            let v = if tag == 273 { data_at } else { v };
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&4u16.to_le_bytes()); // LONG
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(strip);
        b
    }

    fn refusal(bytes: &[u8]) -> String {
        match decode(bytes, u64::MAX) {
            Err(e @ ImageError::Unsupported { .. }) => e.to_string(),
            other => panic!("expected an unsupported-feature error, got {other:?}"),
        }
    }

    #[test]
    fn out_of_scope_variants_are_refused_by_name() {
        let gray = [(258, 8), (262, 1), (277, 1)];
        let with = |c: u32| [&gray[..], &[(259, c)]].concat();
        let e = refusal(&tiff(4, 4, &with(6), &[0xFF, 0xD8, 0xFF, 0xD9]));
        assert!(
            e.contains("old-style JPEG compression (6) is not supported"),
            "{e}"
        );
        let bilevel = [(258, 1), (259, 3), (262, 0), (277, 1), (292, 1)];
        let e = refusal(&tiff(8, 2, &bilevel, &[0; 8]));
        assert!(e.contains("CCITT Group 3 2-D coding"), "{e}");
        let lab = [(258, 8), (259, 1), (262, 8), (277, 3)];
        let e = refusal(&tiff(1, 1, &lab, &[50, 0, 0]));
        assert!(
            e.contains("CIELab colour (PhotometricInterpretation 8)"),
            "{e}"
        );
        let twelve = [(258, 12), (259, 5), (262, 1), (277, 1)];
        let e = refusal(&tiff(4, 4, &twelve, &[0; 24]));
        assert!(e.contains("12-bit samples with compression 5"), "{e}");
    }

    #[test]
    fn signed_and_palette_layouts_pil_lacks_are_refused_by_name() {
        // Signed WhiteIsZero: not in PIL's OPEN_INFO.
        let s16 = [(258, 16), (259, 1), (262, 0), (277, 1), (339, 2)];
        let e = refusal(&tiff(2, 1, &s16, &[0; 4]));
        assert!(
            e.contains("unsupported TIFF sample layout (Gray(16))"),
            "{e}"
        );
        // Palette with two samples per pixel ("PA" / "PX" in PIL: not served here).
        let pa = [(258, 8), (259, 1), (262, 3), (277, 2)];
        let e = refusal(&tiff(2, 1, &pa, &[0; 4]));
        assert!(e.contains("palette TIFF with"), "{e}");
    }

    #[test]
    fn fill_order_2_of_compressed_data_is_refused() {
        // Pillow (libtiff) writes such LZW strips bit-reversed before coding; refused, not misread.
        let lzw = [(258, 8), (259, 5), (262, 1), (266, 2), (277, 1)];
        let e = refusal(&tiff(4, 1, &lzw, &[0x80, 0x01]));
        assert!(e.contains("FillOrder 2 with compression 5"), "{e}");
    }

    #[test]
    fn signed_samples_read_as_pil_reads_them() {
        // 8-bit signed: "L", the bytes unsigned; 16-bit signed: "I", the signed values.
        let s8 = [(258, 8), (259, 1), (262, 1), (277, 1), (339, 2)];
        let b = tiff(2, 1, &s8, &[0x80, 0x7F]);
        let want = Pixels::L(vec![128, 127]);
        assert_eq!(decode(&b, u64::MAX).expect("decodes").pixels, want);
        let s16 = [(258, 16), (259, 1), (262, 1), (277, 1), (339, 2)];
        let b = tiff(2, 1, &s16, &[0x00, 0x80, 0x2C, 0x01]);
        let want = Pixels::I32(vec![-32768, 300]);
        assert_eq!(decode(&b, u64::MAX).expect("decodes").pixels, want);
    }

    #[test]
    fn white_is_zero_is_inverted_once() {
        // 8-bit WhiteIsZero: PIL's "L;I" gives 255 - v (the `tiff` crate inverts already).
        let b = tiff(2, 1, &[(258, 8), (259, 1), (262, 0), (277, 1)], &[0, 200]);
        assert_eq!(
            decode(&b, u64::MAX).expect("decodes").pixels,
            Pixels::L(vec![255, 55])
        );
        // 2-bit BlackIsZero: "L;2" scales by 85.
        let b = tiff(
            4,
            1,
            &[(258, 2), (259, 1), (262, 1), (277, 1)],
            &[0b00_01_10_11],
        );
        let want = Pixels::L(vec![0, 85, 170, 255]);
        assert_eq!(decode(&b, u64::MAX).expect("decodes").pixels, want);
    }

    #[test]
    fn fill_order_2_reverses_the_bits_of_each_byte() {
        // Pillow 13 on the same bytes: "1;R" -> [0, 0, 0, 0], "L;4R" -> [68, 136, 34, 204].
        let one = [(258, 1), (259, 1), (262, 1), (266, 2), (277, 1)];
        let b = tiff(4, 1, &one, &[0b1011_0000]);
        assert_eq!(
            decode(&b, u64::MAX).expect("decodes").pixels,
            Pixels::Bilevel(vec![0; 4])
        );
        let four = [(258, 4), (259, 1), (262, 1), (266, 2), (277, 1)];
        let b = tiff(4, 1, &four, &[0x12, 0x34]);
        let want = Pixels::L(vec![68, 136, 34, 204]);
        assert_eq!(decode(&b, u64::MAX).expect("decodes").pixels, want);
        // Pillow 13: "L;R" -> [128, 64, 1, 240].
        let eight = [(258, 8), (259, 1), (262, 1), (266, 2), (277, 1)];
        let b = tiff(4, 1, &eight, &[1, 2, 0x80, 0x0F]);
        let want = Pixels::L(vec![128, 64, 1, 240]);
        assert_eq!(decode(&b, u64::MAX).expect("decodes").pixels, want);
    }

    #[test]
    fn truncated_ccitt_data_is_corrupt_not_a_panic() {
        for compression in [2, 3] {
            let tags = [(258, 1), (259, compression), (262, 0), (277, 1)];
            for data in [&[][..], &[0x00][..], &[0x00, 0x10, 0xFF][..]] {
                let r = decode(&tiff(16, 3, &tags, data), u64::MAX);
                assert!(
                    matches!(r, Err(ImageError::Corrupt { .. })),
                    "compression {compression}, {data:?}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn twelve_bit_samples_unpack_msb_first() {
        // 0xABC, 0x123 packed in 3 bytes.
        let b = tiff(
            2,
            1,
            &[(258, 12), (259, 1), (262, 1), (277, 1)],
            &[0xAB, 0xC1, 0x23],
        );
        let d = decode(&b, u64::MAX).expect("decodes");
        assert_eq!(d.pixels, Pixels::I16(vec![0xABC, 0x123]));
        // 3 pixels per row need 5 bytes (padded to a byte), 2 rows 10: 5 are truncated data.
        let short = tiff(3, 2, &[(258, 12), (259, 1), (262, 1), (277, 1)], &[0; 5]);
        assert!(matches!(
            decode(&short, u64::MAX),
            Err(ImageError::Corrupt { .. })
        ));
    }
}
