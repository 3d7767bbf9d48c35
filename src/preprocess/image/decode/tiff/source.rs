//! The file as the `tiff` crate reads it, with at most one small in-place patch and no copy.
//!
//! The crate refuses palette images (PhotometricInterpretation 3) before decoding a single strip,
//! although their samples are plain 1- to 8-bit indices it decodes for gray images with every
//! compression it knows. So a palette file is read as if its first IFD said BlackIsZero (1): the
//! crate then hands back the indices as gray samples, and the decoder maps them through the
//! ColorMap as PIL does. The patch is an overlay on the read path (a multi-megabyte file is not
//! copied for two bytes).

use std::io::{self, Read, Seek, SeekFrom};

pub(in super::super) struct Source<'a> {
    bytes: &'a [u8],
    pos: u64,
    /// (offset, replacement bytes, how many of them).
    patch: Option<(usize, [u8; 8], usize)>,
}

impl<'a> Source<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Source {
            bytes,
            pos: 0,
            patch: None,
        }
    }

    /// The file with its first IFD's PhotometricInterpretation read as 1 when it says 3
    /// (palette); `None` when it does not (or the IFD cannot be read: the crate reports that).
    pub fn palette_as_gray(bytes: &'a [u8]) -> Option<Self> {
        let at = photometric_value_at(bytes)?;
        let (offset, typ, big) = at;
        let mut value = [0u8; 8];
        let len = if typ == 3 { 2 } else { 4 };
        let current = read_uint(bytes, offset, len, big)?;
        if current != 3 {
            return None;
        }
        if big {
            value[len - 1] = 1;
        } else {
            value[0] = 1;
        }
        Some(Source {
            bytes,
            pos: 0,
            patch: Some((offset, value, len)),
        })
    }
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

/// Where the first IFD's PhotometricInterpretation value lies: (offset, field type, big-endian).
/// Only SHORT (3) and LONG (4) values are considered.
fn photometric_value_at(b: &[u8]) -> Option<(usize, u16, bool)> {
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
    for i in 0..n.min(4096) {
        let e = first.checked_add(i.checked_mul(entry_len)?)?;
        if read_uint(b, e, 2, big)? != 262 {
            continue;
        }
        let typ = read_uint(b, e + 2, 2, big)? as u16;
        // The count field is as wide as the value field (4 bytes, 8 in BigTIFF).
        let count = read_uint(b, e + 4, value_len, big)?;
        if !matches!(typ, 3 | 4) || count != 1 {
            return None;
        }
        return Some((e + 4 + value_len, typ, big));
    }
    None
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(self.pos)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        if let Some((at, value, len)) = self.patch {
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
        let mut s = Source::palette_as_gray(&b).expect("a palette file");
        let mut all = Vec::new();
        s.read_to_end(&mut all).expect("read");
        assert_eq!(all[18..20], [1, 0]);
        assert_eq!(all[..18], b[..18]);
        s.seek(SeekFrom::Start(19)).expect("seek");
        let mut one = [9u8; 3];
        assert_eq!(s.read(&mut one).expect("read"), 3);
        assert_eq!(one, [0, 0, 0]);
        s.seek(SeekFrom::Start(17)).expect("seek");
        let mut two = [9u8; 2];
        s.read_exact(&mut two).expect("read");
        assert_eq!(two, [0, 1], "the count's last byte, then the patched value");
        b[18] = 1;
        assert!(Source::palette_as_gray(&b).is_none(), "not a palette file");
    }
}
