//! CCITT Group 3 (TIFF compression 3, 1-D Modified Huffman rows with EOL codes), as libtiff's
//! `Fax3Decode1D` reads it for PIL: each strip is coded on its own, a black run sets bits to 1
//! (the Photometric tag then says which of 0/1 is white), and the image opens as mode "1".
//! Group 4 is decoded by the `tiff` crate (its `fax` feature) with the same conventions.

use fax::Color;
use fax::decoder::{DecodeStatus, Group3Decoder, pels};

use super::super::{Format, ImageError, Pixels, corrupt, unsupported};
use super::chunks::Chunk;

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
