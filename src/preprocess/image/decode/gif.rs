//! GIF (first frame, as PIL's GifImagePlugin loads it).
//!
//! A GIF may carry no colour table at all (neither global nor local): PIL then opens it as mode
//! "L", the indices read as grey levels. The `gif` crate refuses such a frame ("no color table
//! available"), so a missing global table is supplied as the identity grey ramp, which the
//! "palette needed" test below turns back into mode "L" exactly as PIL does.

use std::borrow::Cow;
use std::io::Cursor;

use super::{Decoded, Format, ImageError, Pixels, check_dims, corrupt, palette_from_rgb};

/// Global Color Table Flag of the logical screen descriptor's packed byte.
const GLOBAL_TABLE: u8 = 0x80;

/// `bytes` with a 256-entry identity grey global colour table when the file has none (see the
/// module comment). A frame's own local table still wins, as in PIL; the copy adds 768 bytes.
pub(crate) fn with_global_table(bytes: &[u8]) -> Cow<'_, [u8]> {
    match bytes.get(10) {
        Some(&flags) if flags & GLOBAL_TABLE == 0 && bytes.len() >= 13 => {
            let mut v = Vec::with_capacity(bytes.len() + 768);
            v.extend_from_slice(&bytes[..10]);
            // Table present, 2^(7+1) entries; colour resolution and sort bits kept.
            v.push(flags | GLOBAL_TABLE | 0x07);
            v.extend_from_slice(&bytes[11..13]);
            v.extend((0..=255u8).flat_map(|i| [i, i, i]));
            v.extend_from_slice(&bytes[13..]);
            Cow::Owned(v)
        }
        _ => Cow::Borrowed(bytes),
    }
}

pub(super) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
    let f = Format::Gif;
    // PIL checks (and allocates) the logical screen: check it before the decoder runs.
    if bytes.len() >= 10 {
        let sw = u16::from_le_bytes([bytes[6], bytes[7]]) as u64;
        let sh = u16::from_le_bytes([bytes[8], bytes[9]]) as u64;
        check_dims(f, sw.max(1), sh.max(1), max_pixels)?;
    }
    let bytes = with_global_table(bytes);
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    let mem = (max_pixels.min(1 << 32) as usize).saturating_add(1 << 20);
    if let Some(m) = std::num::NonZeroU64::new(mem as u64) {
        opts.set_memory_limit(gif::MemoryLimit::Bytes(m));
    }
    let mut dec = opts
        .read_info(Cursor::new(&bytes[..]))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4x2 GIF89a with no global and no local colour table (min code size 2, indices 0..3).
    fn no_colour_table_gif() -> Vec<u8> {
        let mut b = b"GIF89a".to_vec();
        b.extend_from_slice(&[4, 0, 2, 0, 0x00, 0, 0]); // screen 4x2, no global table
        b.extend_from_slice(&[0x2C, 0, 0, 0, 0, 4, 0, 2, 0, 0x00]); // image 4x2, no local table
        // LZW (min code size 2): clear, 0 1 2 3 0 1 2 3, end; written by hand with 3-bit codes.
        b.extend_from_slice(&lzw_3bit(&[4, 0, 1, 2, 3, 0, 1, 2, 3, 5]));
        b.push(0x3B);
        b
    }

    /// Pack 3-bit codes LSB first into one sub-block (enough for this tiny image: the code size
    /// grows to 4 bits only after 4 table entries are added, i.e. after the 5th code; codes after
    /// that are written with 4 bits).
    fn lzw_3bit(codes: &[u16]) -> Vec<u8> {
        let (mut acc, mut n, mut out) = (0u32, 0u32, Vec::new());
        for (i, &c) in codes.iter().enumerate() {
            // clear(0) then 4 literals add entries 6,7 (3 bits), then 8.. need 4 bits.
            let bits = if i < 4 { 3 } else { 4 };
            acc |= u32::from(c) << n;
            n += bits;
            while n >= 8 {
                out.push(acc as u8);
                acc >>= 8;
                n -= 8;
            }
        }
        if n > 0 {
            out.push(acc as u8);
        }
        let mut b = vec![2, out.len() as u8];
        b.extend(out);
        b.push(0);
        b
    }

    #[test]
    fn gif_without_any_colour_table_opens_as_grey_like_pil() {
        let d = decode(&no_colour_table_gif(), u64::MAX).expect("PIL opens it (mode L)");
        assert_eq!((d.width, d.height), (4, 2));
        assert_eq!(d.pixels, Pixels::L(vec![0, 1, 2, 3, 0, 1, 2, 3]));
    }

    #[test]
    fn fixture_without_colour_table_is_mode_l() {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/images/chelsea_no_colour_table.gif"
        );
        let bytes = std::fs::read(p).expect("fixture");
        assert_eq!(
            bytes[10] & GLOBAL_TABLE,
            0,
            "the fixture has no global table"
        );
        let d = decode(&bytes, u64::MAX).expect("PIL opens it (mode L)");
        assert_eq!(d.pixels.mode(), "L");
    }
}
