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

use super::{Decoded, Format, ImageError, Pixels, check_dims, corrupt, transpose, unsupported};

mod chunks;
mod fax;
mod jpeg;
mod orientation;
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
        C::Gray(1 | 2 | 4) | C::RGB(8 | 16) | C::RGBA(8 | 16) | C::CMYK(8 | 16) => true,
        // "LX" / "LA" (BlackIsZero only; signed only as separate planes, below).
        C::Multiband {
            bit_depth: 8,
            num_samples: 2,
        } => !white_is_zero && matches!(sample_format, 1 | 2),
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

/// The first image as `Image.open(f)` holds it once loaded: in its PIL mode, transposed by its
/// Orientation tag (`orientation.rs`; the result carries no orientation left to apply).
pub(super) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
    let img = decode_stored(bytes, max_pixels)?;
    Ok(match img.orientation {
        Some(o) => transpose(img, o),
        None => img,
    })
}

/// The first image as stored (rows top to bottom as in the file), with the orientation PIL
/// applies to it.
fn decode_stored(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
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
        .map_err(crate_error)?
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
    let orientation = orientation::pil_orientation(&mut dec);
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
        JPEG if reversed_bits => {
            return Err(unsupported(
                f,
                "FillOrder 2 with JPEG compression is not supported",
            ));
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
    let color = dec.colortype().map_err(|e| match e {
        tiff::TiffError::UnsupportedError(_) => crate_error(e),
        e => unsupported(f, e.to_string()),
    })?;
    let extra: Vec<u16> = dec
        .find_tag_unsigned_vec::<u16>(Tag::ExtraSamples)
        .ok()
        .flatten()
        .unwrap_or_default();
    let samples = usize::from(
        dec.find_tag_unsigned::<u16>(Tag::SamplesPerPixel)
            .ok()
            .flatten()
            .unwrap_or(1)
            .max(1),
    );
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
    if reversed_bits {
        // PIL opens FillOrder 2 only for the layouts with a fill-order-2 entry in `OPEN_INFO`.
        if !fill_order_2_opens(color, photometric, sample_format, big_endian, extra.len()) {
            return Err(unsupported(
                f,
                format!("FillOrder 2 with {color:?} samples is not supported (nor by PIL)"),
            ));
        }
        let ranges = chunk_ranges(&mut dec)?;
        dec.inner().reverse_bits_in(ranges);
    }
    if !layout_supported(color, white_is_zero, sample_format, big_endian) {
        return Err(bad("unsupported TIFF sample layout"));
    }
    let planar = dec
        .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
        .ok()
        .flatten()
        == Some(2);
    // Extra samples PIL has a mode for (`OPEN_INFO`), known before decoding.
    match color {
        C::RGB(b @ (8 | 16)) | C::RGBA(b @ (8 | 16))
            if rgb_mode(vec![0; 4.min(samples)], samples, &extra, b).is_none() =>
        {
            return Err(bad_extra("RGB", &extra));
        }
        C::CMYK(b) if !cmyk_extra_ok(samples, &extra, b) => {
            return Err(bad_extra("CMYK", &extra));
        }
        C::Multiband { .. } if !matches!(extra[..], [0] | [2]) => {
            return Err(bad_extra("gray", &extra));
        }
        // PIL drops unspecified extra planes of a planar file before it picks the mode, so
        // signed 8-bit gray + X as planes is its "L" (bytes read unsigned); chunky it is refused.
        C::Multiband { .. } if sample_format == 2 && !(planar && extra[..] == [0]) => {
            return Err(bad_extra("signed gray", &extra));
        }
        _ => {}
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
    let img = if planar && samples > 1 {
        if dec.find_tag(Tag::TileWidth).ok().flatten().is_some() {
            // The `tiff` crate (0.11) asserts on tiled planes: refused before it reads one.
            return Err(unsupported(
                f,
                "tiled images with separate colour planes (PlanarConfiguration 2) are not supported",
            ));
        }
        if matches!(color, C::Multiband { .. }) && extra[..] == [0] {
            // PIL drops an unspecified last plane before it reads the file and decodes the first
            // plane alone (whatever the other holds); the arms below take it as "LX".
            match dec.read_image().map_err(crate_error)? {
                R::U8(d) => R::U8(d.into_iter().flat_map(|v| [v, 0]).collect()),
                R::I8(d) => R::I8(d.into_iter().flat_map(|v| [v, 0]).collect()),
                _ => return Err(bad("unsupported TIFF sample layout")),
            }
        } else {
            read_planes(&mut dec, width * height, usize::from(color.num_samples()))?
        }
    } else {
        dec.read_image().map_err(crate_error)?
    };
    let n = width * height;
    // Unpack 1..4-bit samples (MSB first; FillOrder 2 was undone as the file was read; rows
    // padded to bytes).
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
    // The `tiff` crate already inverts WhiteIsZero gray samples (1 to 64 bits), which is what
    // PIL's "1;I" / "L;2I" / "L;4I" / "L;I" raw modes do: the arms below take them as they come.
    let pixels = match (color, img) {
        // Palette indices ("P;1" / "P;2" / "P;4" / "P", and the bit-reversed "R" variants).
        (C::Gray(bits @ (1 | 2 | 4 | 8)), R::U8(d)) if palette => {
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
            Pixels::L(d)
        }
        // SampleFormat 2, 8 bits: PIL's "L" raw mode reads the bytes as unsigned.
        (C::Gray(8), R::I8(d)) => {
            need(d.len(), 1)?;
            Pixels::L(d[..n].iter().map(|&v| v as u8).collect())
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
        // Gray with an extra sample: "LX" (unspecified: dropped, mode "L") or "LA".
        (
            C::Multiband {
                bit_depth: 8,
                num_samples: 2,
            },
            R::U8(d),
        ) if photometric == Some(1) => {
            need(d.len(), 2)?;
            match extra[..] {
                [0] => Pixels::L(d[..n * 2].iter().step_by(2).copied().collect()),
                [2] => Pixels::La(truncated(d, n * 2)),
                _ => return Err(bad_extra("gray", &extra)),
            }
        }
        // RGB, RGBA, RGBX… ("RGB;16L" and the like keep the high byte of each sample).
        (
            C::Multiband {
                bit_depth: 8,
                num_samples: 2,
            },
            R::I8(d),
        ) if photometric == Some(1) && extra[..] == [0] => {
            need(d.len(), 2)?;
            Pixels::L(d[..n * 2].iter().step_by(2).map(|&v| v as u8).collect())
        }
        // RGB, RGBA, RGBX… (the crate drops unspecified extra samples; "RGB;16L" and the like
        // keep the high byte of each sample).
        (C::RGB(8) | C::RGBA(8), R::U8(d)) => {
            let cs = usize::from(color.num_samples());
            need(d.len(), cs)?;
            rgb_mode(truncated(d, n * cs), samples, &extra, 8)
                .ok_or_else(|| bad_extra("RGB", &extra))?
        }
        (C::RGB(16) | C::RGBA(16), R::U16(d)) => {
            let cs = usize::from(color.num_samples());
            need(d.len(), cs)?;
            let v = d[..n * cs].iter().map(|v| (v >> 8) as u8).collect();
            rgb_mode(v, samples, &extra, 16).ok_or_else(|| bad_extra("RGB", &extra))?
        }
        // "CMYK", "CMYKX", "CMYKXX" (8-bit); "CMYK;16L" / "CMYK;16B" keep the high byte.
        (C::CMYK(8), R::U8(d)) if cmyk_extra_ok(samples, &extra, 8) => {
            need(d.len(), 4)?;
            Pixels::Cmyk(truncated(d, n * 4))
        }
        (C::CMYK(16), R::U16(d)) if cmyk_extra_ok(samples, &extra, 16) => {
            need(d.len(), 4)?;
            Pixels::Cmyk(d[..n * 4].iter().map(|&v| (v >> 8) as u8).collect())
        }
        _ => return Err(bad("unsupported TIFF sample layout")),
    };
    done(pixels)
}

/// A PlanarConfiguration 2 image (one plane per sample, as PIL reads it: each band from its own
/// plane) with its first `cs` planes interleaved, as the crate hands back a chunky image
/// (unspecified extra samples, the planes after `cs`, are dropped).
fn read_planes(
    dec: &mut tiff::decoder::Decoder<Source<'_>>,
    n: usize,
    cs: usize,
) -> Result<tiff::decoder::DecodingResult, ImageError> {
    use tiff::decoder::DecodingResult as R;
    let f = Format::Tiff;
    let mut planes = R::U8(Vec::new());
    dec.read_image_to_buffer(&mut planes).map_err(crate_error)?;
    fn interleave<T: Copy>(d: Vec<T>, n: usize, cs: usize) -> Result<Vec<T>, ImageError> {
        if d.len() < n * cs {
            return Err(corrupt(
                Format::Tiff,
                "truncated image data (separate planes)",
            ));
        }
        let mut out = Vec::with_capacity(n * cs);
        for i in 0..n {
            out.extend((0..cs).map(|p| d[p * n + i]));
        }
        Ok(out)
    }
    Ok(match planes {
        R::U8(d) => R::U8(interleave(d, n, cs)?),
        R::U16(d) => R::U16(interleave(d, n, cs)?),
        R::I8(d) => R::I8(interleave(d, n, cs)?),
        _ => {
            return Err(unsupported(
                f,
                "separate colour planes (PlanarConfiguration 2) of samples wider than 16 bits are not supported",
            ));
        }
    })
}

fn truncated(mut d: Vec<u8>, len: usize) -> Vec<u8> {
    d.truncate(len);
    d
}

/// RGB samples in PIL's mode for the file's ExtraSamples (PIL's `OPEN_INFO`). The `tiff` crate
/// hands back 3 samples per pixel, or 4 when the first extra sample is alpha or the pixel has 4
/// samples and no ExtraSamples tag: it drops the unspecified ones. No extra sample is "RGB" or
/// "RGBA" (4 samples); unspecified (0) is "RGBX" (dropped); associated alpha (1) is the "RGBa"
/// raw mode, which PIL unpremultiplies as it unpacks (`unpackRGBa`: 0 where alpha is 0,
/// `min(255, v * 255 / a)`) into mode "RGBA"; unassociated (2) is "RGBA". 8-bit files may carry
/// one or two more unspecified samples ("RGBXX", "RGBaX", "RGBAXX"…). `None`: a layout PIL does
/// not open, or (ExtraSamples 999, which PIL reads as "RGBA") one the crate reads as "RGB".
fn rgb_mode(mut d: Vec<u8>, samples: usize, extra: &[u16], bits: u8) -> Option<Pixels> {
    let Some((&first, rest)) = extra.split_first() else {
        return match samples {
            3 => Some(Pixels::Rgb(d)),
            4 => Some(Pixels::Rgba(d)),
            _ => None,
        };
    };
    let more_ok = rest.is_empty() || (bits == 8 && rest.len() <= 2 && rest.iter().all(|&e| e == 0));
    if samples != 4 + rest.len() || !more_ok {
        return None;
    }
    Some(match first {
        0 => Pixels::Rgb(d),
        1 => {
            for p in d.chunks_exact_mut(4) {
                let a = u32::from(p[3]);
                match a {
                    0 => p.fill(0),
                    255 => {}
                    _ => {
                        for v in &mut p[..3] {
                            *v = (u32::from(*v) * 255 / a).min(255) as u8;
                        }
                    }
                }
            }
            Pixels::Rgba(d)
        }
        2 => Pixels::Rgba(d),
        _ => return None,
    })
}

/// PIL's CMYK layouts: 4 samples, or 8-bit with one or two unspecified extra samples.
fn cmyk_extra_ok(samples: usize, extra: &[u16], bits: u8) -> bool {
    match extra {
        [] => samples == 4,
        [0] | [0, 0] => bits == 8 && samples == 4 + extra.len(),
        _ => false,
    }
}

fn bad_extra(what: &str, extra: &[u16]) -> ImageError {
    unsupported(
        Format::Tiff,
        format!("{what} with ExtraSamples {extra:?} is not supported (nor by PIL)"),
    )
}

/// The layouts PIL's `OPEN_INFO` has a FillOrder 2 entry for: gray 1/2/4/8-bit (and 16-bit in a
/// little-endian file), palette 1/2/4/8-bit, 8-bit RGB without extra samples, unsigned.
fn fill_order_2_opens(
    color: tiff::ColorType,
    photometric: Option<u16>,
    sample_format: u16,
    big_endian: bool,
    extra: usize,
) -> bool {
    use tiff::ColorType as C;
    sample_format == 1
        && match (color, photometric) {
            (C::Gray(1 | 2 | 4 | 8), Some(0 | 1 | 3)) => true,
            (C::Gray(16), Some(1)) => !big_endian,
            (C::RGB(8), Some(2)) => extra == 0,
            _ => false,
        }
}

/// (offset, length) of every strip or tile of the first image.
fn chunk_ranges(
    dec: &mut tiff::decoder::Decoder<Source<'_>>,
) -> Result<Vec<(u64, u64)>, ImageError> {
    use tiff::tags::Tag;
    let tiled = dec.find_tag(Tag::TileOffsets).ok().flatten().is_some();
    let (offsets, counts) = if tiled {
        (Tag::TileOffsets, Tag::TileByteCounts)
    } else {
        (Tag::StripOffsets, Tag::StripByteCounts)
    };
    let mut read = |tag| {
        dec.find_tag_unsigned_vec::<u64>(tag)
            .map_err(|e| corrupt(Format::Tiff, e))
            .map(Option::unwrap_or_default)
    };
    let offsets = read(offsets)?;
    let counts = read(counts)?;
    Ok(offsets.into_iter().zip(counts).collect())
}

/// A `tiff` crate error as the client reads it: what the crate does not support is named as such
/// (LZMA and other compressions, a missing or unknown PhotometricInterpretation, samples of
/// different widths), anything else is a corrupt file.
fn crate_error(e: tiff::TiffError) -> ImageError {
    use tiff::TiffUnsupportedError as U;
    use tiff::tags::CompressionMethod;
    let f = Format::Tiff;
    let tiff::TiffError::UnsupportedError(u) = e else {
        return corrupt(f, e);
    };
    match u {
        U::UnsupportedCompressionMethod(CompressionMethod::Unknown(34925)) => {
            unsupported(f, "LZMA compression (34925) is not supported")
        }
        U::UnsupportedCompressionMethod(m) => {
            unsupported(f, format!("compression {m:?} is not supported"))
        }
        U::UnknownInterpretation => unsupported(
            f,
            "a missing or unknown PhotometricInterpretation is not supported",
        ),
        U::InconsistentBitsPerSample(b) => unsupported(
            f,
            format!("samples of different widths (BitsPerSample {b:?}) are not supported"),
        ),
        u => unsupported(f, u.to_string()),
    }
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
    /// (sorted here; ExtraSamples as SHORT), StripOffsets/StripByteCounts pointing at `strip`.
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
            // ExtraSamples must be SHORT; everything else is a LONG (the value lies in the
            // first bytes either way, little-endian).
            let typ: u16 = if tag == 338 { 3 } else { 4 };
            b.extend_from_slice(&typ.to_le_bytes());
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
        let e = refusal(&tiff(
            4,
            4,
            &with(34925),
            &[0xFD, b'7', b'z', b'X', b'Z', 0],
        ));
        assert!(
            e.contains("LZMA compression (34925) is not supported"),
            "{e}"
        );
        let no_photometric = [(258, 32), (259, 1), (277, 1), (339, 3)];
        let e = refusal(&tiff(2, 1, &no_photometric, &[0; 8]));
        assert!(
            e.contains("missing or unknown PhotometricInterpretation"),
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
    fn fill_order_2_pil_cannot_open_is_refused() {
        // PIL's OPEN_INFO has no FillOrder 2 entry for 16-bit RGB or signed samples, and libtiff's
        // JPEG path is not reproduced with reversed bits: refused by name, never misread.
        let rgb16 = [(258, 16), (259, 5), (262, 2), (266, 2), (277, 3)];
        let e = refusal(&tiff(4, 1, &rgb16, &[0x80, 0x01]));
        assert!(e.contains("FillOrder 2 with RGB(16) samples"), "{e}");
        let s8 = [(258, 8), (259, 1), (262, 1), (266, 2), (277, 1), (339, 2)];
        let e = refusal(&tiff(4, 1, &s8, &[0; 4]));
        assert!(e.contains("FillOrder 2 with Gray(8) samples"), "{e}");
        let jpeg = [(258, 8), (259, 7), (262, 1), (266, 2), (277, 1)];
        let e = refusal(&tiff(4, 1, &jpeg, &[0xFF, 0xD8, 0xFF, 0xD9]));
        assert!(e.contains("FillOrder 2 with JPEG compression"), "{e}");
    }

    #[test]
    fn rgb_with_extra_samples_pil_lacks_is_refused() {
        // ExtraSamples 3 is not a value PIL knows; 999 is one only for 8-bit samples.
        let rgba = |bits: u32, extra: u32| {
            let tags = [(258, bits), (259, 1), (262, 2), (277, 4), (338, extra)];
            tiff(1, 1, &tags, &[0; 8])
        };
        assert!(refusal(&rgba(8, 3)).contains("ExtraSamples [3]"));
        assert!(refusal(&rgba(16, 999)).contains("ExtraSamples [999]"));
        // PIL reads 8-bit 999 as "RGBA"; the crate drops the sample as unspecified: refused.
        assert!(refusal(&rgba(8, 999)).contains("ExtraSamples [999]"));
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
