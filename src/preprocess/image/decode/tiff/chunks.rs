//! The strips or tiles of a TIFF image as slices of the file, for the compressions decoded here
//! rather than by the `tiff` crate (CCITT Group 3, JPEG): libtiff's `TIFFReadEncodedStrip` /
//! `TIFFReadEncodedTile` hand each chunk to the codec on its own, and so do we.

use tiff::decoder::Decoder;
use tiff::tags::Tag;

use super::super::{Format, ImageError, corrupt, unsupported};
use super::source::Source;

/// One strip or tile: its compressed bytes and where its pixels go.
pub(super) struct Chunk<'a> {
    pub data: &'a [u8],
    /// Top-left corner in the image.
    pub x0: usize,
    pub y0: usize,
    /// Size as encoded (a tile's full size; a strip's RowsPerStrip rows, fewer for the last).
    pub width: usize,
    pub height: usize,
}

fn tag_vec(dec: &mut Decoder<Source<'_>>, tag: Tag) -> Result<Option<Vec<u64>>, ImageError> {
    dec.find_tag_unsigned_vec::<u64>(tag)
        .map_err(|e| corrupt(Format::Tiff, e))
}

/// The chunks of the current image (`width` x `height`, checked against the pixel budget).
/// Separate colour planes (PlanarConfiguration 2) are refused: the codecs here decode one
/// interleaved chunk per position.
pub(super) fn chunks<'a>(
    dec: &mut Decoder<Source<'_>>,
    bytes: &'a [u8],
    width: usize,
    height: usize,
    codec: &str,
) -> Result<Vec<Chunk<'a>>, ImageError> {
    let f = Format::Tiff;
    let planar = dec
        .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
        .ok()
        .flatten()
        .unwrap_or(1);
    if planar != 1 {
        return Err(unsupported(
            f,
            format!(
                "{codec} with separate colour planes (PlanarConfiguration {planar}) is not supported"
            ),
        ));
    }
    let tiled = dec
        .find_tag_unsigned::<u64>(Tag::TileWidth)
        .ok()
        .flatten()
        .is_some();
    let (cw, ch, offsets, counts) = if tiled {
        let tw = dec.find_tag_unsigned::<u64>(Tag::TileWidth).ok().flatten();
        let th = dec.find_tag_unsigned::<u64>(Tag::TileLength).ok().flatten();
        let (Some(tw), Some(th)) = (tw, th) else {
            return Err(corrupt(f, "tiled image without TileLength"));
        };
        let offsets = tag_vec(dec, Tag::TileOffsets)?;
        let counts = tag_vec(dec, Tag::TileByteCounts)?;
        (tw, th, offsets, counts)
    } else {
        let rows = dec
            .find_tag_unsigned::<u64>(Tag::RowsPerStrip)
            .ok()
            .flatten()
            .unwrap_or(height as u64)
            .min(height as u64);
        let offsets = tag_vec(dec, Tag::StripOffsets)?;
        let counts = tag_vec(dec, Tag::StripByteCounts)?;
        (width as u64, rows, offsets, counts)
    };
    let (Some(offsets), Some(counts)) = (offsets, counts) else {
        return Err(corrupt(f, "no strip or tile offsets"));
    };
    if cw == 0 || ch == 0 {
        return Err(corrupt(f, "zero strip or tile size"));
    }
    // A chunk is at most a little larger than the image (tiles are padded to whole tiles):
    // refuse absurd tile sizes before any buffer is sized from them.
    if cw > (width as u64).saturating_add(65536) || ch > (height as u64).saturating_add(65536) {
        return Err(corrupt(
            f,
            format!("tile size {cw} x {ch} exceeds the image"),
        ));
    }
    let (cw, ch) = (cw as usize, ch as usize);
    let across = width.div_ceil(cw);
    let down = height.div_ceil(ch);
    let n = across
        .checked_mul(down)
        .ok_or_else(|| corrupt(f, "too many tiles"))?;
    if offsets.len() < n || counts.len() < n {
        return Err(corrupt(
            f,
            format!(
                "{} strip/tile offsets for {n} chunks",
                offsets.len().min(counts.len())
            ),
        ));
    }
    let mut out = Vec::with_capacity(n);
    for (i, (&off, &len)) in offsets.iter().zip(&counts).take(n).enumerate() {
        let data = usize::try_from(off)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| bytes.get(o..o.checked_add(l)?))
            .ok_or_else(|| corrupt(f, format!("strip/tile {i} lies past the end of the file")))?;
        let (x0, y0) = ((i % across) * cw, (i / across) * ch);
        let height = if tiled { ch } else { ch.min(height - y0) };
        out.push(Chunk {
            data,
            x0,
            y0,
            width: cw,
            height,
        });
    }
    Ok(out)
}
