//! CCITT Group 3 (TIFF compression 3, 1-D Modified Huffman rows with EOL codes) and CCITT RLE
//! (compression 2, the same rows without EOLs, each starting on a byte), as libtiff's
//! `Fax3Decode1D` / `Fax3DecodeRLE` read them for PIL: each strip is coded on its own, a black run
//! sets bits to 1 (the Photometric tag then says which of 0/1 is white), and the image opens as
//! mode "1". Group 4 is decoded by the `tiff` crate (its `fax` feature) with the same conventions.

use fax::decoder::{DecodeStatus, Group3Decoder, pels};
use fax::maps::{black, white};
use fax::{BitReader, ByteReader, Color};

use super::super::{Format, ImageError, Pixels, corrupt, unsupported};
use super::chunks::Chunk;

/// One Modified Huffman run: make-up codes (64 and up) then a terminating code (below 64).
fn run(reader: &mut impl BitReader, colour: Color) -> Option<u16> {
    let mut sum: u16 = 0;
    loop {
        let n = match colour {
            Color::White => white::decode(reader)?,
            Color::Black => black::decode(reader)?,
        };
        sum = sum.checked_add(n)?;
        if n < 64 {
            return Some(sum);
        }
    }
}

/// Decode the strips of a CCITT RLE image (compression 2) into mode "1" pixels (0 or 255).
pub(super) fn decode_rle(
    chunks: &[Chunk<'_>],
    width: usize,
    height: usize,
    white_is_zero: bool,
    reversed_bits: bool,
) -> Result<Pixels, ImageError> {
    let f = Format::Tiff;
    let w16 = u16::try_from(width).map_err(|_| {
        corrupt(
            f,
            format!("CCITT image {width} pixels wide (the codec's limit is 65535)"),
        )
    })?;
    let (on, off) = if white_is_zero { (0, 255) } else { (255, 0) };
    let mut out = vec![off; width * height];
    let mut transitions = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        if c.x0 != 0 || c.width != width {
            return Err(unsupported(f, "tiled CCITT RLE images are not supported"));
        }
        let rows = c.height.min(height.saturating_sub(c.y0));
        let input = c
            .data
            .iter()
            .map(move |&b| if reversed_bits { b.reverse_bits() } else { b })
            .map(Ok::<u8, std::convert::Infallible>);
        let truncated = || corrupt(f, format!("CCITT RLE strip {i} ends early"));
        let mut reader = ByteReader::new(input).map_err(|_| truncated())?;
        for r in 0..rows {
            transitions.clear();
            let (mut a0, mut colour) = (0u16, Color::White);
            while a0 < w16 {
                a0 = a0
                    .checked_add(run(&mut reader, colour).ok_or_else(truncated)?)
                    .ok_or_else(truncated)?;
                transitions.push(a0);
                colour = !colour;
            }
            let row = (c.y0 + r) * width;
            for (px, colour) in out[row..row + width]
                .iter_mut()
                .zip(pels(&transitions, w16))
            {
                if colour == Color::Black {
                    *px = on;
                }
            }
            // Each row starts on a byte boundary.
            let pad = reader.bits_to_byte_boundary();
            if pad > 0 && r + 1 < rows {
                reader.consume(pad).map_err(|_| truncated())?;
            }
        }
    }
    Ok(Pixels::Bilevel(out))
}

/// Decode the strips of a Group 3 image into mode "1" pixels (0 or 255).
pub(super) fn decode_g3(
    chunks: &[Chunk<'_>],
    width: usize,
    height: usize,
    white_is_zero: bool,
    reversed_bits: bool,
) -> Result<Pixels, ImageError> {
    let f = Format::Tiff;
    let w16 = u16::try_from(width).map_err(|_| {
        corrupt(
            f,
            format!("CCITT image {width} pixels wide (the codec's limit is 65535)"),
        )
    })?;
    let (on, off) = if white_is_zero { (0, 255) } else { (255, 0) };
    let mut out = vec![off; width * height];
    for (i, c) in chunks.iter().enumerate() {
        if c.x0 != 0 || c.width != width {
            return Err(unsupported(
                f,
                "tiled CCITT Group 3 images are not supported",
            ));
        }
        let rows = c.height.min(height.saturating_sub(c.y0));
        let input = c
            .data
            .iter()
            .map(move |&b| if reversed_bits { b.reverse_bits() } else { b })
            .map(Ok::<u8, std::convert::Infallible>);
        let mut dec = Group3Decoder::new(input).map_err(|_| {
            corrupt(
                f,
                format!("CCITT Group 3 strip {i} does not start with an EOL code"),
            )
        })?;
        let mut done = 0;
        while done < rows {
            let status = dec.advance();
            // The last row of a strip is not followed by an EOL, so the decoder reports an error
            // after it: keep it when it covers the whole width.
            let complete = match status {
                Ok(_) => true,
                Err(_) => dec.transitions().last().copied() == Some(w16),
            };
            if !complete {
                break;
            }
            let row = (c.y0 + done) * width;
            for (px, colour) in out[row..row + width]
                .iter_mut()
                .zip(pels(dec.transitions(), w16))
            {
                if colour == Color::Black {
                    *px = on;
                }
            }
            done += 1;
            if !matches!(status, Ok(DecodeStatus::Incomplete)) {
                break;
            }
        }
        if done < rows {
            return Err(corrupt(
                f,
                format!("CCITT Group 3 strip {i}: {done} of {rows} rows decode"),
            ));
        }
    }
    Ok(Pixels::Bilevel(out))
}
