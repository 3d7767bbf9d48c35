//! The file as the `tiff` crate reads it, with at most three small in-place patches and no copy.
//!
//! PIL reads the first image and nothing after it, so the first IFD's pointer to the next one is
//! read as 0: the crate refuses a file whose IFD chain has a cycle (even the first IFD pointing at
//! itself) although PIL opens it.
//!
//! The crate refuses palette images (PhotometricInterpretation 3) before decoding a single strip,
//! although their samples are plain 1- to 8-bit indices it decodes for gray images with every
//! compression it knows. So a palette file is read as if its first IFD said BlackIsZero (1): the
//! crate then hands back the indices as gray samples, and the decoder maps them through the
//! ColorMap as PIL does. The patch is an overlay on the read path (a multi-megabyte file is not
//! copied for two bytes).
//!
//! FillOrder 2 (bits of each byte stored least significant first): libtiff reverses the bits of
//! each strip or tile as read from the file, before any codec sees it (`TIFFReadRawStrip1` /
//! `TIFFFillStrip`; the CCITT codecs do the same through their bit tables), and PIL's raw
//! decoder reverses each byte of uncompressed data ("…R" raw modes). So the strips and tiles of
//! such a file are read here with their bits reversed, and the crate decodes them as FillOrder 1.

use std::io::{self, Read, Seek, SeekFrom};

pub(in super::super) struct Source<'a> {
    bytes: &'a [u8],
    pos: u64,
    /// (offset, replacement bytes, how many of them).
    patches: [Option<(usize, [u8; 8], usize)>; 3],
    /// Byte ranges [start, end) read with their bits reversed: sorted, disjoint.
    reversed: Vec<(usize, usize)>,
}

impl<'a> Source<'a> {
    /// The file with its first IFD's next pointer read as 0 and, when its Photometric is 3
    /// (palette), that value read as 1; the flag says whether the second patch was made.
    pub fn new(bytes: &'a [u8]) -> (Self, bool) {
        let ifd = first_ifd(bytes);
        let next = ifd
            .and_then(|i| i.next_at)
            .map(|at| (at, [0; 8], i_len(ifd)));
        let palette = ifd.and_then(|i| i.photometric).and_then(|(offset, typ)| {
            let big = ifd.is_some_and(|i| i.big);
            let len = if typ == 3 { 2 } else { 4 };
            if read_uint(bytes, offset, len, big)? != 3 {
                return None;
            }
            let mut value = [0u8; 8];
            value[if big { len - 1 } else { 0 }] = 1;
            Some((offset, value, len))
        });
        let source = Source {
            bytes,
            pos: 0,
            patches: [next, palette, ifd.and_then(|i| i.bits_count)],
            reversed: Vec::new(),
        };
        (source, palette.is_some())
    }
}

impl Source<'_> {
    /// Read the bytes of these (offset, length) ranges with their bits reversed from now on.
    pub fn reverse_bits_in(&mut self, ranges: impl IntoIterator<Item = (u64, u64)>) {
        let len = self.bytes.len();
        let mut r: Vec<(usize, usize)> = ranges
            .into_iter()
            .filter_map(|(at, n)| {
                let start = usize::try_from(at).ok()?.min(len);
                let end = usize::try_from(at.saturating_add(n))
                    .unwrap_or(len)
                    .min(len);
                (start < end).then_some((start, end))
            })
            .collect();
        r.sort_unstable();
        // Overlapping chunks share bytes: each byte is reversed once.
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(r.len());
        for (start, end) in r {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        self.reversed = merged;
    }
}

/// Width of the next-IFD pointer: 4 bytes, 8 in BigTIFF.
fn i_len(ifd: Option<Ifd>) -> usize {
    ifd.map_or(4, |i| i.offset_len)
}

#[derive(Clone, Copy)]
struct Ifd {
    big: bool,
    offset_len: usize,
    /// Where the pointer to the next IFD lies.
    next_at: Option<usize>,
    /// Where the PhotometricInterpretation value lies and its field type (SHORT or LONG only).
    photometric: Option<(usize, u16)>,
    /// BitsPerSample with more values than SamplesPerPixel: PIL keeps the first
    /// SamplesPerPixel of them (the crate refuses the file), so its count is read as that many
    /// (a patch of the count field), when the values stay where they are (both counts inline,
    /// or both out of line).
    bits_count: Option<(usize, [u8; 8], usize)>,
}

fn read_uint(b: &[u8], at: usize, len: usize, big: bool) -> Option<u64> {
    let s = b.get(at..at.checked_add(len)?)?;
    let mut v = 0u64;
    for i in 0..len {
        let byte = if big { s[i] } else { s[len - 1 - i] };
        v = (v << 8) | u64::from(byte);
    }
    Some(v)
}

/// The first IFD's layout, when its header and entry count can be read.
fn first_ifd(b: &[u8]) -> Option<Ifd> {
    let big = match b.get(0..2)? {
        b"II" => false,
        b"MM" => true,
        _ => return None,
    };
    let magic = read_uint(b, 2, 2, big)?;
    let (ifd, count_len, entry_len, value_len) = match magic {
        42 => (read_uint(b, 4, 4, big)?, 2, 12, 4),
        43 => (read_uint(b, 8, 8, big)?, 8, 20, 8),
        _ => return None,
    };
    let ifd = usize::try_from(ifd).ok()?;
    let n = usize::try_from(read_uint(b, ifd, count_len, big)?).ok()?;
    let first = ifd.checked_add(count_len)?;
    let mut photometric = None;
    // (where its count field lies, its count) for BitsPerSample as SHORTs.
    let mut bits = None;
    let mut samples = None;
    for i in 0..n.min(4096) {
        let e = first.checked_add(i.checked_mul(entry_len)?)?;
        let tag = read_uint(b, e, 2, big)?;
        if !matches!(tag, 258 | 262 | 277) {
            continue;
        }
        let typ = read_uint(b, e + 2, 2, big)? as u16;
        // The count field is as wide as the value field (4 bytes, 8 in BigTIFF).
        let count = read_uint(b, e + 4, value_len, big)?;
        let value_at = e + 4 + value_len;
        match (tag, typ, count) {
            (262, 3 | 4, 1) => photometric = Some((value_at, typ)),
            (258, 3, _) => bits = Some((e + 4, count)),
            (277, 3, 1) => samples = read_uint(b, value_at, 2, big),
            (277, 4, 1) => samples = read_uint(b, value_at, 4, big),
            _ => {}
        }
    }
    let bits_count = match (bits, samples) {
        (Some((at, count)), Some(spp)) if spp >= 1 && count > spp => {
            let inline = |c: u64| c * 2 <= value_len as u64;
            (inline(count) == inline(spp)).then(|| {
                let mut v = [0u8; 8];
                for (k, byte) in v[..value_len].iter_mut().enumerate() {
                    let shift = 8 * if big { value_len - 1 - k } else { k };
                    *byte = (spp >> shift) as u8;
                }
                (at, v, value_len)
            })
        }
        _ => None,
    };
    let next_at = first
        .checked_add(n.checked_mul(entry_len)?)
        .filter(|&at| at.saturating_add(value_len) <= b.len());
    Some(Ifd {
        big,
        offset_len: value_len,
        next_at,
        photometric,
        bits_count,
    })
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(self.pos)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        let end = start + n;
        let first = self.reversed.partition_point(|&(_, e)| e <= start);
        for &(a, b) in self.reversed[first..].iter().take_while(|&&(a, _)| a < end) {
            for v in &mut buf[a.max(start) - start..b.min(end) - start] {
                *v = v.reverse_bits();
            }
        }
        for &(at, value, len) in self.patches.iter().flatten() {
            for (k, &v) in value[..len].iter().enumerate() {
                if let Some(i) = (at + k).checked_sub(start)
                    && i < n
                {
                    buf[i] = v;
                }
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Source<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(p) => {
                self.pos = p;
                return Ok(p);
            }
            SeekFrom::End(d) => (self.bytes.len() as u64).checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = base
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_overlays_reads_that_cross_it() {
        // Little-endian classic TIFF, one IFD entry: Photometric SHORT 3.
        let mut b = b"II*\0\x08\0\0\0\x01\0".to_vec();
        b.extend_from_slice(&262u16.to_le_bytes());
        b.extend_from_slice(&3u16.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(&8u32.to_le_bytes()); // next IFD: itself
        let (mut s, palette) = Source::new(&b);
        assert!(palette, "a palette file");
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read");
        assert_eq!(all[18..20], [1, 0]);
        assert_eq!(all[..18], b[..18]);
        assert_eq!(all[22..26], [0; 4], "no IFD after the first");
        s.seek(SeekFrom::Start(19)).expect("seek");
        let mut one = [9u8; 3];
        assert_eq!(s.read(&mut one).expect("read"), 3);
        assert_eq!(one, [0, 0, 0]);
        s.seek(SeekFrom::Start(17)).expect("seek");
        let mut two = [9u8; 2];
        s.read_exact(&mut two).expect("read");
        assert_eq!(two, [0, 1], "the count's last byte, then the patched value");
        b[18] = 1;
        assert!(!Source::new(&b).1, "not a palette file");
    }

    #[test]
    fn reversed_ranges_are_reversed_once_wherever_a_read_starts() {
        let b: Vec<u8> = (0..32).map(|i| i * 7 + 1).collect();
        let (mut s, _) = Source::new(&b);
        // Overlapping and out-of-order ranges, one past the end.
        s.reverse_bits_in([(20, 4), (4, 4), (6, 6), (30, 10)]);
        let want: Vec<u8> = b
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let r = (4..12).contains(&i) || (20..24).contains(&i) || i >= 30;
                if r { v.reverse_bits() } else { v }
            })
            .collect();
        for start in 0..32 {
            for len in [1, 3, 7, 32] {
                s.seek(SeekFrom::Start(start)).expect("seek");
                let mut got = vec![0; len];
                let n = s.read(&mut got).expect("read");
                let i = start as usize;
                assert_eq!(got[..n], want[i..i + n], "read {len} at {start}");
            }
        }
    }
}
