//! Decoding to the pixel representation PIL would hold after `Image.open(f).load()`.
//!
//! Each decoder reproduces the PIL *mode* of the opened image (e.g. "P" for palette PNG/GIF/BMP,
//! "I;16" for 16-bit grayscale PNG, "CMYK" with inverted Adobe values for 4-channel JPEG) because
//! open_clip resizes before converting to RGB and the mode decides how PIL resizes.
//!
//! Every decoder reads the header dimensions first and refuses images with more than
//! `max_pixels` pixels before allocating pixel buffers.

use std::io::Cursor;

use super::ImageError;

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
    } else if b.starts_with(b"II*\0") || b.starts_with(b"MM\0*") {
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
    /// Mode "RGBa" (premultiplied alpha, e.g. TIFF with associated alpha).
    RgbaPremul(Vec<u8>),
    /// Mode "CMYK" as PIL stores it (JPEG values already inverted, Adobe convention).
    Cmyk(Vec<u8>),
    /// Mode "I;16".
    I16(Vec<u16>),
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
            Pixels::RgbaPremul(_) => "RGBa",
            Pixels::Cmyk(_) => "CMYK",
            Pixels::I16(_) => "I;16",
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
        Format::Png => decode_png(bytes, max_pixels),
        Format::Gif => decode_gif(bytes, max_pixels),
        Format::WebP => decode_webp(bytes, max_pixels),
        Format::Bmp => bmp::decode(bytes, max_pixels),
        Format::Tiff => decode_tiff(bytes, max_pixels),
    }
}

// ------------------------------------------------------------------------------------------------
// EXIF

/// Orientation tag (0x0112) of IFD0 from EXIF data (with or without the "Exif\0\0" prefix).
pub(crate) fn exif_orientation(data: &[u8]) -> Option<u16> {
    let d = data.strip_prefix(b"Exif\0\0").unwrap_or(data);
    if d.len() < 8 {
        return None;
    }
    let le = match &d[0..4] {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = d.get(o..o + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = d.get(o..o + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    for i in 0..n.min(1000) {
        let e = ifd + 2 + i * 12;
        if u16_at(e)? == 0x0112 {
            let typ = u16_at(e + 2)?;
            let v = match typ {
                3 => u16_at(e + 8)?,               // SHORT
                4 => u32_at(e + 8)?.min(9) as u16, // LONG (non-standard)
                _ => return None,
            };
            return (1..=8).contains(&v).then_some(v);
        }
    }
    None
}

// ------------------------------------------------------------------------------------------------
// JPEG: libjpeg-turbo's decoder (the one PIL uses), through the TurboJPEG API of mozjpeg-sys.

mod jpeg {
    use super::{
        Decoded, Format, ImageError, Pixels, check_dims, corrupt, exif_orientation, unsupported,
    };
    use std::ffi::{CStr, c_char, c_int, c_ulong, c_void};

    // Make sure the static library providing the tj* symbols is linked.
    use mozjpeg_sys as _;

    type TjHandle = *mut c_void;
    const TJPF_RGB: c_int = 0;
    const TJPF_GRAY: c_int = 6;
    const TJPF_CMYK: c_int = 11;
    const TJCS_GRAY: c_int = 2;
    const TJCS_CMYK: c_int = 3;
    const TJCS_YCCK: c_int = 4;
    const TJERR_WARNING: c_int = 0;
    /// Refuse progressive JPEGs with more than 500 scans (a known CPU exhaustion vector).
    const TJFLAG_LIMITSCANS: c_int = 32768;

    unsafe extern "C" {
        fn tjInitDecompress() -> TjHandle;
        fn tjDecompressHeader3(
            handle: TjHandle,
            jpeg_buf: *const u8,
            jpeg_size: c_ulong,
            width: *mut c_int,
            height: *mut c_int,
            jpeg_subsamp: *mut c_int,
            jpeg_colorspace: *mut c_int,
        ) -> c_int;
        fn tjDecompress2(
            handle: TjHandle,
            jpeg_buf: *const u8,
            jpeg_size: c_ulong,
            dst_buf: *mut u8,
            width: c_int,
            pitch: c_int,
            height: c_int,
            pixel_format: c_int,
            flags: c_int,
        ) -> c_int;
        fn tjGetErrorStr2(handle: TjHandle) -> *mut c_char;
        fn tjGetErrorCode(handle: TjHandle) -> c_int;
        fn tjDestroy(handle: TjHandle) -> c_int;
    }

    /// Owns a TurboJPEG decompressor. Errors inside libjpeg are handled by TurboJPEG
    /// (setjmp/longjmp in C) and reported as return codes; nothing unwinds through Rust.
    struct Handle(TjHandle);

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: the handle came from tjInitDecompress and is destroyed once.
            unsafe { tjDestroy(self.0) };
        }
    }

    impl Handle {
        fn message(&self) -> String {
            // SAFETY: tjGetErrorStr2 returns a NUL-terminated string owned by the handle or
            // by TurboJPEG's thread-local buffer; we copy it immediately.
            unsafe {
                let p = tjGetErrorStr2(self.0);
                if p.is_null() {
                    "unknown libjpeg error".to_string()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            }
        }
    }

    /// EXIF orientation from the first APP1 "Exif" segment (what PIL's `info["exif"]` holds).
    fn jpeg_exif_orientation(b: &[u8]) -> Option<u16> {
        let mut i = 2;
        while i + 4 <= b.len() {
            if b[i] != 0xFF {
                return None;
            }
            let marker = b[i + 1];
            if marker == 0xFF {
                i += 1;
                continue;
            }
            if marker == 0xDA || marker == 0xD9 {
                return None;
            }
            if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
                i += 2;
                continue;
            }
            let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
            if len < 2 {
                return None;
            }
            let seg = b.get(i + 4..(i + 2 + len).min(b.len()))?;
            if marker == 0xE1 && seg.starts_with(b"Exif\0\0") {
                return exif_orientation(seg);
            }
            i += 2 + len;
        }
        None
    }

    /// True when no EOI marker follows the last start-of-scan: the data was cut short.
    fn looks_truncated(b: &[u8]) -> bool {
        let last_sos = b.windows(2).rposition(|w| w == [0xFF, 0xDA]);
        match last_sos {
            None => true,
            Some(p) => !b[p..].windows(2).any(|w| w == [0xFF, 0xD9]),
        }
    }

    pub(super) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
        let f = Format::Jpeg;
        let size = c_ulong::try_from(bytes.len()).map_err(|_| corrupt(f, "file too large"))?;
        // SAFETY: plain constructor; NULL on failure.
        let h = unsafe { tjInitDecompress() };
        if h.is_null() {
            return Err(corrupt(f, "cannot initialize the JPEG decoder"));
        }
        let h = Handle(h);
        let (mut w, mut ht, mut subsamp, mut cs) = (0, 0, 0, 0);
        // SAFETY: buffer pointer/length are valid for the call; out-params are valid.
        let rc = unsafe {
            tjDecompressHeader3(
                h.0,
                bytes.as_ptr(),
                size,
                &mut w,
                &mut ht,
                &mut subsamp,
                &mut cs,
            )
        };
        if rc != 0 {
            let msg = h.message();
            if msg.contains("Unsupported color conversion")
                || msg.contains("Unsupported JPEG process")
                || msg.contains("precision")
            {
                return Err(unsupported(f, msg));
            }
            return Err(corrupt(f, msg));
        }
        let (width, height) = check_dims(f, w.max(0) as u64, ht.max(0) as u64, max_pixels)?;
        let (pf, channels) = match cs {
            TJCS_GRAY => (TJPF_GRAY, 1),
            TJCS_CMYK | TJCS_YCCK => (TJPF_CMYK, 4),
            _ => (TJPF_RGB, 3),
        };
        let mut buf = vec![0u8; width * height * channels];
        // SAFETY: `buf` holds exactly width*height*channels bytes and pitch = width*channels.
        let rc = unsafe {
            tjDecompress2(
                h.0,
                bytes.as_ptr(),
                size,
                buf.as_mut_ptr(),
                w,
                (width * channels) as c_int,
                ht,
                pf,
                TJFLAG_LIMITSCANS,
            )
        };
        if rc != 0 {
            // SAFETY: valid handle.
            let code = unsafe { tjGetErrorCode(h.0) };
            let msg = h.message();
            // PIL ignores libjpeg warnings (e.g. "Corrupt JPEG data: extraneous bytes") but
            // refuses truncated files ("image file is truncated").
            if code != TJERR_WARNING || msg.contains("Premature end") || looks_truncated(bytes) {
                if code == TJERR_WARNING || msg.contains("Premature end") {
                    return Err(corrupt(f, format!("truncated file ({msg})")));
                }
                if msg.contains("more than 500 scans") {
                    return Err(unsupported(f, msg));
                }
                return Err(corrupt(f, msg));
            }
        }
        let pixels = match channels {
            1 => Pixels::L(buf),
            3 => Pixels::Rgb(buf),
            _ => {
                // PIL opens 4-component JPEGs with rawmode "CMYK;I" (Adobe inverted values).
                for v in buf.iter_mut() {
                    *v = !*v;
                }
                Pixels::Cmyk(buf)
            }
        };
        Ok(Decoded {
            width,
            height,
            pixels,
            orientation: jpeg_exif_orientation(bytes),
        })
    }
}

// ------------------------------------------------------------------------------------------------
// PNG

fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
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

pub(crate) fn palette_from_rgb(p: &[u8]) -> Box<[[u8; 3]; 256]> {
    let mut pal = Box::new([[0u8; 3]; 256]);
    for (dst, src) in pal.iter_mut().zip(p.chunks_exact(3)) {
        dst.copy_from_slice(src);
    }
    pal
}

// ------------------------------------------------------------------------------------------------
// GIF (first frame, as PIL's GifImagePlugin loads it)

fn decode_gif(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
    let f = Format::Gif;
    // PIL checks (and allocates) the logical screen: check it before the decoder runs.
    if bytes.len() >= 10 {
        let sw = u16::from_le_bytes([bytes[6], bytes[7]]) as u64;
        let sh = u16::from_le_bytes([bytes[8], bytes[9]]) as u64;
        check_dims(f, sw.max(1), sh.max(1), max_pixels)?;
    }
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    let mem = (max_pixels.min(1 << 32) as usize).saturating_add(1 << 20);
    if let Some(m) = std::num::NonZeroU64::new(mem as u64) {
        opts.set_memory_limit(gif::MemoryLimit::Bytes(m));
    }
    let mut dec = opts
        .read_info(Cursor::new(bytes))
        .map_err(|e| corrupt(f, e))?;
    let (sw, sh) = (dec.width() as u64, dec.height() as u64);
    let global = dec.global_palette().map(|p| p.to_vec());
    // PIL only keeps a palette when it is not the identity grey ramp ("palette needed").
    let needed = |p: &[u8]| {
        p.chunks_exact(3)
            .enumerate()
            .any(|(i, c)| !(c[0] as usize == i && c[1] as usize == i && c[2] as usize == i))
    };
    let global_palette = global.filter(|p| needed(p));
    let frame = dec
        .read_next_frame()
        .map_err(|e| corrupt(f, e))?
        .ok_or_else(|| corrupt(f, "no image in GIF file"))?;
    let (x0, y0) = (frame.left as usize, frame.top as usize);
    let (fw, fh) = (frame.width as usize, frame.height as usize);
    let width = (sw as usize).max(x0 + fw);
    let height = (sh as usize).max(y0 + fh);
    let (width, height) = check_dims(f, width as u64, height as u64, max_pixels)?;
    let frame_palette: Option<Vec<u8>> = match &frame.palette {
        Some(p) if needed(p) => Some(p.clone()),
        Some(_) => None, // local grey-ramp palette: PIL drops the global one too
        None => global_palette,
    };
    let fill = frame.transparent.unwrap_or(0);
    let mut idx = vec![fill; width * height];
    let buf = &frame.buffer;
    if buf.len() < fw * fh {
        return Err(corrupt(f, "truncated frame data"));
    }
    for y in 0..fh {
        let d = (y0 + y) * width + x0;
        idx[d..d + fw].copy_from_slice(&buf[y * fw..(y + 1) * fw]);
    }
    let pixels = match frame_palette {
        Some(p) => Pixels::P {
            idx,
            palette: palette_from_rgb(&p),
        },
        None => Pixels::L(idx),
    };
    Ok(Decoded {
        width,
        height,
        pixels,
        orientation: None,
    })
}

// ------------------------------------------------------------------------------------------------
// WebP

fn decode_webp(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
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

// ------------------------------------------------------------------------------------------------
// TIFF (first image), modes as PIL's TiffImagePlugin maps them

fn decode_tiff(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
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
    let img = dec.read_image().map_err(|e| corrupt(f, e))?;
    let n = width * height;
    let white_is_zero = photometric == Some(0);
    let bad = |what: &str| unsupported(f, format!("{what} ({color:?})"));
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

// ------------------------------------------------------------------------------------------------
// BMP, following PIL's BmpImagePlugin

mod bmp {
    use super::{Decoded, Format, ImageError, Pixels, check_dims, corrupt, unsupported};

    const F: Format = Format::Bmp;

    fn u16le(b: &[u8], o: usize) -> Result<u16, ImageError> {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
            .ok_or_else(|| corrupt(F, "truncated header"))
    }

    fn u32le(b: &[u8], o: usize) -> Result<u32, ImageError> {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or_else(|| corrupt(F, "truncated header"))
    }

    pub(super) fn decode(b: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
        let offset = u32le(b, 10)? as usize;
        let header_size = u32le(b, 14)? as usize;
        let hd = b
            .get(18..14 + header_size.max(4))
            .ok_or_else(|| corrupt(F, "truncated header"))?;
        let (width, height, bits, compression, mut colors, padding, top_down);
        let mut masks: Option<[u32; 4]> = None;
        let mut after_header = 14 + header_size;
        match header_size {
            12 => {
                width = u16le(hd, 0)? as u64;
                height = u16le(hd, 2)? as u64;
                bits = u16le(hd, 6)?;
                compression = 0;
                colors = 0;
                padding = 3;
                top_down = false;
            }
            40 | 52 | 56 | 64 | 108 | 124 => {
                top_down = hd[7] == 0xFF;
                width = u32le(hd, 0)? as u64;
                let h = u32le(hd, 4)?;
                height = if top_down {
                    (1u64 << 32) - h as u64
                } else {
                    h as u64
                };
                bits = u16le(hd, 10)?;
                compression = u32le(hd, 12)?;
                colors = u32le(hd, 28)? as u64;
                padding = 4;
                if compression == 3 {
                    if hd.len() >= 48 {
                        let a = if hd.len() >= 52 { u32le(hd, 48)? } else { 0 };
                        masks = Some([u32le(hd, 36)?, u32le(hd, 40)?, u32le(hd, 44)?, a]);
                    } else {
                        masks = Some([
                            u32le(b, after_header)?,
                            u32le(b, after_header + 4)?,
                            u32le(b, after_header + 8)?,
                            0,
                        ]);
                        after_header += 12;
                    }
                }
            }
            _ => return Err(unsupported(F, format!("BMP header type {header_size}"))),
        }
        let (w, h) = check_dims(F, width, height, max_pixels)?;
        if colors == 0 {
            colors = 1u64 << bits.min(32);
        }
        let mut data_offset = offset;
        if offset == 14 + header_size && bits <= 8 {
            data_offset += padding * colors as usize;
        }
        let _ = after_header;
        enum Raw {
            Pal(u16),
            Bgr15,
            Bgr16,
            Bgr,
            Bgrx,
            Masked32([u32; 4], bool),
        }
        let (raw, rle) = match (bits, compression) {
            (1 | 4 | 8, 0) => (Raw::Pal(bits), false),
            (8, 1) | (4, 2) => (Raw::Pal(bits), true),
            (16, 0) => (Raw::Bgr15, false),
            (24, 0) => (Raw::Bgr, false),
            (32, 0) => (Raw::Bgrx, false),
            (16, 3) => match masks {
                Some([0xF800, 0x7E0, 0x1F, _]) => (Raw::Bgr16, false),
                Some([0x7C00, 0x3E0, 0x1F, _]) => (Raw::Bgr15, false),
                _ => return Err(unsupported(F, "BMP bitfields layout")),
            },
            (24, 3) => match masks {
                Some([0xFF0000, 0xFF00, 0xFF, _]) => (Raw::Bgr, false),
                _ => return Err(unsupported(F, "BMP bitfields layout")),
            },
            (32, 3) => {
                let m = masks.unwrap_or([0; 4]);
                const OK: [[u32; 4]; 8] = [
                    [0xFF0000, 0xFF00, 0xFF, 0x0],
                    [0xFF000000, 0xFF0000, 0xFF00, 0x0],
                    [0xFF000000, 0xFF00, 0xFF, 0x0],
                    [0xFF000000, 0xFF0000, 0xFF00, 0xFF],
                    [0xFF, 0xFF00, 0xFF0000, 0xFF000000],
                    [0xFF0000, 0xFF00, 0xFF, 0xFF000000],
                    [0xFF000000, 0xFF00, 0xFF, 0xFF0000],
                    [0x0, 0x0, 0x0, 0x0],
                ];
                if !OK.contains(&m) {
                    return Err(unsupported(F, "BMP bitfields layout"));
                }
                // All-zero masks mean BGRA in PIL.
                let m = if m == [0; 4] {
                    [0xFF0000, 0xFF00, 0xFF, 0xFF000000]
                } else {
                    m
                };
                (Raw::Masked32(m, m[3] != 0), false)
            }
            (1 | 4 | 8 | 16 | 24 | 32, c) => {
                return Err(unsupported(F, format!("BMP compression {c}")));
            }
            (b, _) => return Err(unsupported(F, format!("BMP pixel depth {b}"))),
        };
        let data = b.get(data_offset.min(b.len())..).unwrap_or(&[]);
        // Palette and PIL's grey-ramp detection ("1"/"L" instead of "P").
        let mut palette = Box::new([[0u8; 3]; 256]);
        let mut mode_gray = false;
        if let Raw::Pal(_) = raw {
            if !(1..=65536).contains(&colors) {
                return Err(unsupported(F, format!("BMP palette size {colors}")));
            }
            let pal_start = 14 + header_size;
            let pal = b
                .get(pal_start..pal_start + padding * colors as usize)
                .ok_or_else(|| corrupt(F, "truncated palette"))?;
            let mut gray = true;
            for i in 0..colors as usize {
                let val = if colors == 2 {
                    [0u8, 255][i]
                } else {
                    i.min(255) as u8
                };
                let e = &pal[i * padding..i * padding + 3];
                if e != [val, val, val] || (colors != 2 && i > 255) {
                    gray = false;
                }
                if i < 256 {
                    palette[i] = [e[2], e[1], e[0]];
                }
            }
            mode_gray = gray;
        }
        let bilevel = mode_gray && colors <= 2;
        if rle {
            let idx = decode_rle(data, data_offset, w, h, bits == 4);
            // PIL stores RLE output in row order bottom-up unless top-down.
            let idx = flip_rows(idx, w, h, !top_down);
            return Ok(finish_pal(idx, w, h, mode_gray, bilevel, palette));
        }
        let stride = ((w as u64 * bits as u64 + 31) >> 3) as usize & !3;
        let row = |y: usize| -> &[u8] {
            // Bottom-up unless top-down; missing data reads as zeros (handled by caller).
            let src_y = if top_down { y } else { h - 1 - y };
            let s = src_y * stride;
            data.get(s..(s + stride).min(data.len())).unwrap_or(&[])
        };
        // Like PIL's raw decoder, the last row's padding may be missing.
        let row_bytes = (w * bits as usize).div_ceil(8);
        if data.len() < stride * (h - 1) + row_bytes {
            return Err(corrupt(F, "truncated pixel data"));
        }
        let pixels = match raw {
            Raw::Pal(bits) => {
                let bits = bits as usize;
                let per = 8 / bits;
                let mask = ((1u16 << bits) - 1) as u8;
                let mut idx = Vec::with_capacity(w * h);
                for y in 0..h {
                    let r = row(y);
                    for x in 0..w {
                        idx.push((r[x / per] >> (8 - bits * (x % per + 1))) & mask);
                    }
                }
                return Ok(finish_pal(idx, w, h, mode_gray, bilevel, palette));
            }
            Raw::Bgr => {
                let mut v = Vec::with_capacity(w * h * 3);
                for y in 0..h {
                    for p in row(y)[..w * 3].chunks_exact(3) {
                        v.extend_from_slice(&[p[2], p[1], p[0]]);
                    }
                }
                Pixels::Rgb(v)
            }
            Raw::Bgrx => {
                let mut v = Vec::with_capacity(w * h * 3);
                for y in 0..h {
                    for p in row(y)[..w * 4].chunks_exact(4) {
                        v.extend_from_slice(&[p[2], p[1], p[0]]);
                    }
                }
                Pixels::Rgb(v)
            }
            Raw::Bgr15 | Raw::Bgr16 => {
                let mut v = Vec::with_capacity(w * h * 3);
                let is16 = matches!(raw, Raw::Bgr16);
                for y in 0..h {
                    for p in row(y)[..w * 2].chunks_exact(2) {
                        let px = p[0] as u32 | (p[1] as u32) << 8;
                        let (r, g, bl) = if is16 {
                            ((px >> 11) & 31, (px >> 5) & 63, px & 31)
                        } else {
                            ((px >> 10) & 31, (px >> 5) & 31, px & 31)
                        };
                        let gmax = if is16 { 63 } else { 31 };
                        v.extend_from_slice(&[
                            (r * 255 / 31) as u8,
                            (g * 255 / gmax) as u8,
                            (bl * 255 / 31) as u8,
                        ]);
                    }
                }
                Pixels::Rgb(v)
            }
            Raw::Masked32(m, alpha) => {
                let mut v = Vec::with_capacity(w * h * if alpha { 4 } else { 3 });
                let byte_of = |mask: u32| mask.trailing_zeros() / 8;
                let (rb, gb, bb, ab) = (byte_of(m[0]), byte_of(m[1]), byte_of(m[2]), byte_of(m[3]));
                for y in 0..h {
                    for p in row(y)[..w * 4].chunks_exact(4) {
                        let px = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                        let get = |sh: u32| ((px >> (sh * 8)) & 0xFF) as u8;
                        v.extend_from_slice(&[get(rb), get(gb), get(bb)]);
                        if alpha {
                            v.push(get(ab));
                        }
                    }
                }
                if alpha {
                    Pixels::Rgba(v)
                } else {
                    Pixels::Rgb(v)
                }
            }
        };
        Ok(Decoded {
            width: w,
            height: h,
            pixels,
            orientation: None,
        })
    }

    fn finish_pal(
        idx: Vec<u8>,
        w: usize,
        h: usize,
        gray: bool,
        bilevel: bool,
        palette: Box<[[u8; 3]; 256]>,
    ) -> Decoded {
        let pixels = if bilevel {
            Pixels::Bilevel(
                idx.into_iter()
                    .map(|v| if v != 0 { 255 } else { 0 })
                    .collect(),
            )
        } else if gray {
            Pixels::L(idx)
        } else {
            Pixels::P { idx, palette }
        };
        Decoded {
            width: w,
            height: h,
            pixels,
            orientation: None,
        }
    }

    fn flip_rows(v: Vec<u8>, w: usize, h: usize, flip: bool) -> Vec<u8> {
        if !flip {
            return v;
        }
        let mut out = Vec::with_capacity(v.len());
        for y in (0..h).rev() {
            out.extend_from_slice(&v[y * w..(y + 1) * w]);
        }
        out
    }

    /// PIL's BmpRleDecoder (RLE8 / RLE4), producing `w*h` indices in file row order.
    fn decode_rle(d: &[u8], base: usize, w: usize, h: usize, rle4: bool) -> Vec<u8> {
        let dest = w * h;
        let mut data: Vec<u8> = Vec::with_capacity(dest);
        let mut x = 0usize;
        let mut i = 0usize;
        while data.len() < dest {
            if i + 2 > d.len() {
                break;
            }
            let (num, byte) = (d[i] as usize, d[i + 1]);
            i += 2;
            if num > 0 {
                let num = if x + num > w {
                    w.saturating_sub(x)
                } else {
                    num
                };
                if rle4 {
                    let (a, b) = (byte >> 4, byte & 0x0F);
                    for k in 0..num {
                        data.push(if k % 2 == 0 { a } else { b });
                    }
                } else {
                    data.extend(std::iter::repeat_n(byte, num));
                }
                x += num;
            } else if byte == 0 {
                while !data.len().is_multiple_of(w) {
                    data.push(0);
                }
                x = 0;
            } else if byte == 1 {
                break;
            } else if byte == 2 {
                if i + 2 > d.len() {
                    break;
                }
                let (right, up) = (d[i] as usize, d[i + 1] as usize);
                i += 2;
                let add = (dest - data.len()).min(right + up * w);
                data.extend(std::iter::repeat_n(0, add));
                x = data.len() % w;
            } else {
                let count = (dest - data.len()).min(byte as usize);
                let byte_count;
                let avail;
                if rle4 {
                    byte_count = count.div_ceil(2);
                    let rd = &d[i..(i + byte_count).min(d.len())];
                    avail = rd.len();
                    for (k, &b) in rd.iter().enumerate() {
                        data.push(b >> 4);
                        if k * 2 + 1 < count {
                            data.push(b & 0x0F);
                        }
                    }
                } else {
                    byte_count = count;
                    let rd = &d[i..(i + byte_count).min(d.len())];
                    avail = rd.len();
                    data.extend_from_slice(rd);
                }
                i += avail;
                if avail < byte_count || data.len() == dest {
                    break;
                }
                x += byte as usize;
                // Align to a 16-bit boundary relative to the file start: PIL uses fd.tell();
                // the pixel data offset is even in practice, so align relative to the data.
                if !(base + i).is_multiple_of(2) {
                    i += 1;
                }
            }
        }
        data.resize(dest, 0);
        data.truncate(dest);
        data
    }
}
