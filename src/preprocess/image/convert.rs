//! Pillow's mode conversions (`libImaging/Convert.c`) used by the pipeline: the premultiply /
//! unpremultiply round trip of `Image.resize` for "RGBA"/"LA", and `convert('RGB')`.

use super::decode::Pixels;

/// Pillow's MULDIV255: (a * b + 128) / 255 with its shift approximation.
#[inline]
fn muldiv255(a: u32, b: u32) -> u32 {
    let tmp = a * b + 128;
    ((tmp >> 8) + tmp) >> 8
}

/// "RGBA" -> "RGBa" (`rgbA2rgba`) or "LA" -> "La" (`lA2la`): premultiply the color samples of
/// each `channels`-sample pixel by its last (alpha) sample.
pub(crate) fn premultiply(data: &mut [u8], channels: usize) {
    for px in data.chunks_exact_mut(channels) {
        let (color, alpha) = px.split_at_mut(channels - 1);
        let a = alpha[0] as u32;
        for c in color {
            *c = muldiv255(*c as u32, a) as u8;
        }
    }
}

/// Pillow's unpremultiply (`rgba2rgbA`, `la2lA`, `rgba2rgb_`) of one sample.
#[inline]
fn unpremultiply_sample(v: u8, alpha: u8) -> u8 {
    if alpha == 255 || alpha == 0 {
        v
    } else {
        ((255 * v as u32) / alpha as u32).min(255) as u8
    }
}

/// "RGBa" -> "RGBA" / "La" -> "LA".
pub(crate) fn unpremultiply(data: &mut [u8], channels: usize) {
    for px in data.chunks_exact_mut(channels) {
        let (color, alpha) = px.split_at_mut(channels - 1);
        let a = alpha[0];
        for c in color {
            *c = unpremultiply_sample(*c, a);
        }
    }
}

/// Pillow's `cmyk2rgb` of one pixel.
#[inline]
fn cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
    let nk = 255 - p[3] as i32;
    let f = |c: u8| {
        let v = nk - muldiv255(c as u32, nk as u32) as i32;
        v.clamp(0, 255) as u8
    };
    [f(p[0]), f(p[1]), f(p[2])]
}

/// `Image.convert('RGB')` of an image in any supported mode; returns packed RGB.
pub(crate) fn to_rgb(pixels: &Pixels) -> Vec<u8> {
    fn gray(it: impl Iterator<Item = u8>, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n * 3);
        for v in it {
            out.extend_from_slice(&[v, v, v]);
        }
        out
    }
    match pixels {
        Pixels::Bilevel(d) => gray(d.iter().map(|&v| if v != 0 { 255 } else { 0 }), d.len()),
        Pixels::L(d) => gray(d.iter().copied(), d.len()),
        Pixels::P { idx, palette } => {
            let mut out = Vec::with_capacity(idx.len() * 3);
            for &i in idx {
                out.extend_from_slice(&palette[i as usize]);
            }
            out
        }
        // la2rgb: the L sample is copied, alpha dropped.
        Pixels::La(d) => gray(d.chunks_exact(2).map(|p| p[0]), d.len() / 2),
        Pixels::Rgb(d) => d.clone(),
        // rgba2rgb: alpha dropped.
        Pixels::Rgba(d) => d.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        Pixels::Cmyk(d) => d.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
        // I16_RGB / I16B_RGB: values above 255 saturate (clip, not scale).
        Pixels::I16(d) | Pixels::I16B(d) => gray(
            d.iter().map(|&v| if v > 255 { 255 } else { v as u8 }),
            d.len(),
        ),
        // i2rgb
        Pixels::I32(d) => gray(d.iter().map(|&v| v.clamp(0, 255) as u8), d.len()),
        // F -> L (f2l: clamp, truncate) -> RGB
        Pixels::F32(d) => gray(
            d.iter().map(|&v| {
                if v <= 0.0 || v.is_nan() {
                    0
                } else if v >= 255.0 {
                    255
                } else {
                    v as u8
                }
            }),
            d.len(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn premultiply_roundtrip_matches_pillow() {
        // Pillow 13: Image.frombytes('RGBA', (4, 1), bytes(px)).convert('RGBa').tobytes() and back.
        let mut px = vec![
            100, 50, 25, 128, 200, 100, 50, 0, 10, 20, 30, 255, 255, 255, 255, 1,
        ];
        premultiply(&mut px, 4);
        assert_eq!(
            px,
            vec![50, 25, 13, 128, 0, 0, 0, 0, 10, 20, 30, 255, 1, 1, 1, 1]
        );
        unpremultiply(&mut px, 4);
        assert_eq!(
            px,
            vec![
                99, 49, 25, 128, 0, 0, 0, 0, 10, 20, 30, 255, 255, 255, 255, 1
            ]
        );
    }

    #[test]
    fn rgb_conversions_match_pillow() {
        // Values from Pillow 13: Image.frombytes(mode, size, data).convert('RGB').
        let p = Pixels::F32(vec![-1.5, 100.7, 300.0, 254.99]);
        assert_eq!(
            to_rgb(&p)[..].chunks(3).map(|c| c[0]).collect::<Vec<_>>(),
            vec![0, 100, 255, 254]
        );
        let p = Pixels::I32(vec![-5, 100, 300, 70000]);
        assert_eq!(
            to_rgb(&p)[..].chunks(3).map(|c| c[0]).collect::<Vec<_>>(),
            vec![0, 100, 255, 255]
        );
        let p = Pixels::I16(vec![0, 255, 256, 65535]);
        assert_eq!(
            to_rgb(&p)[..].chunks(3).map(|c| c[0]).collect::<Vec<_>>(),
            vec![0, 255, 255, 255]
        );
        // Image.frombytes('CMYK', (2,1), bytes([10,20,30,40, 255,0,128,7])).convert('RGB')
        let p = Pixels::Cmyk(vec![10, 20, 30, 40, 255, 0, 128, 7]);
        assert_eq!(to_rgb(&p), vec![207, 198, 190, 0, 248, 124]);
    }
}
