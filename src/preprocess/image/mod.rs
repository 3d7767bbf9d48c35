//! Image preprocessing bit-identical to open_clip's `preprocess(PIL.Image.open(f))`.
//!
//! open_clip's inference transform (ViT-B-32 / datacomp_xl_s13b_b90k) is
//! `Resize(224, BICUBIC)` -> `CenterCrop(224)` -> `convert('RGB')` -> `ToTensor` -> `Normalize`,
//! applied to the PIL image *in its original mode*. This module reproduces each step:
//!
//! * [`decode`]: decoding to PIL's mode and values (libjpeg-turbo for JPEG, like PIL; palette
//!   images stay indexed, 16-bit grayscale stays 16-bit, CMYK JPEGs are inverted like "CMYK;I").
//! * [`resample`]: a port of Pillow's `Resample.c` (fixed point, 22 bits) computing only the
//!   pixels the center crop keeps, bit-identical to the full resize followed by the crop.
//! * [`convert`]: Pillow's premultiplied-alpha resize round trip and `convert('RGB')`.
//!
//! [`preprocess`] returns the 8-bit RGB crop (HWC); [`normalize_into_nchw`] does
//! ToTensor + Normalize in f32 exactly as torchvision does.
//!
//! All functions are pure (no global state) and all types are `Send + Sync`, so they can run
//! on `tokio::task::spawn_blocking`.

pub mod config;
mod convert;
mod cost;
mod decode;
#[cfg(test)]
mod odd_files;
mod resample;

pub use config::{ConfigError, Interpolation, PreprocessConfig, ResizeMode};
/// Peak bytes this thread allocates while running a closure (tests; the counting allocator).
#[cfg(test)]
pub(crate) use cost::tests::peak_of;
pub use cost::{DecodeCost, decode_cost};
pub use decode::{Format, sniff};

use decode::{Decoded, Pixels};
use resample::{Geometry, Kernel, Window};

/// Per-request decoding options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageOptions {
    /// Refuse images with more than this many pixels (checked from the header, before
    /// any pixel buffer is allocated).
    pub max_pixels: u64,
    /// Apply the EXIF orientation before resizing. open_clip ignores it, so the default is off.
    pub apply_exif_orientation: bool,
}

impl Default for ImageOptions {
    /// PIL's `Image.MAX_IMAGE_PIXELS` (89,478,485) and no EXIF orientation, like open_clip.
    fn default() -> Self {
        ImageOptions {
            max_pixels: 89_478_485,
            apply_exif_orientation: false,
        }
    }
}

/// Why an image could not be preprocessed. Messages are meant for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("empty image data")]
    Empty,
    #[error("unrecognized image format (supported: JPEG, PNG, GIF, WebP, BMP, TIFF)")]
    UnrecognizedFormat,
    #[error("corrupt or undecodable {format} image: {reason}")]
    Corrupt {
        format: &'static str,
        reason: String,
    },
    #[error("image too large: {width} x {height} pixels exceeds the limit of {limit} pixels")]
    TooManyPixels { width: u64, height: u64, limit: u64 },
    #[error(
        "image is {width} x {height} pixels: resizing it as open_clip does would make one side {resized} pixels, \
         over the limit of {limit} (aspect ratio too extreme)"
    )]
    ExtremeAspectRatio {
        width: u64,
        height: u64,
        resized: u64,
        limit: u64,
    },
    #[error(
        "image is {width} x {height} pixels: resizing it needs a filter table of {entries} entries, over the \
         limit of {limit} (aspect ratio too extreme)"
    )]
    FilterTableTooLarge {
        width: u64,
        height: u64,
        entries: u64,
        limit: u64,
    },
    #[error("unsupported {format} image: {reason}")]
    Unsupported {
        format: &'static str,
        reason: String,
    },
}

/// Decode `bytes`, resize/crop/pad like open_clip, and return the RGB result as HWC u8
/// (`cfg.size.0 * cfg.size.1 * 3` bytes): exactly the 8-bit levels of open_clip's tensor
/// before ToTensor/Normalize.
pub fn preprocess(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    opts: &ImageOptions,
) -> Result<Vec<u8>, ImageError> {
    let mut img = decode::decode(bytes, opts.max_pixels)?;
    if opts.apply_exif_orientation
        && let Some(o) = img.orientation
    {
        img = decode::transpose(img, o);
    }
    check_resized_size(&img, cfg)?;
    Ok(transform(&img, cfg))
}

/// [`preprocess`] for a decode that reserved `cost` (from [`decode_cost`]) of the server's decode
/// budget: the decode may not produce more pixels than the reservation counted, so a file whose
/// data is larger than its header says is refused instead of outgrowing its reservation.
pub fn preprocess_within(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    opts: &ImageOptions,
    cost: &DecodeCost,
) -> Result<Vec<u8>, ImageError> {
    let bounded = ImageOptions {
        max_pixels: cost.pixels.min(opts.max_pixels),
        ..*opts
    };
    preprocess(bytes, cfg, &bounded).map_err(|e| match e {
        ImageError::TooManyPixels { width, height, .. }
            if width.saturating_mul(height) <= opts.max_pixels =>
        {
            ImageError::Corrupt {
                format: sniff(bytes).map_or("image", Format::name),
                reason: format!(
                    "its data is {width} x {height} pixels, more than its header says ({} pixels)",
                    cost.pixels
                ),
            }
        }
        e => e,
    })
}

/// Longest side of the resized (pre-crop) image, in multiples of the output size. The resampler's
/// coefficient tables span the whole resized axis, so a 1 x 40,000,000 strip (within the pixel limit)
/// would ask for 9 billion output positions: refuse such aspect ratios (over 100:1) up front.
pub const MAX_RESIZED_SIDE_FACTOR: u64 = 100;

/// Most entries of one axis' resampling coefficient table (8 bytes each: 64 MiB). The table has
/// one row per output sample and a row grows with the downscale factor, so its size follows the
/// *input* side: a 40,000,000 x 1 strip squashed to 224 x 224 would ask for 160 million entries
/// (1.3 GB). Photographs stay far below (8000 x 6000 bicubic to 224: 32,000 entries).
pub const MAX_FILTER_TABLE_ENTRIES: u64 = 8 << 20;

fn check_resized_size(img: &Decoded, cfg: &PreprocessConfig) -> Result<(), ImageError> {
    let p = plan(cfg, img.width, img.height);
    let limit = MAX_RESIZED_SIDE_FACTOR * u64::from(cfg.size.0.max(cfg.size.1));
    let resized = p.resized.0.max(p.resized.1) as u64;
    if resized > limit {
        return Err(ImageError::ExtremeAspectRatio {
            width: img.width as u64,
            height: img.height as u64,
            resized,
            limit,
        });
    }
    if let Some(kernel) = p.kernel {
        let entries = resample::table_entries(img.width, p.resized.0, kernel)
            .max(resample::table_entries(img.height, p.resized.1, kernel));
        if entries > MAX_FILTER_TABLE_ENTRIES {
            return Err(ImageError::FilterTableTooLarge {
                width: img.width as u64,
                height: img.height as u64,
                entries,
                limit: MAX_FILTER_TABLE_ENTRIES,
            });
        }
    }
    Ok(())
}

/// Decode only, reporting (width, height, PIL mode): a debugging aid.
#[doc(hidden)]
pub fn inspect(bytes: &[u8], max_pixels: u64) -> Result<(usize, usize, &'static str), ImageError> {
    let img = decode::decode(bytes, max_pixels)?;
    Ok((img.width, img.height, img.pixels.mode()))
}

/// torchvision `ToTensor` + `Normalize`: `out[c][y][x] = (v / 255 - mean[c]) / std[c]` in f32.
///
/// `pixels` is HWC RGB u8 of `cfg.size`; `out` must hold `3 * height * width` values (CHW).
pub fn normalize_into_nchw(pixels: &[u8], cfg: &PreprocessConfig, out: &mut [f32]) {
    let hw = cfg.size.0 as usize * cfg.size.1 as usize;
    assert_eq!(
        pixels.len(),
        hw * 3,
        "pixels must be height * width * 3 bytes"
    );
    assert_eq!(out.len(), hw * 3, "out must hold 3 * height * width values");
    let (r, rest) = out.split_at_mut(hw);
    let (g, b) = rest.split_at_mut(hw);
    // Per-level lookup tables hold exactly the f32 results of the element-wise formula.
    let table = |c: usize| -> [f32; 256] {
        std::array::from_fn(|v| (v as f32 / 255.0f32 - cfg.mean[c]) / cfg.std[c])
    };
    let (tr, tg, tb) = (table(0), table(1), table(2));
    for (i, px) in pixels.chunks_exact(3).enumerate() {
        r[i] = tr[px[0] as usize];
        g[i] = tg[px[1] as usize];
        b[i] = tb[px[2] as usize];
    }
}

// ------------------------------------------------------------------------------------------------

/// Python's `round()` for x/2 with integer x (round half to even).
fn round_half_even_div2(x: i64) -> i64 {
    let q = x.div_euclid(2);
    if x.rem_euclid(2) == 0 || q % 2 == 0 {
        q
    } else {
        q + 1
    }
}

/// Python's `round()` of a float to int (half to even).
fn py_round(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        // exact tie: choose the even neighbour
        let f = x.floor();
        if (f as i64) % 2 == 0 {
            f as i64
        } else {
            f as i64 + 1
        }
    } else {
        r as i64
    }
}

/// open_clip's `ResizeKeepRatio.get_params` (timm): returns (height, width).
fn keep_ratio_size(h: usize, w: usize, target: (u32, u32), longest: f64) -> (usize, usize) {
    let ratio_h = h as f64 / target.0 as f64;
    let ratio_w = w as f64 / target.1 as f64;
    let ratio = ratio_h.max(ratio_w) * longest + ratio_h.min(ratio_w) * (1.0 - longest);
    let nh = py_round(h as f64 * 1.0 / ratio).max(0) as usize;
    let nw = py_round(w as f64 * 1.0 / ratio).max(0) as usize;
    (nh, nw)
}

/// The resize target (width, height), filter, and crop/pad geometry of open_clip's transform.
struct Plan {
    resized: (usize, usize),
    kernel: Option<Kernel>,
    /// Crop size (height, width) = output size.
    crop: (usize, usize),
    /// Padding (left, top) added before cropping (torchvision pad / CenterCropOrPad).
    pad: (usize, usize),
    /// Padded size (width, height).
    padded: (usize, usize),
    /// Crop offset (left, top) in the padded image.
    offset: (usize, usize),
    fill: u8,
}

fn kernel_for(i: Interpolation) -> Option<Kernel> {
    match i {
        Interpolation::Nearest => None,
        Interpolation::Box => Some(Kernel::Box),
        Interpolation::Bilinear => Some(Kernel::Bilinear),
        Interpolation::Hamming => Some(Kernel::Hamming),
        Interpolation::Bicubic => Some(Kernel::Bicubic),
        Interpolation::Lanczos => Some(Kernel::Lanczos),
    }
}

fn plan(cfg: &PreprocessConfig, w: usize, h: usize) -> Plan {
    let (th, tw) = (cfg.size.0 as usize, cfg.size.1 as usize);
    let mut kernel = kernel_for(cfg.interpolation);
    let mut fill = 0u8;
    let (rw, rh) = match cfg.resize_mode {
        ResizeMode::Shortest if th == tw => {
            // torchvision Resize(int): shortest side -> size, long side int(size * long / short).
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            let new_long = ((th as u64 * long as u64) as f64 / short as f64) as usize;
            if w <= h {
                (th, new_long)
            } else {
                (new_long, th)
            }
        }
        ResizeMode::Shortest => {
            // ResizeKeepRatio(size) keeps its default BICUBIC interpolation.
            kernel = Some(Kernel::Bicubic);
            let (nh, nw) = keep_ratio_size(h, w, cfg.size, 0.0);
            (nw, nh)
        }
        ResizeMode::Longest => {
            fill = cfg.fill_color;
            let (nh, nw) = keep_ratio_size(h, w, cfg.size, 1.0);
            (nw, nh)
        }
        ResizeMode::Squash => (tw, th),
    };
    let (crop_h, crop_w) = (th, tw);
    let pad_l = if crop_w > rw { (crop_w - rw) / 2 } else { 0 };
    let pad_t = if crop_h > rh { (crop_h - rh) / 2 } else { 0 };
    let pad_r = if crop_w > rw {
        (crop_w - rw).div_ceil(2)
    } else {
        0
    };
    let pad_b = if crop_h > rh {
        (crop_h - rh).div_ceil(2)
    } else {
        0
    };
    let (pw, ph) = (rw + pad_l + pad_r, rh + pad_t + pad_b);
    let off_t = round_half_even_div2(ph as i64 - crop_h as i64).max(0) as usize;
    let off_l = round_half_even_div2(pw as i64 - crop_w as i64).max(0) as usize;
    Plan {
        resized: (rw, rh),
        kernel,
        crop: (crop_h, crop_w),
        pad: (pad_l, pad_t),
        padded: (pw, ph),
        offset: (off_l, off_t),
        fill,
    }
}

/// The transform on a decoded image: resize (in the image's mode) -> crop/pad -> RGB.
fn transform(img: &Decoded, cfg: &PreprocessConfig) -> Vec<u8> {
    let p = plan(cfg, img.width, img.height);
    let (rw, rh) = p.resized;
    let (ch, cw) = p.crop;
    // Region of the resized image that lands in the output.
    let x_lo = p.offset.0.saturating_sub(p.pad.0).min(rw);
    let y_lo = p.offset.1.saturating_sub(p.pad.1).min(rh);
    let x_hi = (p.offset.0 + cw).saturating_sub(p.pad.0).min(rw).max(x_lo);
    let y_hi = (p.offset.1 + ch).saturating_sub(p.pad.1).min(rh).max(y_lo);
    let win = Window {
        x0: x_lo,
        y0: y_lo,
        w: x_hi - x_lo,
        h: y_hi - y_lo,
    };
    let g = Geometry {
        width: img.width,
        height: img.height,
        out_width: rw,
        out_height: rh,
    };
    let region = resize_window(&img.pixels, g, win, p.kernel);
    let region_rgb = convert::to_rgb(&region);
    let fill_rgb = fill_pixel_rgb(&img.pixels, p.fill);

    let _ = p.padded;
    let mut out = Vec::with_capacity(ch * cw * 3);
    for oy in 0..ch {
        for ox in 0..cw {
            // padded coords -> resized coords
            let py = oy + p.offset.1;
            let px = ox + p.offset.0;
            let inside = py >= p.pad.1 && px >= p.pad.0 && py - p.pad.1 < rh && px - p.pad.0 < rw;
            if inside {
                let (ry, rx) = (py - p.pad.1 - win.y0, px - p.pad.0 - win.x0);
                let i = (ry * win.w + rx) * 3;
                out.extend_from_slice(&region_rgb[i..i + 3]);
            } else {
                out.extend_from_slice(&fill_rgb);
            }
        }
    }
    out
}

/// The RGB value of a padding pixel: PIL fills in the image's own mode (fill on every band, a
/// palette index for "P"), then `convert('RGB')`.
fn fill_pixel_rgb(pixels: &Pixels, f: u8) -> [u8; 3] {
    let one = match pixels {
        Pixels::Bilevel(_) => Pixels::Bilevel(vec![f]),
        Pixels::L(_) => Pixels::L(vec![f]),
        Pixels::P { palette, .. } => Pixels::P {
            idx: vec![f],
            palette: palette.clone(),
        },
        Pixels::La(_) => Pixels::La(vec![f, f]),
        Pixels::Rgb(_) => Pixels::Rgb(vec![f; 3]),
        Pixels::Rgba(_) => Pixels::Rgba(vec![f; 4]),
        Pixels::Cmyk(_) => Pixels::Cmyk(vec![f; 4]),
        Pixels::I16(_) => Pixels::I16(vec![f as u16]),
        Pixels::I16B(_) => Pixels::I16B(vec![f as u16]),
        Pixels::I32(_) => Pixels::I32(vec![f as i32]),
        Pixels::F32(_) => Pixels::F32(vec![f as f32]),
    };
    let v = convert::to_rgb(&one);
    [v[0], v[1], v[2]]
}

/// `Image.resize` in the image's own mode, computing only `win` of the result.
fn resize_window(px: &Pixels, g: Geometry, win: Window, kernel: Option<Kernel>) -> Pixels {
    use resample::{
        nearest_generic, nearest_scale_affine, resample_f32, resample_i32, resample_u8,
        resample_u16,
    };
    // Pillow resizes "1" and "P" images with NEAREST whatever filter is asked for.
    let kernel = match px {
        Pixels::Bilevel(_) | Pixels::P { .. } => None,
        _ => kernel,
    };
    // An unchanged size is a plain copy (torchvision returns the image; Pillow copies).
    let same = g.width == g.out_width && g.height == g.out_height;
    let kernel = if same { None } else { kernel };
    match kernel {
        None => match px {
            Pixels::Bilevel(d) => Pixels::Bilevel(nearest_scale_affine(d, 1, g, win)),
            Pixels::L(d) => Pixels::L(nearest_scale_affine(d, 1, g, win)),
            Pixels::P { idx, palette } => Pixels::P {
                idx: nearest_scale_affine(idx, 1, g, win),
                palette: palette.clone(),
            },
            Pixels::La(d) => Pixels::La(nearest_scale_affine(d, 2, g, win)),
            Pixels::Rgb(d) => Pixels::Rgb(nearest_scale_affine(d, 3, g, win)),
            Pixels::Rgba(d) => Pixels::Rgba(nearest_scale_affine(d, 4, g, win)),
            Pixels::Cmyk(d) => Pixels::Cmyk(nearest_scale_affine(d, 4, g, win)),
            Pixels::I16(d) => Pixels::I16(nearest_generic(d, g, win)),
            Pixels::I16B(d) => Pixels::I16B(nearest_generic(d, g, win)),
            Pixels::I32(d) => Pixels::I32(nearest_scale_affine(d, 1, g, win)),
            Pixels::F32(d) => Pixels::F32(nearest_scale_affine(d, 1, g, win)),
        },
        Some(k) => match px {
            Pixels::Bilevel(_) | Pixels::P { .. } => unreachable!("handled as NEAREST above"),
            Pixels::L(d) => Pixels::L(resample_u8::<1>(d, g, win, k)),
            Pixels::La(d) => {
                // Image.resize: LA -> La, resize, La -> LA.
                let mut pre = d.clone();
                convert::premultiply(&mut pre, 2);
                let mut out = resample_u8::<2>(&pre, g, win, k);
                convert::unpremultiply(&mut out, 2);
                Pixels::La(out)
            }
            Pixels::Rgb(d) => Pixels::Rgb(resample_u8::<3>(d, g, win, k)),
            Pixels::Rgba(d) => {
                // Image.resize: RGBA -> RGBa, resize, RGBa -> RGBA.
                let mut pre = d.clone();
                convert::premultiply(&mut pre, 4);
                let mut out = resample_u8::<4>(&pre, g, win, k);
                convert::unpremultiply(&mut out, 4);
                Pixels::Rgba(out)
            }
            Pixels::Cmyk(d) => Pixels::Cmyk(resample_u8::<4>(d, g, win, k)),
            Pixels::I16(d) => Pixels::I16(resample_u16(d, g, win, k)),
            // Pillow's 16bpc resampler reads and writes "I;16B" as little-endian unless the host
            // is big-endian (Resample.c: `bigendian` is set for "I;16N" only): on the x86/ARM
            // hosts open_clip runs on, it resizes the byte-swapped values and swaps them back.
            Pixels::I16B(d) => {
                let swapped: Vec<u16> = d.iter().map(|v| v.swap_bytes()).collect();
                let mut out = resample_u16(&swapped, g, win, k);
                out.iter_mut().for_each(|v| *v = v.swap_bytes());
                Pixels::I16B(out)
            }
            Pixels::I32(d) => Pixels::I32(resample_i32(d, g, win, k)),
            Pixels::F32(d) => Pixels::F32(resample_f32(d, g, win, k)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: fn() -> PreprocessConfig = PreprocessConfig::default;

    fn opts() -> ImageOptions {
        ImageOptions::default()
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut v = (data.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(data);
        let mut td = kind.to_vec();
        td.extend_from_slice(data);
        v.extend_from_slice(&crc32(&td).to_be_bytes());
        v
    }

    /// Minimal PNG writer: `rows` are raw scanlines (filter byte 0 is added), stored uncompressed.
    fn png(w: u32, h: u32, depth: u8, color: u8, rows: &[Vec<u8>]) -> Vec<u8> {
        let mut raw = Vec::new();
        for r in rows {
            raw.push(0);
            raw.extend_from_slice(r);
        }
        // zlib stream with stored (uncompressed) deflate blocks
        let mut z = vec![0x78, 0x01];
        let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
        for (i, b) in blocks.iter().enumerate() {
            z.push(u8::from(i + 1 == blocks.len()));
            z.extend_from_slice(&(b.len() as u16).to_le_bytes());
            z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
            z.extend_from_slice(b);
        }
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &raw {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        z.extend_from_slice(&((b << 16) | a).to_be_bytes());
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend(chunk(b"IHDR", &ihdr));
        out.extend(chunk(b"IDAT", &z));
        out.extend(chunk(b"IEND", &[]));
        out
    }

    /// 8x8 grayscale baseline JPEG written by Pillow 13 (quality 50) from
    /// value(x, y) = (40 x + 90 y) % 256.
    const TINY_JPEG: &str = "ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e1211101318281a181616183123251d283a333d3c3933383740485c4e404457453738506d51575f626768673e4d71797064785c656763ffc0000b080008000801011100ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffda0008010100003f0064588201190ab048300053121e00e1403238f9be6071f9723fffd9";

    fn tiny_jpeg() -> Vec<u8> {
        (0..TINY_JPEG.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&TINY_JPEG[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn types_are_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<PreprocessConfig>();
        check::<ImageOptions>();
        check::<ImageError>();
        check::<ConfigError>();
    }

    #[test]
    fn client_facing_errors() {
        assert_eq!(preprocess(&[], &CFG(), &opts()), Err(ImageError::Empty));
        let e = preprocess(b"hello world, not an image", &CFG(), &opts()).unwrap_err();
        assert_eq!(e, ImageError::UnrecognizedFormat);
        assert!(
            e.to_string().contains("JPEG, PNG, GIF, WebP, BMP, TIFF"),
            "{e}"
        );
        let mut j = tiny_jpeg();
        j.truncate(j.len() - 20);
        let e = preprocess(&j, &CFG(), &opts()).unwrap_err();
        assert!(
            matches!(e, ImageError::Corrupt { format: "JPEG", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn decompression_bombs_are_refused_from_the_header() {
        // A PNG header claiming 30000 x 30000 pixels, with no pixel data at all.
        let mut p = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = 30000u32.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&30000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        p.extend(chunk(b"IHDR", &ihdr));
        let e = preprocess(&p, &CFG(), &opts()).unwrap_err();
        assert_eq!(
            e,
            ImageError::TooManyPixels {
                width: 30000,
                height: 30000,
                limit: 89_478_485
            }
        );
        assert!(e.to_string().contains("30000 x 30000"), "{e}");
        // GIF logical screen of 65535 x 65535.
        let mut g = b"GIF89a".to_vec();
        g.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0]);
        assert!(matches!(
            preprocess(&g, &CFG(), &opts()),
            Err(ImageError::TooManyPixels { .. })
        ));
        // JPEG whose SOF claims 65000 x 65000 (the SOF0 segment holds height then width).
        let mut j = tiny_jpeg();
        let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        j[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
        assert!(matches!(
            preprocess(&j, &CFG(), &opts()),
            Err(ImageError::TooManyPixels { .. })
        ));
        // A small limit applies to ordinary images too.
        let small = ImageOptions {
            max_pixels: 63,
            ..opts()
        };
        assert!(matches!(
            preprocess(&tiny_jpeg(), &CFG(), &small),
            Err(ImageError::TooManyPixels { .. })
        ));
    }

    #[test]
    fn extreme_aspect_ratios_are_refused_before_resizing() {
        // A 1 x 30,000 gray strip: few pixels, but open_clip's resize would make it 224 x 6,720,000
        // (a 1 x 40,000,000 strip, 78 KB as a PNG, used to ask the resampler for 358 GB).
        let tall = png(1, 30_000, 8, 0, &vec![vec![128u8]; 30_000]);
        let err = preprocess(&tall, &PreprocessConfig::default(), &opts()).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::ExtremeAspectRatio {
                    resized: 6_720_000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("aspect ratio"), "{err}");
        // 100:1 still works (2000 x 20 -> 22400 x 224).
        let wide = png(2000, 20, 8, 0, &vec![vec![7u8; 2000]; 20]);
        assert!(preprocess(&wide, &PreprocessConfig::default(), &opts()).is_ok());
    }

    #[test]
    fn filter_tables_are_bounded_in_every_resize_mode() {
        // Squash and longest keep the output small, but the table follows the input side.
        for mode in [ResizeMode::Squash, ResizeMode::Longest] {
            let cfg = PreprocessConfig {
                resize_mode: mode,
                ..PreprocessConfig::default()
            };
            let strip = png(3_000_000, 1, 8, 0, &[vec![9u8; 3_000_000]]);
            let err = preprocess(&strip, &cfg, &opts()).unwrap_err();
            assert!(
                matches!(err, ImageError::FilterTableTooLarge { .. }),
                "{mode:?}: {err}"
            );
            assert!(err.to_string().contains("filter table"), "{err}");
            // A wide photograph is fine.
            let wide = png(2000, 20, 8, 0, &vec![vec![7u8; 2000]; 20]);
            assert!(preprocess(&wide, &cfg, &opts()).is_ok(), "{mode:?}");
        }
        // The bound is far above what photographs need: 8000 x 6000 bicubic to 224.
        assert!(
            resample::table_entries(8000, 298, resample::Kernel::Bicubic)
                < MAX_FILTER_TABLE_ENTRIES / 100
        );
    }

    #[test]
    fn one_pixel_image_fills_the_output() {
        let p = png(1, 1, 8, 2, &[vec![200, 30, 90]]);
        let out = preprocess(&p, &CFG(), &opts()).unwrap();
        assert_eq!(out.len(), 224 * 224 * 3);
        assert!(out.chunks(3).all(|px| px == [200, 30, 90]));
    }

    #[test]
    fn sixteen_bit_gray_is_clipped_not_scaled() {
        // PIL opens 16-bit gray PNG as "I;16"; convert('RGB') clips values above 255.
        let row: Vec<u8> = [1000u16, 100]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let p = png(2, 1, 16, 0, &[row]);
        let out = preprocess(
            &p,
            &PreprocessConfig {
                resize_mode: ResizeMode::Squash,
                size: (1, 2),
                ..CFG()
            },
            &opts(),
        )
        .unwrap();
        assert_eq!(out, vec![255, 255, 255, 100, 100, 100]);
    }

    #[test]
    fn jpeg_decodes_like_libjpeg_turbo() {
        // open_clip levels of the 8x8 JPEG above, resized to 224 (values from Pillow 13 / open_clip):
        // the image is upscaled, so check the corners and that the output is gray.
        let out = preprocess(&tiny_jpeg(), &CFG(), &opts()).unwrap();
        assert_eq!(out.len(), 224 * 224 * 3);
        assert!(out.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let (_, _, mode) = inspect(&tiny_jpeg(), u64::MAX).unwrap();
        assert_eq!(mode, "L");
    }

    #[test]
    fn normalize_matches_torchvision() {
        // torch: (torch.tensor([0, 1, 128, 255], dtype=torch.uint8).float().div(255) - mean) / std
        let want: [[u32; 4]; 3] = [
            [0xbfe568dc, 0xbfe38a7f, 0x3d9c5620, 0x3ff71541],
            [0xbfe044b8, 0xbfde58f1, 0x3e2cf36b, 0x4004cae5],
            [0xbfbd77d8, 0xbfbba5e1, 0x3eae0dc4, 0x40095660],
        ];
        let cfg = PreprocessConfig {
            size: (1, 4),
            ..CFG()
        };
        let px: Vec<u8> = [0u8, 1, 128, 255].iter().flat_map(|&v| [v, v, v]).collect();
        let mut out = vec![0f32; 12];
        normalize_into_nchw(&px, &cfg, &mut out);
        for c in 0..3 {
            for i in 0..4 {
                assert_eq!(
                    out[c * 4 + i].to_bits(),
                    want[c][i],
                    "channel {c} value {i}"
                );
            }
        }
    }

    #[test]
    fn exif_orientation_transposes_like_pil() {
        // PIL: Image.fromarray(np.arange(6).reshape(2, 3)).transpose(method) for each orientation.
        let src: Vec<u8> = (0..6).collect();
        let want: [(u16, &[u8]); 7] = [
            (2, &[2, 1, 0, 5, 4, 3]),
            (3, &[5, 4, 3, 2, 1, 0]),
            (4, &[3, 4, 5, 0, 1, 2]),
            (5, &[0, 3, 1, 4, 2, 5]),
            (6, &[3, 0, 4, 1, 5, 2]),
            (7, &[5, 2, 4, 1, 3, 0]),
            (8, &[2, 5, 1, 4, 0, 3]),
        ];
        for (o, w) in want {
            assert_eq!(decode::orient(&src, 1, 3, 2, o), w, "orientation {o}");
        }
        // EXIF parsing: big-endian TIFF header, one IFD entry (0x0112, SHORT, 1, value 6).
        let exif = [
            b'E', b'x', b'i', b'f', 0, 0, b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0,
            0, 0, 1, 0, 6, 0, 0,
        ];
        assert_eq!(decode::exif_orientation(&exif), Some(6));
        assert_eq!(decode::exif_orientation(&exif[..20]), None);
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        // torchvision CenterCrop: int(round((h - 224) / 2.0)) with Python's banker's rounding.
        assert_eq!(round_half_even_div2(1), 0);
        assert_eq!(round_half_even_div2(3), 2);
        assert_eq!(round_half_even_div2(5), 2);
        assert_eq!(round_half_even_div2(74), 37);
        assert_eq!(py_round(2.5), 2);
        assert_eq!(py_round(3.5), 4);
        assert_eq!(py_round(-0.5), 0);
        // 500x375: shortest side 375 -> 224, long side int(224 * 500 / 375) = 298.
        let p = plan(&CFG(), 500, 375);
        assert_eq!(p.resized, (298, 224));
        assert_eq!(p.offset, (37, 0));
        // 225x224 -> no resize, crop offset round(0.5) = 0.
        let p = plan(&CFG(), 225, 224);
        assert_eq!((p.resized, p.offset), ((225, 224), (0, 0)));
    }

    #[test]
    fn longest_and_squash_shapes() {
        let p = png(30, 10, 8, 0, &vec![vec![50u8; 30]; 10]);
        let longest = PreprocessConfig {
            resize_mode: ResizeMode::Longest,
            fill_color: 7,
            ..CFG()
        };
        let out = preprocess(&p, &longest, &opts()).unwrap();
        assert_eq!(out.len(), 224 * 224 * 3);
        // 30x10 -> 224x75 (round(10 / (30/224)) = 75), padded top 74 / bottom 75 rows with fill.
        let pl = plan(&longest, 30, 10);
        assert_eq!(
            (pl.resized, pl.pad, pl.padded),
            ((224, 75), (0, 74), (224, 224))
        );
        assert!(out[..74 * 224 * 3].iter().all(|&v| v == 7));
        assert!(
            out[74 * 224 * 3..(74 + 75) * 224 * 3]
                .iter()
                .all(|&v| v == 50)
        );
        assert!(out[(74 + 75) * 224 * 3..].iter().all(|&v| v == 7));
        let squash = PreprocessConfig {
            resize_mode: ResizeMode::Squash,
            size: (100, 60),
            ..CFG()
        };
        assert_eq!(
            preprocess(&p, &squash, &opts()).unwrap().len(),
            100 * 60 * 3
        );
        let rect = PreprocessConfig {
            size: (240, 320),
            ..CFG()
        };
        assert_eq!(preprocess(&p, &rect, &opts()).unwrap().len(), 240 * 320 * 3);
    }
}
