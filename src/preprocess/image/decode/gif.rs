//! GIF (first frame, as PIL's GifImagePlugin loads it).

use std::io::Cursor;

use super::{Decoded, Format, ImageError, Pixels, check_dims, corrupt, palette_from_rgb};

pub(super) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
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
