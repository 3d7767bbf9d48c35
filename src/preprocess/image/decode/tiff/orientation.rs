//! The orientation PIL applies to a TIFF when it loads it.
//!
//! Pillow's `TiffImageFile.load_end` runs `ImageOps.exif_transpose(self, in_place=True)` on every
//! TIFF it loads (strips or tiles, any compression, any fill order: libtiff itself is asked for
//! top-left rows, even through its RGBA interface), so `Image.open(f)` of a file whose
//! Orientation tag (274) is 2..=8 *is* the transposed image, with its size swapped for 5..=8,
//! whatever open_clip does afterwards. `exif_transpose` reads the tag from the first IFD
//! (`getexif`); only when the IFD has no Orientation entry at all does it look for
//! `tiff:Orientation="N"` / `<tiff:Orientation>N</…>` in the XMP packet (tag 700).

use tiff::decoder::Decoder;
use tiff::tags::Tag;

use super::source::Source;

/// XMP packet (tag 700).
const XMP: Tag = Tag::Unknown(700);

/// The orientation PIL transposes the first image by (`None`: none, or not one of 2..=8).
pub(super) fn pil_orientation(dec: &mut Decoder<Source<'_>>) -> Option<u16> {
    let o = match dec.find_tag(Tag::Orientation) {
        // The entry is there: its value decides, even if it is not a valid orientation (PIL's
        // `dict.get` of a tuple or an out-of-range value finds no transposition).
        Ok(Some(v)) => v.into_u16().ok(),
        // A malformed entry: PIL's IFD reader skips it, so the XMP packet is consulted too.
        Ok(None) | Err(_) => dec
            .get_tag_u8_vec(XMP)
            .ok()
            .and_then(|x| xmp_orientation(&x)),
    };
    o.filter(|o| (2..=8).contains(o))
}

/// PIL's `re.search(rb'tiff:Orientation(="|>)([0-9])', xmp)`: the first match's digit.
fn xmp_orientation(xmp: &[u8]) -> Option<u16> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut from = 0;
    while let Some(at) = find(&xmp[from..], KEY) {
        let rest = &xmp[from + at + KEY.len()..];
        let digit = match rest {
            [b'=', b'"', d, ..] | [b'>', d, ..] => Some(*d),
            _ => None,
        };
        if let Some(d) = digit.filter(u8::is_ascii_digit) {
            return Some(u16::from(d - b'0'));
        }
        from += at + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::xmp_orientation;

    #[test]
    fn xmp_orientation_reads_like_pils_pattern() {
        let attr = br#"<rdf:Description tiff:Orientation="6" tiff:Make="x"/>"#;
        assert_eq!(xmp_orientation(attr), Some(6));
        let element = b"<tiff:Orientation>3</tiff:Orientation>";
        assert_eq!(xmp_orientation(element), Some(3));
        // Not the pattern: a space before '=', a non-digit; the next occurrence is used.
        let later = br#"tiff:Orientation ="6" tiff:Orientation="x" tiff:Orientation="8""#;
        assert_eq!(xmp_orientation(later), Some(8));
        assert_eq!(xmp_orientation(b"tiff:Orientation"), None);
        assert_eq!(xmp_orientation(b""), None);
    }
}
