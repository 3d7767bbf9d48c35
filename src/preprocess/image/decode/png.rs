//! PNG, with modes as PIL's PngImagePlugin maps them.

use std::io::Cursor;

use super::{
    Decoded, Format, ImageError, Pixels, check_dims, corrupt, exif_orientation, palette_from_rgb,
    unsupported,
};

pub(super) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
    use png::{BitDepth, ColorType};
    let f = Format::Png;
    let limit = (max_pixels as usize)
        .saturating_mul(8)
        .saturating_add(64 << 20);
    let mut dec = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: limit });
    let hdr = dec.read_header_info().map_err(|e| corrupt(f, e))?;
    let (width, height) = check_dims(f, hdr.width as u64, hdr.height as u64, max_pixels)?;
    dec.set_transformations(png::Transformations::IDENTITY);
    dec.set_ignore_text_chunk(true);
    dec.set_ignore_iccp_chunk(true);
    let mut reader = dec.read_info().map_err(|e| corrupt(f, e))?;
    let info = reader.info();
    let color = info.color_type;
    let depth = info.bit_depth;
    let palette = info.palette.as_ref().map(|p| p.to_vec());
    let mut orientation = info
        .exif_metadata
        .as_ref()
        .and_then(|e| exif_orientation(e));
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| corrupt(f, "image too large"))?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(|e| corrupt(f, e))?;
    let line = out.line_size;
    if orientation.is_none() {
        // eXIf may follow the image data.
        if reader.finish().is_ok() {
            orientation = reader
                .info()
                .exif_metadata
                .as_ref()
                .and_then(|e| exif_orientation(e));
        }
    }
    let rows = || buf.chunks(line).take(height);
    let n = width * height;
    let bits = match depth {
        BitDepth::One => 1,
        BitDepth::Two => 2,
        BitDepth::Four => 4,
        BitDepth::Eight => 8,
        BitDepth::Sixteen => 16,
    };
    // Unpack low bit depths (MSB first) to one value per pixel.
    let unpack = |bits: usize| -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let per = 8 / bits;
        let mask = (1u16 << bits) as u8 - 1;
        for r in rows() {
            for x in 0..width {
                let byte = r[x / per];
                let shift = 8 - bits * (x % per + 1);
                v.push((byte >> shift) & mask);
            }
        }
        v
    };
    let high_bytes = |channels: usize| -> Vec<u8> {
        let mut v = Vec::with_capacity(n * channels);
        for r in rows() {
            v.extend(r[..width * channels * 2].chunks_exact(2).map(|s| s[0]));
        }
        v
    };
    let plain = |channels: usize| -> Vec<u8> {
        let mut v = Vec::with_capacity(n * channels);
        for r in rows() {
            v.extend_from_slice(&r[..width * channels]);
        }
        v
    };
    let pixels = match (color, bits) {
        (ColorType::Grayscale, 1) => {
            Pixels::Bilevel(unpack(1).into_iter().map(|v| v * 255).collect())
        }
        (ColorType::Grayscale, 2) => Pixels::L(unpack(2).into_iter().map(|v| v * 0x55).collect()),
        (ColorType::Grayscale, 4) => Pixels::L(unpack(4).into_iter().map(|v| v * 0x11).collect()),
        (ColorType::Grayscale, 8) => Pixels::L(plain(1)),
        (ColorType::Grayscale, 16) => {
            let mut v = Vec::with_capacity(n);
            for r in rows() {
                v.extend(
                    r[..width * 2]
                        .chunks_exact(2)
                        .map(|s| u16::from_be_bytes([s[0], s[1]])),
                );
            }
            Pixels::I16(v)
        }
        (ColorType::Rgb, 8) => Pixels::Rgb(plain(3)),
        (ColorType::Rgb, 16) => Pixels::Rgb(high_bytes(3)),
        (ColorType::Indexed, b) => {
            let idx = if b == 8 { plain(1) } else { unpack(b) };
            let pal = palette.ok_or_else(|| corrupt(f, "palette image without PLTE chunk"))?;
            Pixels::P {
                idx,
                palette: palette_from_rgb(&pal),
            }
        }
        (ColorType::GrayscaleAlpha, 8) => Pixels::La(plain(2)),
        (ColorType::GrayscaleAlpha, 16) => {
            // PIL: mode RGBA, rawmode "LA;16B" (high bytes, L copied to R, G and B).
            let la = high_bytes(2);
            let mut v = Vec::with_capacity(n * 4);
            for p in la.chunks_exact(2) {
                v.extend_from_slice(&[p[0], p[0], p[0], p[1]]);
            }
            Pixels::Rgba(v)
        }
        (ColorType::Rgba, 8) => Pixels::Rgba(plain(4)),
        (ColorType::Rgba, 16) => Pixels::Rgba(high_bytes(4)),
        (c, b) => {
            return Err(unsupported(
                f,
                format!("color type {c:?} with bit depth {b}"),
            ));
        }
    };
    Ok(Decoded {
        width,
        height,
        pixels,
        orientation,
    })
}
