//! JPEG: libjpeg-turbo's decoder (the one PIL uses), through the TurboJPEG API of mozjpeg-sys.
//!
//! PIL's `JpegDecode.c` installs an `error_exit` that aborts but leaves libjpeg's warnings alone
//! (they are counted, never raised): a file with "Corrupt JPEG data: 3 extraneous bytes before
//! marker 0xda" opens and decodes. TurboJPEG reports a warning as a failed call whose
//! `tjGetErrorCode` is `TJERR_WARNING`, in the header call as well as in the decompression, so
//! both calls accept warnings here. Only a truncated file is refused, as PIL does ("image file is
//! truncated").

use super::{
    Decoded, Format, ImageError, Pixels, check_dims, corrupt, exif_orientation, unsupported,
};
use std::ffi::{CStr, c_char, c_int, c_ulong, c_void};

// Make sure the static library providing the tj* symbols is linked.
use mozjpeg_sys as _;

type TjHandle = *mut c_void;
const TJPF_RGB: c_int = 0;
const TJPF_GRAY: c_int = 6;
const TJPF_CMYK: c_int = 11;
const TJCS_GRAY: c_int = 2;
const TJCS_CMYK: c_int = 3;
const TJCS_YCCK: c_int = 4;
const TJERR_WARNING: c_int = 0;
/// Refuse progressive JPEGs with more than 500 scans (a known CPU exhaustion vector).
const TJFLAG_LIMITSCANS: c_int = 32768;

unsafe extern "C" {
    fn tjInitDecompress() -> TjHandle;
    fn tjDecompressHeader3(
        handle: TjHandle,
        jpeg_buf: *const u8,
        jpeg_size: c_ulong,
        width: *mut c_int,
        height: *mut c_int,
        jpeg_subsamp: *mut c_int,
        jpeg_colorspace: *mut c_int,
    ) -> c_int;
    fn tjDecompress2(
        handle: TjHandle,
        jpeg_buf: *const u8,
        jpeg_size: c_ulong,
        dst_buf: *mut u8,
        width: c_int,
        pitch: c_int,
        height: c_int,
        pixel_format: c_int,
        flags: c_int,
    ) -> c_int;
    fn tjGetErrorStr2(handle: TjHandle) -> *mut c_char;
    fn tjGetErrorCode(handle: TjHandle) -> c_int;
    fn tjDestroy(handle: TjHandle) -> c_int;
}

/// Owns a TurboJPEG decompressor. Errors inside libjpeg are handled by TurboJPEG
/// (setjmp/longjmp in C) and reported as return codes; nothing unwinds through Rust.
struct Handle(TjHandle);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from tjInitDecompress and is destroyed once.
        unsafe { tjDestroy(self.0) };
    }
}

impl Handle {
    fn message(&self) -> String {
        // SAFETY: tjGetErrorStr2 returns a NUL-terminated string owned by the handle or
        // by TurboJPEG's thread-local buffer; we copy it immediately.
        unsafe {
            let p = tjGetErrorStr2(self.0);
            if p.is_null() {
                "unknown libjpeg error".to_string()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        }
    }
}

/// EXIF orientation from the first APP1 "Exif" segment (what PIL's `info["exif"]` holds).
fn jpeg_exif_orientation(b: &[u8]) -> Option<u16> {
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let marker = b[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            return None;
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        if len < 2 {
            return None;
        }
        let seg = b.get(i + 4..(i + 2 + len).min(b.len()))?;
        if marker == 0xE1 && seg.starts_with(b"Exif\0\0") {
            return exif_orientation(seg);
        }
        i += 2 + len;
    }
    None
}

/// libjpeg's warning messages (`JWRN_*` in jerror.h). TurboJPEG keeps its warning flag set when a
/// fatal error follows a warning, so `TJERR_WARNING` alone does not prove the call finished: the
/// message tells, since libjpeg prints only the first warning and a later fatal error replaces it.
const WARNINGS: [&str; 7] = [
    "Corrupt JPEG data",
    "Premature end of JPEG file",
    "Unknown Adobe color transform",
    "Inconsistent progression sequence",
    "Warning: unknown JFIF revision",
    "Invalid SOS parameters for sequential JPEG",
    "Application transferred too many scanlines",
];

/// True when a failed TurboJPEG call only reported a libjpeg warning (PIL ignores those).
fn only_warned(code: c_int, msg: &str) -> bool {
    code == TJERR_WARNING && WARNINGS.iter().any(|w| msg.starts_with(w))
}

/// True when no EOI marker follows the last start-of-scan: the data was cut short.
fn looks_truncated(b: &[u8]) -> bool {
    let last_sos = b.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        None => true,
        Some(p) => !b[p..].windows(2).any(|w| w == [0xFF, 0xD9]),
    }
}

/// A decompressed JPEG: interleaved samples as libjpeg outputs them (gray, RGB, or CMYK as
/// stored, i.e. not yet inverted).
pub(super) struct Raw {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub samples: Vec<u8>,
}

/// Decompress a whole JPEG stream with libjpeg-turbo: gray stays gray, 3 components become RGB
/// (libjpeg's own colour conversion and fancy upsampling, as PIL and libtiff get), 4 stay
/// CMYK/YCCK->CMYK. `max_pixels` is checked from the header before anything is allocated.
pub(super) fn decompress(bytes: &[u8], max_pixels: u64) -> Result<Raw, ImageError> {
    let f = Format::Jpeg;
    let size = c_ulong::try_from(bytes.len()).map_err(|_| corrupt(f, "file too large"))?;
    // SAFETY: plain constructor; NULL on failure.
    let h = unsafe { tjInitDecompress() };
    if h.is_null() {
        return Err(corrupt(f, "cannot initialize the JPEG decoder"));
    }
    let h = Handle(h);
    let (mut w, mut ht, mut subsamp, mut cs) = (0, 0, 0, 0);
    // SAFETY: buffer pointer/length are valid for the call; out-params are valid.
    let rc = unsafe {
        tjDecompressHeader3(
            h.0,
            bytes.as_ptr(),
            size,
            &mut w,
            &mut ht,
            &mut subsamp,
            &mut cs,
        )
    };
    // SAFETY: valid handle.
    let header_code = unsafe { tjGetErrorCode(h.0) };
    let header_warned = rc != 0
        && only_warned(header_code, &h.message())
        && w > 0
        && ht > 0
        && subsamp >= 0
        && cs >= 0;
    if rc != 0 && !header_warned {
        let msg = h.message();
        if msg.contains("Unsupported color conversion")
            || msg.contains("Unsupported JPEG process")
            || msg.contains("precision")
        {
            return Err(unsupported(f, msg));
        }
        return Err(corrupt(f, msg));
    }
    let (width, height) = check_dims(f, w.max(0) as u64, ht.max(0) as u64, max_pixels)?;
    let (pf, channels) = match cs {
        TJCS_GRAY => (TJPF_GRAY, 1),
        TJCS_CMYK | TJCS_YCCK => (TJPF_CMYK, 4),
        _ => (TJPF_RGB, 3),
    };
    let mut samples = vec![0u8; width * height * channels];
    // SAFETY: `samples` holds exactly width*height*channels bytes and pitch = width*channels.
    let rc = unsafe {
        tjDecompress2(
            h.0,
            bytes.as_ptr(),
            size,
            samples.as_mut_ptr(),
            w,
            (width * channels) as c_int,
            ht,
            pf,
            TJFLAG_LIMITSCANS,
        )
    };
    if rc != 0 {
        // SAFETY: valid handle.
        let code = unsafe { tjGetErrorCode(h.0) };
        let msg = h.message();
        // PIL ignores libjpeg warnings (e.g. "Corrupt JPEG data: extraneous bytes") but
        // refuses truncated files ("image file is truncated").
        let warned = only_warned(code, &msg);
        if !warned || msg.contains("Premature end") || looks_truncated(bytes) {
            if warned || msg.contains("Premature end") {
                return Err(corrupt(f, format!("truncated file ({msg})")));
            }
            if msg.contains("more than 500 scans") {
                return Err(unsupported(f, msg));
            }
            return Err(corrupt(f, msg));
        }
    }
    Ok(Raw {
        width,
        height,
        channels,
        samples,
    })
}

pub(super) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, ImageError> {
    let Raw {
        width,
        height,
        channels,
        samples: mut buf,
    } = decompress(bytes, max_pixels)?;
    let pixels = match channels {
        1 => Pixels::L(buf),
        3 => Pixels::Rgb(buf),
        _ => {
            // PIL opens 4-component JPEGs with rawmode "CMYK;I" (Adobe inverted values).
            for v in buf.iter_mut() {
                *v = !*v;
            }
            Pixels::Cmyk(buf)
        }
    };
    Ok(Decoded {
        width,
        height,
        pixels,
        orientation: jpeg_exif_orientation(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = format!(
            "{}/tests/fixtures/images/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// `bytes` with `junk` inserted before the first `marker` (0xFF, marker).
    fn insert_before(bytes: &[u8], marker: u8, junk: &[u8]) -> Vec<u8> {
        let at = bytes
            .windows(2)
            .position(|w| w == [0xFF, marker])
            .expect("marker present");
        [&bytes[..at], junk, &bytes[at..]].concat()
    }

    #[test]
    fn extraneous_bytes_before_a_marker_are_a_warning_not_an_error() {
        // libjpeg: "Corrupt JPEG data: N extraneous bytes before marker 0xNN"; PIL decodes the
        // image, and the pixels are those of the file without the junk.
        let clean = fixture("chelsea_baseline_420.jpg");
        let want = decode(&clean, u64::MAX).expect("clean file").pixels;
        for (marker, junk) in [
            (0xDA, &[0x00, 0x11, 0x22][..]),
            (0xC4, &[1, 2, 3, 4, 5][..]),
        ] {
            let dirty = insert_before(&clean, marker, junk);
            let got = decode(&dirty, u64::MAX)
                .unwrap_or_else(|e| panic!("junk before 0x{marker:02x}: {e}"));
            assert_eq!(got.pixels, want, "junk before 0x{marker:02x}");
        }
    }

    #[test]
    fn truncated_files_are_still_refused() {
        let clean = fixture("chelsea_baseline_420.jpg");
        let cut = &clean[..clean.len() / 2];
        let e = decode(cut, u64::MAX).expect_err("truncated").to_string();
        assert!(e.contains("truncated"), "{e}");
        // A warning first, then the file ends: still truncated.
        let dirty = insert_before(&clean, 0xDA, &[0, 1, 2]);
        let e = decode(&dirty[..dirty.len() / 2], u64::MAX)
            .expect_err("truncated")
            .to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn warnings_are_told_from_fatal_errors_by_message() {
        assert!(only_warned(
            TJERR_WARNING,
            "Corrupt JPEG data: 3 extraneous bytes before marker 0xda"
        ));
        // A fatal error after a warning keeps TurboJPEG's warning flag set.
        assert!(!only_warned(
            TJERR_WARNING,
            "Bogus Huffman table definition"
        ));
        assert!(!only_warned(1, "Corrupt JPEG data: bad Huffman code"));
    }
}
