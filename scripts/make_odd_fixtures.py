#!/usr/bin/env python3
"""Odd-but-valid BMP and TIFF files (issue 22) and their reference pixels, with Pillow alone.

Writes small files into tests/fixtures/images/ (from a 40x30 crop of the committed `coffee_small.bmp`) in
layouts PIL opens but decoders often refuse: top-down BMP, OS/2 v1 (12-byte header, 3-byte palette entries)
and OS/2 v2 (64-byte header) BMP, TIFF palette images (1, 4, 8 bits), signed samples (SampleFormat 2),
no RowsPerStrip, multi-page files (with an IFD cycle after the first frame). Pillow writes none of these
layouts except the 8-bit palette and the multi-page TIFF, so most are written by hand here.

The reference pixels are open_clip's inference transform reproduced with Pillow only (torch is not needed:
every step is PIL's): `Resize(224, bicubic)` on the shorter side in the image's own mode (Pillow switches
to NEAREST for "P" and "1"), `CenterCrop(224)`, `convert("RGB")`. `--check` runs the same function on the
committed fixtures of reference.json and asserts it reproduces open_clip's pixels there exactly.

Writes tests/fixtures/reference/odd.json: [{file, pil_mode, width, height, pixels}] and
tests/fixtures/reference/pixels/<name>.png.

    python scripts/make_odd_fixtures.py [--check]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image, TiffImagePlugin

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
IMAGES = os.path.join(ROOT, "images")
PIXELS = os.path.join(ROOT, "reference", "pixels")


def open_clip_pixels(im: Image.Image, size: int = 224) -> Image.Image:
    """torchvision Resize(size, BICUBIC) + CenterCrop(size) on a PIL image, then convert("RGB")."""
    w, h = im.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    return im.convert("RGB")


# ----------------------------------------------------------------------------------------------- BMP


def _rows(data: np.ndarray, bits: int) -> list:
    """Each row packed MSB first at `bits` per sample (or as bytes), padded to 4 bytes."""
    out = []
    for r in data:
        if bits >= 8:
            row = r.astype(np.uint8).tobytes()
        else:
            acc, n, row = 0, 0, bytearray()
            for x in r.reshape(-1):
                acc, n = (acc << bits) | int(x), n + bits
                while n >= 8:
                    n -= 8
                    row.append((acc >> n) & 0xFF)
            if n:
                row.append((acc << (8 - n)) & 0xFF)
            row = bytes(row)
        out.append(row + b"\0" * (-len(row) % 4))
    return out


def bmp(im: Image.Image, header: str, top_down: bool = False, bits: int = 24) -> bytes:
    """BMP of `im` (RGB, or P for bits <= 8) with a 40-byte ("v3"), 12-byte ("os2v1") or 64-byte
    ("os2v2") header; top-down (negative height) on request."""
    w, h = im.size
    if bits <= 8:
        idx = np.asarray(im)
        pal = im.getpalette()[: 3 * (1 << bits)]
        pal += [0] * (3 * (1 << bits) - len(pal))
        entry = 3 if header == "os2v1" else 4
        palette = b"".join(
            bytes([pal[3 * i + 2], pal[3 * i + 1], pal[3 * i]]) + b"\0" * (entry - 3) for i in range(1 << bits)
        )
        rows = _rows(idx, bits)
    else:
        rgb = np.asarray(im.convert("RGB"))
        palette = b""
        rows = _rows(rgb[:, :, ::-1].reshape(h, -1), 8)
    if not top_down:
        rows = rows[::-1]
    pixels = b"".join(rows)
    if header == "os2v1":
        dib = struct.pack("<IHHHH", 12, w, h, 1, bits)
    else:
        size = 40 if header == "v3" else 64
        dib = struct.pack("<IiiHHIIiiII", size, w, -h if top_down else h, 1, bits, 0, len(pixels), 2835, 2835,
                          0, 0)
        dib += b"\0" * (size - 40)
    offset = 14 + len(dib) + len(palette)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return head + dib + palette + pixels


# ---------------------------------------------------------------------------------------------- TIFF

SHORT, LONG = 3, 4


def tiff(w: int, h: int, tags: dict, data, bo: str = "<", next_ifd_to_self: bool = False) -> bytes:
    """A classic TIFF with the given {tag: [values]} (SHORT unless a value exceeds 65535, LONG
    then); StripOffsets / StripByteCounts are added for `data`, one strip (bytes) or a list of
    strips. `next_ifd_to_self`: the IFD's next pointer points back at itself (a cycle)."""
    strips = data if isinstance(data, list) else [data]
    data = b"".join(strips)
    tags = dict(tags)
    tags[256] = [w]
    tags[257] = [h]
    tags[273] = [0] * len(strips)
    tags[279] = [len(c) for c in strips]
    n = len(tags)
    ifd_at = 8
    extra_at = ifd_at + 2 + 12 * n + 4
    extra = b""
    entries = []
    data_at = None
    # Values that do not fit in 4 bytes go after the IFD; the strip goes last.
    layout = []
    for tag in sorted(tags):
        vals = tags[tag]
        typ = LONG if tag in (273, 279) or max(vals) > 0xFFFF else SHORT
        layout.append((tag, typ, vals))
    sizes = {SHORT: 2, LONG: 4}
    ext_len = sum(len(v) * sizes[t] for _, t, v in layout if len(v) * sizes[t] > 4)
    data_at = extra_at + ext_len
    for tag, typ, vals in layout:
        if tag == 273:
            vals = [data_at + sum(len(c) for c in strips[:i]) for i in range(len(strips))]
        fmt = bo + ("%dH" if typ == SHORT else "%dI") % len(vals)
        raw = struct.pack(fmt, *vals)
        if len(raw) <= 4:
            value = raw + b"\0" * (4 - len(raw))
        else:
            value = struct.pack(bo + "I", extra_at + len(extra))
            extra += raw
        entries.append(struct.pack(bo + "HHI", tag, typ, len(vals)) + value)
    head = (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", ifd_at)
    nxt = ifd_at if next_ifd_to_self else 0
    ifd = struct.pack(bo + "H", n) + b"".join(entries) + struct.pack(bo + "I", nxt)
    out = head + ifd + extra
    assert len(out) == data_at
    return out + data


def colormap(pal: list, bits: int) -> list:
    """TIFF ColorMap (planar R, G, B; 16-bit values) for a PIL palette, 2**bits entries."""
    k = 1 << bits
    pal = pal[: 3 * k] + [0] * max(0, 3 * k - len(pal))
    return [pal[3 * i + c] * 257 for c in range(3) for i in range(k)]


def pack(v: np.ndarray, bits: int) -> bytes:
    """TIFF rows (FillOrder 1): MSB first, each row padded to a byte."""
    out = []
    for r in v:
        acc, n, row = 0, 0, bytearray()
        for x in r.reshape(-1):
            acc, n = (acc << bits) | int(x), n + bits
            while n >= 8:
                n -= 8
                row.append((acc >> n) & 0xFF)
        if n:
            row.append((acc << (8 - n)) & 0xFF)
        out.append(bytes(row))
    return b"".join(out)


def set_next_ifd(data: bytes, ifd_index: int, target: int) -> bytes:
    """Little-endian classic TIFF with IFD number `ifd_index`'s next pointer set to `target`."""
    at = struct.unpack_from("<I", data, 4)[0]
    for _ in range(ifd_index):
        n = struct.unpack_from("<H", data, at)[0]
        at = struct.unpack_from("<I", data, at + 2 + 12 * n)[0]
    n = struct.unpack_from("<H", data, at)[0]
    out = bytearray(data)
    struct.pack_into("<I", out, at + 2 + 12 * n, target)
    return bytes(out)


def rename_tag(data: bytes, tag: int, new: int) -> bytes:
    """Little-endian classic TIFF with the first IFD's entry `tag` renamed `new` (in place)."""
    at = struct.unpack_from("<I", data, 4)[0]
    n = struct.unpack_from("<H", data, at)[0]
    out = bytearray(data)
    for i in range(n):
        e = at + 2 + 12 * i
        if struct.unpack_from("<H", data, e)[0] == tag:
            struct.pack_into("<H", out, e, new)
            return bytes(out)
    raise ValueError(f"no tag {tag}")


def make(out: str) -> list:
    src = Image.open(os.path.join(IMAGES, "coffee_small.bmp")).convert("RGB")
    rgb = src.crop((130, 60, 170, 90))  # 40x30
    gray = rgb.convert("L")
    g = np.asarray(gray).astype(np.int32)
    p256 = rgb.quantize(colors=200, method=Image.Quantize.MEDIANCUT)
    p16 = rgb.quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    p2 = rgb.quantize(colors=2, method=Image.Quantize.MEDIANCUT)
    w, h = rgb.size
    made = []

    def write(name, data, what):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        made.append((name, what))

    # BMP
    write("coffee_topdown.bmp", bmp(rgb, "v3", top_down=True), "24-bit BMP, top-down (negative height)")
    write("coffee_topdown_p8.bmp", bmp(p256, "v3", top_down=True, bits=8),
          "8-bit palette BMP, top-down (negative height)")
    write("coffee_os2v1.bmp", bmp(rgb, "os2v1"), "OS/2 v1 BMP (12-byte BITMAPCOREHEADER, 16-bit sizes), 24-bit")
    write("coffee_os2v1_p8.bmp", bmp(p256, "os2v1", bits=8),
          "OS/2 v1 BMP, 8-bit palette of 3-byte entries")
    write("coffee_os2v2_p4.bmp", bmp(p16, "os2v2", bits=4), "OS/2 v2 BMP (64-byte header), 4-bit palette")
    write("coffee_os2v2_topdown.bmp", bmp(rgb, "os2v2", top_down=True),
          "OS/2 v2 BMP (64-byte header), 24-bit, top-down")

    # TIFF palette images: Pillow writes 8-bit "P"; 1 and 4 bits by hand.
    buf = io.BytesIO()
    p256.save(buf, "TIFF", compression="tiff_lzw")
    write("coffee_palette8_lzw.tif", buf.getvalue(), "8-bit palette TIFF, LZW (Pillow)")
    base = {258: [8], 259: [1], 262: [3], 277: [1], 278: [h]}
    buf = io.BytesIO()
    p16.save(buf, "TIFF", compression="tiff_adobe_deflate")
    write("coffee_palette8_deflate.tif", buf.getvalue(), "8-bit palette TIFF (16 colours used), Adobe Deflate (Pillow)")
    buf = io.BytesIO()
    p256.save(buf, "TIFF", big_tiff=True)
    write("coffee_palette8_bigtiff.tif", buf.getvalue(), "8-bit palette BigTIFF (Pillow big_tiff=True)")
    write("coffee_palette8_be.tif",
          tiff(w, h, {**base, 320: colormap(p256.getpalette(), 8)}, np.asarray(p256).tobytes(), bo=">"),
          "8-bit palette TIFF, big-endian, hand-written")
    write("coffee_palette4.tif",
          tiff(w, h, {**base, 258: [4], 320: colormap(p16.getpalette(), 4)}, pack(np.asarray(p16), 4)),
          "4-bit palette TIFF (P;4), hand-written")
    write("coffee_palette1.tif",
          tiff(w, h, {**base, 258: [1], 320: colormap(p2.getpalette(), 1)}, pack(np.asarray(p2), 1)),
          "1-bit palette TIFF (P;1), two non-grey colours, hand-written")

    # Signed samples (SampleFormat 2). PIL: 8-bit signed opens as plain "L" (bytes as unsigned),
    # 16-bit as "I" (I;16S / I;16BS): negative values and values over 255 clip in convert("RGB").
    gray_tags = {258: [8], 259: [1], 262: [1], 277: [1], 278: [h], 339: [2]}
    s8 = (g - 128).astype(np.int8)
    write("coffee_gray_s8.tif", tiff(w, h, gray_tags, s8.tobytes()), "8-bit signed gray (PIL: L, bytes unsigned)")
    s16 = (g * 4 - 500).astype(np.int16)
    write("coffee_gray_s16.tif", tiff(w, h, {**gray_tags, 258: [16]}, s16.astype("<i2").tobytes()),
          "16-bit signed gray, little-endian (PIL: I, I;16S), values about -180..360")
    write("coffee_gray_s16_be.tif",
          tiff(w, h, {**gray_tags, 258: [16]}, s16.astype(">i2").tobytes(), bo=">"),
          "16-bit signed gray, big-endian (PIL: I, I;16BS)")

    # No RowsPerStrip: the whole image is one strip.
    rgb_tags = {258: [8, 8, 8], 259: [1], 262: [2], 277: [3], 284: [1]}
    write("coffee_no_rowsperstrip.tif", tiff(w, h, rgb_tags, np.asarray(rgb).tobytes()),
          "RGB TIFF without RowsPerStrip (one strip)")

    buf = io.BytesIO()
    rgb.save(buf, "TIFF", compression="tiff_lzw")
    write("coffee_no_rowsperstrip_lzw.tif", rename_tag(buf.getvalue(), 278, 65000),
          "LZW RGB TIFF (Pillow, one strip) with its RowsPerStrip tag renamed to an unknown private tag")

    # Multi-page: Pillow's save_all; the second IFD's next pointer is made to point at the first (a cycle).
    buf = io.BytesIO()
    rgb.save(buf, "TIFF", save_all=True, append_images=[gray.transpose(Image.Transpose.ROTATE_180),
                                                        p16.convert("RGB")])
    write("coffee_multipage.tif", buf.getvalue(), "3-page TIFF (Pillow save_all), first page RGB")
    write("coffee_multipage_cycle.tif", set_next_ifd(buf.getvalue(), 1, struct.unpack_from("<I", buf.getvalue(), 4)[0]),
          "2 pages then an IFD cycle back to the first")
    # A single page whose IFD points back at itself.
    write("coffee_ifd_self_cycle.tif", tiff(w, h, rgb_tags, np.asarray(rgb).tobytes(), next_ifd_to_self=True),
          "RGB TIFF whose only IFD's next pointer points at itself")

    # Orientation (tag 274, or tiff:Orientation in the XMP packet when the tag is absent): Pillow
    # transposes every TIFF by it as it loads (TiffImageFile.load_end), whatever the compression.
    bw = rgb.resize((120, 90), Image.Resampling.BICUBIC).convert("1")

    def pil_tiff(im, compression=None, **tags):
        info = TiffImagePlugin.ImageFileDirectory_v2()
        for tag, value in tags.items():
            info[int(tag[1:])] = value
        buf = io.BytesIO()
        im.save(buf, "TIFF", compression=compression, tiffinfo=info)
        return buf.getvalue()

    for o in (3, 6, 8):
        write(f"coffee_group4_orientation{o}.tif", pil_tiff(bw, "group4", t274=o),
              f"CCITT Group 4 TIFF, Orientation {o} (Pillow)")
    write("coffee_group3_orientation5.tif", pil_tiff(bw, "group3", t274=5), "CCITT Group 3 TIFF, Orientation 5 (Pillow)")
    write("coffee_ccitt_rle_orientation7.tif", pil_tiff(bw, "tiff_ccitt", t274=7),
          "CCITT RLE TIFF, Orientation 7 (Pillow)")
    write("coffee_lzw_orientation2.tif", pil_tiff(rgb, "tiff_lzw", t274=2), "LZW RGB TIFF, Orientation 2 (Pillow)")
    write("coffee_palette_orientation4.tif", pil_tiff(p256, None, t274=4), "8-bit palette TIFF, Orientation 4 (Pillow)")
    write("coffee_xmp_orientation6.tif",
          pil_tiff(gray, "tiff_adobe_deflate",
                   t700=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6"/>'
                        b'</rdf:RDF></x:xmpmeta>'),
          "Deflate gray TIFF without an Orientation tag, tiff:Orientation=6 in its XMP packet (Pillow)")

    # FillOrder 2: libtiff (which Pillow writes and reads compressed files with) bit-reverses each
    # compressed strip; Pillow's raw decoder reverses each uncompressed byte.
    write("coffee_group4_fillorder2.tif", pil_tiff(bw, "group4", t266=2), "CCITT Group 4 TIFF, FillOrder 2 (Pillow)")
    write("coffee_group4_fillorder2_orientation6.tif", pil_tiff(bw, "group4", t266=2, t274=6),
          "CCITT Group 4 TIFF, FillOrder 2 and Orientation 6 (Pillow)")
    write("coffee_ccitt_rle_fillorder2.tif", pil_tiff(bw, "tiff_ccitt", t266=2), "CCITT RLE TIFF, FillOrder 2 (Pillow)")
    write("coffee_lzw_fillorder2_gray.tif", pil_tiff(gray, "tiff_lzw", t266=2), "LZW gray TIFF, FillOrder 2 (Pillow)")
    write("coffee_deflate_fillorder2_rgb.tif", pil_tiff(rgb, "tiff_adobe_deflate", t266=2),
          "Deflate RGB TIFF, FillOrder 2 (Pillow)")
    write("coffee_packbits_fillorder2_palette4.tif", pil_tiff(p16, "packbits", t266=2),
          "PackBits palette TIFF (16 colours), FillOrder 2 (Pillow)")

    # Four samples per pixel: associated alpha (ExtraSamples 1, PIL's "RGBa" raw modes, which it
    # unpremultiplies as it unpacks into "RGBA"), 8 and 16 bits; and no ExtraSamples tag ("RGBA").
    a = np.asarray(rgb).astype(np.int32)
    alpha = (np.arange(w)[None, :] * 255 // (w - 1) + np.zeros((h, 1), np.int32)).astype(np.int32)
    alpha[::7, ::5] = 0
    pre = np.concatenate([(a * alpha[..., None] + 127) // 255, alpha[..., None]], axis=2)
    rgba_tags = {258: [8] * 4, 259: [1], 262: [2], 277: [4], 278: [h], 338: [1]}
    write("coffee_rgba_associated8.tif", tiff(w, h, rgba_tags, pre.astype(np.uint8).tobytes()),
          "8-bit RGB with associated (premultiplied) alpha, ExtraSamples 1")
    pre16 = pre * 257 + (np.arange(pre.size).reshape(pre.shape) % 251)
    pre16 = np.minimum(pre16, 65535)
    write("coffee_rgba_associated16.tif", tiff(w, h, {**rgba_tags, 258: [16] * 4}, pre16.astype("<u2").tobytes()),
          "16-bit RGB with associated alpha (RGBa;16L), ExtraSamples 1")
    write("coffee_rgba_associated16_be.tif",
          tiff(w, h, {**rgba_tags, 258: [16] * 4}, pre16.astype(">u2").tobytes(), bo=">"),
          "16-bit RGB with associated alpha, big-endian (RGBa;16B)")
    straight = np.concatenate([a, alpha[..., None]], axis=2).astype(np.uint8)
    no_extra = {k: v for k, v in rgba_tags.items() if k != 338}
    write("coffee_rgba_no_extrasamples.tif", tiff(w, h, no_extra, straight.tobytes()),
          "8-bit RGB with a fourth sample and no ExtraSamples tag (PIL: RGBA)")
    # Extra samples the `tiff` crate reports as a plain colour type although each pixel holds more
    # samples: "RGBX" (unspecified fourth sample, dropped), "RGBaX" (five samples), "CMYKX", and
    # gray with an unspecified ("LX": mode L) or unassociated ("LA") extra sample.
    x = (np.arange(h * w).reshape(h, w, 1) * 37 % 256).astype(np.int32)
    write("coffee_rgbx_unspecified.tif",
          tiff(w, h, {**rgba_tags, 338: [0]}, np.concatenate([a, x], axis=2).astype(np.uint8).tobytes()),
          "8-bit RGB plus an unspecified extra sample (ExtraSamples 0, PIL: RGBX -> RGB)")
    write("coffee_rgbax_5samples.tif",
          tiff(w, h, {**rgba_tags, 258: [8] * 5, 277: [5], 338: [1, 0]},
               np.concatenate([pre, x], axis=2).astype(np.uint8).tobytes()),
          "8-bit RGB, associated alpha and an unspecified fifth sample (PIL: RGBaX -> RGBA)")
    cmyk = np.asarray(rgb.convert("CMYK")).astype(np.int32)
    write("coffee_cmykx.tif",
          tiff(w, h, {258: [8] * 5, 259: [1], 262: [5], 277: [5], 278: [h], 338: [0]},
               np.concatenate([cmyk, x], axis=2).astype(np.uint8).tobytes()),
          "8-bit CMYK plus an unspecified extra sample (PIL: CMYKX -> CMYK)")
    write("coffee_cmyk16.tif",
          tiff(w, h, {258: [16] * 4, 259: [1], 262: [5], 277: [4], 278: [h]},
               (cmyk * 257 + x % 200).astype("<u2").tobytes()),
          "16-bit CMYK, little-endian (PIL: CMYK;16L -> CMYK)")
    la = np.stack([g, alpha], axis=2)
    write("coffee_gray_lx.tif",
          tiff(w, h, {258: [8, 8], 259: [1], 262: [1], 277: [2], 278: [h], 338: [0]}, la.astype(np.uint8).tobytes()),
          "8-bit gray plus an unspecified extra sample (PIL: LX -> L)")
    write("coffee_gray_la.tif",
          tiff(w, h, {258: [8, 8], 259: [1], 262: [1], 277: [2], 278: [h], 338: [2]}, la.astype(np.uint8).tobytes()),
          "8-bit gray with unassociated alpha (PIL: LA)")
    # PlanarConfiguration 2: one plane per sample (PIL reads each band from its own plane).
    def planes(arr, dtype="u1", deflate=False):
        out = [np.ascontiguousarray(arr[:, :, i]).astype(dtype).tobytes() for i in range(arr.shape[2])]
        return [zlib.compress(c) for c in out] if deflate else out

    write("coffee_planar_rgb.tif", tiff(w, h, {**rgb_tags, 278: [h], 284: [2]}, planes(a)),
          "8-bit RGB, separate planes (PlanarConfiguration 2), uncompressed")
    write("coffee_planar_rgba16_associated_deflate.tif",
          tiff(w, h, {**rgba_tags, 258: [16] * 4, 259: [8], 284: [2]}, planes(pre16, "<u2", deflate=True)),
          "16-bit RGB with associated alpha, separate planes, Adobe Deflate")
    write("coffee_planar_gray_lx.tif",
          tiff(w, h, {258: [8, 8], 259: [8], 262: [1], 277: [2], 278: [h], 284: [2], 338: [0]},
               planes(la, deflate=True)),
          "8-bit gray plus an unspecified extra sample, separate planes, Deflate (PIL: L; Pillow's raw decoder "
          "cannot read this layout uncompressed)")
    write("coffee_planar_signed_gray_lx.tif",
          tiff(w, h, {258: [8, 8], 259: [8], 262: [1], 277: [2], 278: [h], 284: [2], 338: [0], 339: [2, 2]},
               planes(np.stack([s8.astype(np.int32), alpha], axis=2), "i1", deflate=True)),
          "8-bit signed gray plus an unspecified extra sample, separate planes, Deflate (PIL: L, bytes unsigned)")
    lx = planes(la, deflate=True)
    write("coffee_planar_gray_lx_junk_plane.tif",
          tiff(w, h, {258: [8, 8], 259: [8], 262: [1], 277: [2], 278: [h], 284: [2], 338: [0]},
               [lx[0], b"not a deflate stream"]),
          "8-bit gray plus an unspecified extra plane that is not valid Deflate data (PIL never reads it: L)")
    # BitsPerSample with more values than SamplesPerPixel: PIL keeps the first SamplesPerPixel.
    write("coffee_bits_per_sample_extra_value.tif",
          tiff(w, h, {258: [8, 8, 8, 1], 259: [1], 262: [2], 277: [3], 278: [h]}, np.asarray(rgb).tobytes()),
          "8-bit RGB whose BitsPerSample lists 4 values (8, 8, 8, 1) for 3 samples")
    return made


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="compare with reference.json's open_clip pixels first")
    args = ap.parse_args()
    if args.check:
        ref = json.load(open(os.path.join(ROOT, "reference", "reference.json")))
        for e in ref["images"]:
            ours = np.asarray(open_clip_pixels(Image.open(os.path.join(ROOT, e["file"]))))
            theirs = np.asarray(Image.open(os.path.join(ROOT, e["pixels"])).convert("RGB"))
            d = np.abs(ours.astype(int) - theirs.astype(int)).max()
            print(f"{e['file']:45} {e['pil_mode']:6} max diff {d}")
            assert d == 0, e["file"]
        print("CHECK PASSED: Pillow-only preprocessing equals open_clip's on reference.json")
    made = make(IMAGES)
    rows = []
    for name, what in made:
        im = Image.open(os.path.join(IMAGES, name))
        # The size as stored (before the Orientation PIL applies as it loads a TIFF).
        mode, stored = im.mode, getattr(im, "_tile_size", im.size)
        im.load()
        size = im.size
        px = open_clip_pixels(im)
        stem = os.path.splitext(name)[0]
        png = f"reference/pixels/{stem}.png"
        px.save(os.path.join(ROOT, png))
        rows.append({"file": f"images/{name}", "pil_format": im.format, "pil_mode": mode, "width": size[0],
                     "height": size[1], "stored_width": stored[0], "stored_height": stored[1],
                     "pixels": png, "what": what})
        print(f"{name:32} {im.format:5} {mode:6} {size}  {what}")
    with open(os.path.join(ROOT, "reference", "odd.json"), "w") as f:
        json.dump({"pillow": Image.__version__ if hasattr(Image, "__version__") else None,
                   "notes": ["pixels: open_clip's inference transform reproduced with Pillow alone "
                             "(scripts/make_odd_fixtures.py)"], "images": rows}, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
