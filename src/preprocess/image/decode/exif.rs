//! EXIF: the IFD0 Orientation tag, as PIL reads it from `info["exif"]`.

/// Orientation tag (0x0112) of IFD0 from EXIF data (with or without the "Exif\0\0" prefix).
pub(crate) fn exif_orientation(data: &[u8]) -> Option<u16> {
    let d = data.strip_prefix(b"Exif\0\0").unwrap_or(data);
    if d.len() < 8 {
        return None;
    }
    let le = match &d[0..4] {
        b"II*\0" => true,
        b"MM\0*" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = d.get(o..o + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = d.get(o..o + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    for i in 0..n.min(1000) {
        let e = ifd + 2 + i * 12;
        if u16_at(e)? == 0x0112 {
            let typ = u16_at(e + 2)?;
            let v = match typ {
                3 => u16_at(e + 8)?,               // SHORT
                4 => u32_at(e + 8)?.min(9) as u16, // LONG (non-standard)
                _ => return None,
            };
            return (1..=8).contains(&v).then_some(v);
        }
    }
    None
}
