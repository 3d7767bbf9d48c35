//! BMP, following PIL's BmpImagePlugin.

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

/// The size PIL's BmpImagePlugin reads from the header: 16-bit fields in the 12-byte OS/2 v1
/// (BITMAPCOREHEADER) header; 32-bit ones in the 40- to 124-byte headers (OS/2 v2's 64 included),
/// where a negative height (its top byte 0xFF, as PIL tests it) means a top-down file of
/// `2**32 - height` rows. Other header sizes (e.g. OS/2 v2's 16-byte short form) are refused by
/// name, as PIL refuses them.
pub(crate) fn dimensions(b: &[u8]) -> Result<(u64, u64), ImageError> {
    let header_size = u32le(b, 14)?;
    match header_size {
        12 => Ok((u64::from(u16le(b, 18)?), u64::from(u16le(b, 20)?))),
        40 | 52 | 56 | 64 | 108 | 124 => {
            let width = u64::from(u32le(b, 18)?);
            let h = u32le(b, 22)?;
            let height = if h >> 24 == 0xFF {
                (1u64 << 32) - u64::from(h)
            } else {
                u64::from(h)
            };
            Ok((width, height))
        }
        _ => Err(unsupported(
            F,
            format!("BMP header size {header_size} (PIL reads 12, 40, 52, 56, 64, 108 and 124)"),
        )),
    }
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
            (width, height) = dimensions(b)?;
            bits = u16le(hd, 6)?;
            compression = 0;
            colors = 0;
            padding = 3;
            top_down = false;
        }
        40 | 52 | 56 | 64 | 108 | 124 => {
            top_down = hd[7] == 0xFF;
            (width, height) = dimensions(b)?;
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
        // Refused by name, as `dimensions` refuses it.
        _ => return Err(dimensions(b).err().unwrap_or_else(|| corrupt(F, "header"))),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A BMP file header and the first bytes of a DIB header of `size` bytes.
    fn head(size: u32, fields: &[u8]) -> Vec<u8> {
        let mut b = b"BM".to_vec();
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&(14 + size).to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(fields);
        b
    }

    #[test]
    fn header_sizes_are_read_as_pil_reads_them() {
        // OS/2 v1: 16-bit width and height (40 x 30), then planes and bits.
        let os2 = head(12, &[40, 0, 30, 0, 1, 0, 24, 0]);
        assert_eq!(dimensions(&os2).expect("os2 v1"), (40, 30));
        // Top-down: height -30.
        let mut v3 = head(40, &40u32.to_le_bytes());
        v3.extend_from_slice(&(-30i32).to_le_bytes());
        assert_eq!(dimensions(&v3).expect("top-down"), (40, 30));
        // OS/2 v2's 16-byte short header: PIL refuses it ("Unsupported BMP header type (16)").
        let mut short = head(16, &40u32.to_le_bytes());
        short.extend_from_slice(&30u32.to_le_bytes());
        short.extend_from_slice(&[1, 0, 24, 0]);
        for e in [
            dimensions(&short).unwrap_err(),
            decode(&short, u64::MAX).unwrap_err(),
        ] {
            assert!(
                matches!(&e, ImageError::Unsupported { reason, .. } if reason.contains("BMP header size 16")),
                "{e}"
            );
        }
    }
}
