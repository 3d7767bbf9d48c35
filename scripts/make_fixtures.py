#!/usr/bin/env python3
"""Create the committed test inputs: `tests/fixtures/images/*` and `tests/fixtures/texts.json`.

Images are real photographs shipped inside the scikit-image wheel (public domain / CC0, see
tests/fixtures/README.md), re-encoded with Pillow into the encodings and pixel formats a server meets in
the wild: baseline/progressive/4:4:4/4:2:2/CMYK/grayscale JPEG, 8-bit, 16-bit, RGBA, LA and paletted PNG,
GIF, lossy and lossless WebP, BMP, TIFF, degenerate sizes (1x1, a tiny image, a 2000x120 panorama, a tall
strip), a ~4000x3000 JPEG and a JPEG carrying EXIF orientation 6.

Texts cover what open_clip's cleaning (ftfy + html.unescape x2 + whitespace + lower) and its BPE regex do
to unusual input; the two boundary texts are built with open_clip's tokenizer so that they encode to exactly
75 and 76 BPE tokens (fits / truncated by one).

Everything is deterministic (fixed seeds); re-running rewrites identical files for the same library versions.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image

SK_DATA = None


def sk(name: str) -> Image.Image:
    """Open a file from skimage/data (bundled in the wheel, no download)."""
    global SK_DATA
    if SK_DATA is None:
        import skimage

        SK_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")
    im = Image.open(os.path.join(SK_DATA, name))
    im.load()
    return im


def write_png_rgb16(path: str, rgb16: np.ndarray) -> None:
    """Minimal PNG writer for 16-bit RGB (Pillow has no 16-bit-per-channel RGB mode to save from)."""
    h, w, c = rgb16.shape
    assert c == 3 and rgb16.dtype == np.uint16
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def to16(img: Image.Image, size) -> np.ndarray:
    """Resize an 8-bit image in float and scale to 16 bits, so the low byte carries real information."""
    bands = [np.asarray(b.convert("F").resize(size, Image.Resampling.BICUBIC)) for b in img.split()]
    arr = np.stack(bands, -1) * 257.0
    return np.clip(np.rint(arr), 0, 65535).astype(np.uint16)


def make_images(out: str) -> list:
    """Write all fixture images into `out`; return a list of (file, source, what-it-tests)."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20240601)
    astronaut, chelsea, coffee = sk("astronaut.png"), sk("chelsea.png"), sk("coffee.png")
    rocket, camera, clock = sk("rocket.jpg"), sk("camera.png"), sk("clock_motion.png")
    hubble, retina = sk("hubble_deep_field.jpg"), sk("retina.jpg")
    made = []

    def save(name, im, source, what, keep_info=False, **kw):
        """Save `im`; metadata inherited from the source (ICC profile, comments) is dropped unless keep_info."""
        if not keep_info:
            im = im.copy()
            im.info = {}
        im.save(os.path.join(out, name), **kw)
        made.append((name, source, what))

    # JPEG family
    save("chelsea_baseline_420.jpg", chelsea, "chelsea", "baseline JPEG, 4:2:0 chroma subsampling, quality 85",
         quality=85, subsampling=2)
    save("coffee_progressive.jpg", coffee, "coffee", "progressive JPEG, 4:2:0, quality 85",
         quality=85, subsampling=2, progressive=True)
    save("astronaut_444.jpg", astronaut, "astronaut", "baseline JPEG, 4:4:4 (no chroma subsampling), quality 90",
         quality=90, subsampling=0)
    save("retina_422.jpg", retina.resize((705, 705), Image.Resampling.LANCZOS), "retina",
         "JPEG 4:2:2 chroma subsampling, quality 85", quality=85, subsampling=1)
    save("rocket_cmyk.jpg", rocket.convert("CMYK"), "rocket",
         "CMYK JPEG (Pillow writes plain CMYK, Adobe APP14 marker; opens as mode CMYK)", quality=90)
    save("camera_gray.jpg", camera, "camera", "8-bit grayscale JPEG (mode L)", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    save("chelsea_exif_orientation6.jpg", chelsea, "chelsea",
         "JPEG with EXIF Orientation=6; open_clip ignores orientation (no exif_transpose), so do we by default",
         quality=85, exif=exif)

    # Large photo: coffee cropped to 4:3, upscaled to 4000x3000, with mild sensor-like noise.
    big = coffee.crop((33, 0, 566, 400)).resize((4000, 3000), Image.Resampling.LANCZOS)
    arr = np.asarray(big).astype(np.float32) + rng.normal(0, 2.0, (3000, 4000, 1)).astype(np.float32)
    big = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    save("coffee_4000x3000.jpg", big, "coffee", "large photo (upscaled), 4000x3000 baseline JPEG q85",
         quality=85, subsampling=2)
    # Panorama: 2000x120 band out of the upscaled rocket.
    pano = rocket.resize((2000, 1335), Image.Resampling.LANCZOS).crop((0, 700, 2000, 820))
    save("rocket_panorama_2000x120.jpg", pano, "rocket", "very wide panorama 2000x120 (aspect 16.7:1), JPEG",
         quality=85)

    # Tall portrait: Pillow >= 13 resizes vertically first when the height shrinks much more than the
    # width (python-pillow/Pillow#9549); the pass order changes results, since the pass between is 8-bit.
    portrait = astronaut.crop((150, 0, 342, 512)).resize((600, 1600), Image.Resampling.LANCZOS)
    save("astronaut_portrait_600x1600.jpg", portrait, "astronaut",
         "tall portrait JPEG 600x1600: Pillow resizes it vertical pass first", quality=88, subsampling=2)

    # PNG family
    save("astronaut_rgb.png", astronaut, "astronaut", "8-bit RGB PNG (lossless: decoders must agree exactly); "
         "keeps the source's embedded ICC profile, which open_clip (and PIL's convert) ignore",
         keep_info=True, optimize=True)
    rgba = np.asarray(chelsea.convert("RGBA")).copy()
    h, w = rgba.shape[:2]
    xs = np.linspace(0.0, 1.0, w)[None, :]
    ys = np.linspace(0.0, 1.0, h)[:, None]
    alpha = np.clip(255 * (0.15 + xs * 0.85) * (0.3 + 0.7 * ys), 0, 255)
    alpha[:, : w // 8] = 0  # a fully transparent band whose RGB is still the photo (cropped away by open_clip)
    # A fully transparent band inside the centre crop hiding magenta: premultiplied resizing (PIL) gives black
    # there and no magenta fringe; a non-premultiplied resize would smear magenta into its neighbours.
    band = slice(int(w * 0.45), int(w * 0.55))
    alpha[:, band] = 0
    rgba[:, band, :3] = (255, 0, 255)
    rgba[..., 3] = np.rint(alpha).astype(np.uint8)
    save("chelsea_rgba_gradient.png", Image.fromarray(rgba, "RGBA"), "chelsea",
         "RGBA PNG with a partial alpha gradient and fully transparent bands, one hiding magenta (PIL "
         "premultiplies when resizing RGBA, and convert('RGB') then drops alpha without compositing)")
    la = np.stack([np.asarray(clock), np.rint(np.linspace(255, 40, clock.size[0]))[None, :].repeat(clock.size[1], 0)
                   .astype(np.uint8)], -1)
    save("clock_gray_alpha.png", Image.fromarray(la, "LA"), "clock_motion", "grayscale + alpha PNG (mode LA)")
    save("clock_gray.png", clock, "clock_motion", "8-bit grayscale PNG (mode L)")
    g16 = to16(camera, (384, 384))[..., 0]
    save("camera_gray16.png", Image.fromarray(g16), "camera",
         "16-bit grayscale PNG (opens as mode I;16, values up to 65535; PIL's convert('RGB') clips, not scales)")
    write_png_rgb16(os.path.join(out, "rocket_rgb16.png"), to16(rocket, (320, 214)))
    made.append(("rocket_rgb16.png", "rocket", "16-bit-per-channel RGB PNG, written by hand (Pillow cannot "
                 "save it); Pillow opens it as 8-bit RGB keeping the high byte"))
    save("rocket_palette.png", rocket.resize((480, 320), Image.Resampling.LANCZOS).quantize(
        64, method=Image.Quantize.MEDIANCUT), "rocket",
         "paletted PNG, 64 colours (mode P: open_clip resizes P with NEAREST before converting)")
    save("astronaut_1x1.png", astronaut.resize((1, 1), Image.Resampling.BOX), "astronaut", "1x1 image")
    save("chelsea_tiny_13x9.png", chelsea.resize((13, 9), Image.Resampling.LANCZOS), "chelsea",
         "tiny 13x9 image (upscaling path)")
    save("retina_tall_90x1400.png", retina.crop((660, 5, 750, 1405)), "retina", "tall narrow strip 90x1400 PNG")

    # Other containers
    save("chelsea_palette.gif", chelsea.quantize(256, method=Image.Quantize.MEDIANCUT), "chelsea",
         "GIF, 256-colour adaptive palette (opens as mode P)")
    save("rocket_lossy.webp", rocket, "rocket", "lossy WebP, quality 80", quality=80, method=4)
    save("coffee_lossless.webp", coffee.resize((450, 300), Image.Resampling.LANCZOS), "coffee", "lossless WebP",
         lossless=True, quality=80, method=4)
    save("coffee_small.bmp", coffee.resize((300, 200), Image.Resampling.LANCZOS), "coffee", "24-bit BMP")
    save("hubble_lzw.tif", hubble.crop((0, 0, 500, 436)), "hubble_deep_field", "RGB TIFF, LZW compression",
         compression="tiff_lzw")
    made += make_decoder_variants(out, chelsea, coffee)
    return made


def _insert_before_marker(data: bytes, marker: int, junk: bytes) -> bytes:
    """`data` with `junk` inserted before the first 0xFF `marker` (libjpeg warns, PIL decodes)."""
    at = data.index(bytes([0xFF, marker]))
    return data[:at] + junk + data[at:]


def make_decoder_variants(out: str, chelsea: Image.Image, coffee: Image.Image) -> list:
    """Small files in encodings PIL opens that decoders often refuse (tests "decode what PIL decodes")."""
    made = []
    small = coffee.crop((120, 40, 504, 328)).resize((64, 48), Image.Resampling.LANCZOS)
    cat = chelsea.crop((60, 0, 444, 288)).resize((96, 72), Image.Resampling.LANCZOS)

    def write(name, data, source, what):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        made.append((name, source, what))

    buf = io.BytesIO()
    cat.save(buf, "JPEG", quality=85)
    write("chelsea_extraneous_bytes.jpg", _insert_before_marker(buf.getvalue(), 0xDA, b"\x00\x11\x22"), "chelsea",
          "JPEG with 3 junk bytes before the SOS marker: libjpeg warns 'Corrupt JPEG data: 3 extraneous bytes "
          "before marker 0xda', PIL decodes")
    buf = io.BytesIO()
    cat.convert("L").save(buf, "GIF")
    gif = buf.getvalue()
    flags = gif[10]
    assert flags & 0x80, "Pillow writes a global colour table"
    table = 3 * (2 << (flags & 7))
    write("chelsea_no_colour_table.gif", gif[:10] + bytes([flags & 0x70]) + gif[11:13] + gif[13 + table:], "chelsea",
          "GIF with no colour table at all (Pillow's grayscale GIF with its global table cut out): PIL opens "
          "it as mode L, the indices as grey levels")

    # TIFF variants. Pillow (with libtiff) writes the compressions; other layouts are written by hand.
    def save(name, im, what, **kw):
        im.save(os.path.join(out, name), **kw)
        made.append((name, "coffee", what))

    bilevel = coffee.crop((120, 40, 504, 328)).resize((192, 144), Image.Resampling.LANCZOS).convert("L")
    bilevel = bilevel.point(lambda v: 255 if v > 110 else 0).convert("1")
    save("coffee_group3.tif", bilevel, "TIFF, CCITT Group 3 (1-D, EOL codes), mode 1", compression="group3")
    save("coffee_ccitt_rle.tif", bilevel, "TIFF, CCITT RLE (compression 2: Modified Huffman rows, byte-aligned, "
         "no EOLs), mode 1", compression="tiff_ccitt")
    buf = io.BytesIO()
    bilevel.save(buf, "TIFF", compression="group4")
    write("coffee_group4_miniswhite.tif", _set_photometric(buf.getvalue(), 0), "coffee",
          "TIFF, CCITT Group 4, Photometric WhiteIsZero (Pillow's group4 file with tag 262 set to 0, as fax "
          "files in the wild have it; PIL opens it as mode 1 with raw mode 1;I)")
    save("coffee_jpeg_rgb.tif", small, "TIFF, new-style JPEG (compression 7), Photometric RGB, JPEGTables",
         compression="jpeg")
    save("coffee_jpeg_ycbcr.tif", small.convert("YCbCr"), "TIFF, new-style JPEG, Photometric YCbCr (libtiff "
         "converts to RGB for PIL)", compression="jpeg")
    save("coffee_jpeg_gray.tif", small.convert("L"), "TIFF, new-style JPEG, grayscale", compression="jpeg")
    save("coffee_adobe_deflate.tif", small, "TIFF, Adobe Deflate", compression="tiff_adobe_deflate")
    save("coffee_packbits.tif", small, "TIFF, PackBits", compression="packbits")
    save("coffee_bigtiff.tif", small, "BigTIFF (magic 43, 64-bit offsets)", big_tiff=True)
    gray = np.asarray(small.convert("L"))
    h, w = gray.shape
    _write_tiff(os.path.join(out, "coffee_gray_miniswhite.tif"), w, h, [8], 0, (255 - gray).tobytes())
    made.append(("coffee_gray_miniswhite.tif", "coffee", "8-bit gray TIFF, Photometric WhiteIsZero (mode L, inverted)"))
    ink = (gray > 110).astype(np.uint8)
    _write_tiff(os.path.join(out, "coffee_1bit_miniswhite.tif"), w, h, [1], 0, _pack_bits(1 - ink, 1))
    made.append(("coffee_1bit_miniswhite.tif", "coffee", "1-bit TIFF, Photometric WhiteIsZero (mode 1)"))
    for bits in (2, 4):
        _write_tiff(os.path.join(out, f"coffee_gray{bits}.tif"), w, h, [bits], 1, _pack_bits(gray >> (8 - bits), bits))
        made.append((f"coffee_gray{bits}.tif", "coffee", f"{bits}-bit gray TIFF (PIL: mode L, raw mode L;{bits})"))
    _write_tiff(os.path.join(out, "coffee_gray4_miniswhite.tif"), w, h, [4], 0, _pack_bits((255 - gray) >> 4, 4))
    made.append(("coffee_gray4_miniswhite.tif", "coffee", "4-bit gray TIFF, WhiteIsZero (raw mode L;4I)"))
    g12 = (gray.astype(np.uint16) << 4) | (gray >> 4)
    _write_tiff(os.path.join(out, "coffee_gray12.tif"), w, h, [12], 1, _pack_bits(g12, 12))
    made.append(("coffee_gray12.tif", "coffee", "12-bit gray TIFF, little-endian (PIL: mode I;16, raw mode I;12)"))
    g16 = to16(small.convert("L"), (w, h))[..., 0]
    _write_tiff(os.path.join(out, "coffee_gray16_be.tif"), w, h, [16], 1, g16.astype(">u2").tobytes(), bo=">")
    made.append(("coffee_gray16_be.tif", "coffee", "16-bit gray big-endian TIFF (PIL: mode I;16B, which Pillow "
                 "resizes as if little-endian)"))
    _write_tiff(os.path.join(out, "coffee_gray16_be_low.tif"), w, h, [16], 1, gray.astype(">u2").tobytes(), bo=">")
    made.append(("coffee_gray16_be_low.tif", "coffee", "16-bit gray big-endian TIFF holding 0..255 (mode I;16B)"))
    _write_tiff(os.path.join(out, "coffee_gray16_miniswhite.tif"), w, h, [16], 0,
                (gray.astype("<u2") * 3).tobytes())
    made.append(("coffee_gray16_miniswhite.tif", "coffee", "16-bit gray TIFF, WhiteIsZero, little-endian (PIL: "
                 "I;16 as stored, not inverted)"))
    write("chelsea_jpeg_tiles_420.tif", _jpeg_tiled_tiff(cat.crop((8, 8, 88, 64)), 32), "chelsea",
          "TIFF, new-style JPEG in 32x32 tiles (3 x 2, the edge tiles padded), Photometric YCbCr 4:2:0, each tile "
          "a complete JFIF stream (no JPEGTables); written by hand, Pillow cannot write tiles or subsampled YCbCr")
    return made


def _jpeg_tiled_tiff(im: Image.Image, tile: int) -> bytes:
    """A little-endian TIFF of `im` in JPEG-compressed (YCbCr 4:2:0) tiles of `tile` x `tile` pixels."""
    w, h = im.size
    across, down = -(-w // tile), -(-h // tile)
    padded = np.pad(np.asarray(im), ((0, down * tile - h), (0, across * tile - w), (0, 0)), mode="edge")
    tiles = []
    for ty in range(down):
        for tx in range(across):
            buf = io.BytesIO()
            part = padded[ty * tile:(ty + 1) * tile, tx * tile:(tx + 1) * tile]
            Image.fromarray(part).save(buf, "JPEG", quality=85, subsampling=2)
            tiles.append(buf.getvalue())
    n_tags = 12
    extra_at = 8 + 2 + 12 * n_tags + 4
    bps_at, offs_at = extra_at, extra_at + 6
    counts_at = offs_at + 4 * len(tiles)
    data_at = counts_at + 4 * len(tiles)
    offsets, at = [], data_at
    for t in tiles:
        offsets.append(at)
        at += len(t)

    def entry(tag, typ, count, value):
        return struct.pack("<HHI", tag, typ, count) + value

    short = lambda v, v2=0: struct.pack("<HH", v, v2)  # noqa: E731
    long_ = lambda v: struct.pack("<I", v)  # noqa: E731
    entries = [entry(256, 3, 1, short(w)), entry(257, 3, 1, short(h)), entry(258, 3, 3, long_(bps_at)),
               entry(259, 3, 1, short(7)), entry(262, 3, 1, short(6)), entry(277, 3, 1, short(3)),
               entry(284, 3, 1, short(1)), entry(322, 3, 1, short(tile)), entry(323, 3, 1, short(tile)),
               entry(324, 4, len(tiles), long_(offs_at)), entry(325, 4, len(tiles), long_(counts_at)),
               entry(530, 3, 2, short(2, 2))]
    assert len(entries) == n_tags
    out = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", n_tags) + b"".join(entries) + b"\0\0\0\0"
    out += struct.pack("<3H", 8, 8, 8) + struct.pack(f"<{len(tiles)}I", *offsets)
    out += struct.pack(f"<{len(tiles)}I", *[len(t) for t in tiles])
    assert len(out) == data_at
    return out + b"".join(tiles)


def _set_photometric(tiff: bytes, value: int) -> bytes:
    """`tiff` (little-endian, classic) with its first IFD's PhotometricInterpretation set to `value`."""
    assert tiff[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", tiff, 4)[0]
    n = struct.unpack_from("<H", tiff, ifd)[0]
    out = bytearray(tiff)
    for i in range(n):
        at = ifd + 2 + 12 * i
        if struct.unpack_from("<H", tiff, at)[0] == 262:
            struct.pack_into("<H", out, at + 8, value)
            return bytes(out)
    raise ValueError("no PhotometricInterpretation tag")


def _pack_bits(v: np.ndarray, bits: int) -> bytes:
    """Pack samples of `bits` bits MSB first, each row padded to a whole byte (TIFF FillOrder 1)."""
    rows = []
    for r in np.asarray(v).reshape(v.shape[0], -1):
        acc, n, row = 0, 0, bytearray()
        for x in r:
            acc, n = (acc << bits) | int(x), n + bits
            while n >= 8:
                n -= 8
                row.append((acc >> n) & 0xFF)
        if n:
            row.append((acc << (8 - n)) & 0xFF)
        rows.append(bytes(row))
    return b"".join(rows)


def _write_tiff(path: str, w: int, h: int, bps: list, photometric: int, data: bytes, bo: str = "<") -> None:
    """A minimal uncompressed single-strip TIFF (for layouts Pillow cannot write)."""
    spp = len(bps)
    n_tags = 10
    extra_off = 8 + 2 + 12 * n_tags + 4
    extra = struct.pack(bo + "%dH" % spp, *bps) if spp > 2 else b""
    data_off = extra_off + len(extra)

    def short(tag, *vals):
        v = list(vals) + [0] * (2 - len(vals))
        return struct.pack(bo + "HHIHH", tag, 3, len(vals), v[0], v[1])

    def long(tag, val):
        return struct.pack(bo + "HHII", tag, 4, 1, val)

    bps_entry = short(258, *bps) if spp <= 2 else struct.pack(bo + "HHII", 258, 3, spp, extra_off)
    entries = [short(256, w), short(257, h), bps_entry, short(259, 1), short(262, photometric),
               long(273, data_off), short(277, spp), short(278, h), long(279, len(data)), short(284, 1)]
    head = (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", 8)
    ifd = struct.pack(bo + "H", n_tags) + b"".join(entries) + b"\0\0\0\0"
    with open(path, "wb") as f:
        f.write(head + ifd + extra + data)


def _boundary_text(st, n_tokens: int) -> str:
    """A natural caption that open_clip's BPE splits into exactly `n_tokens` tokens."""
    words = ("a photo of a red fox jumping over a sleeping brown dog near the old wooden barn at sunset , "
             "while two children watch from the porch and a small white cat sits on the fence").split()
    text, i = "", 0
    while True:
        cand = (text + " " + words[i % len(words)]).strip()
        n = len(st.encode(cand))
        if n > n_tokens:
            break
        text, i = cand, i + 1
        if n == n_tokens:
            return text
    # Pad with single-token punctuation/words until exact.
    while len(st.encode(text)) < n_tokens:
        text += " a"
    assert len(st.encode(text)) == n_tokens, (len(st.encode(text)), n_tokens)
    return text


def make_texts(path: str) -> list:
    """Write texts.json: a list of {"name", "text", "covers"}."""
    from open_clip.tokenizer import SimpleTokenizer

    st = SimpleTokenizer()
    T = []

    def add(name, text, covers):
        T.append({"name": name, "text": text, "covers": covers})

    add("plain_cat", "a photo of a cat", "plain caption")
    add("plain_dog", "a photo of a dog", "plain caption")
    add("astronaut", "an astronaut in a white space suit holding a helmet", "plain caption")
    add("coffee", "a cup of coffee with latte art on a wooden table", "plain caption")
    add("rocket", "a rocket launching into the sky with a plume of smoke", "plain caption")
    add("template", "a bad photo of the tench.", "CLIP prompt template with trailing period")
    add("upper", "A PHOTO OF A CAT", "upper case (lower-cased by open_clip)")
    add("title_case", "A Photo Of A Cat", "title case")
    add("punctuation", "Hello, world! How are you?? ... (yes) [no] {maybe}; a/b-c_d", "punctuation runs")
    add("numbers", "1234567890 and 3.14159, 1,000,000 or 2nd 3rd 21st", "digits are single tokens")
    add("contractions", "it's they're we've i'm you'll he'd don't", "'s 't 're 've 'm 'll 'd")
    add("contractions_upper", "IT'S THEY'RE WE'VE I'M YOU'LL HE'D DON'T", "upper-case contractions")
    add("html_amp", "rock &amp; roll", "HTML entity &amp;")
    add("html_tags", "&lt;b&gt;bold&lt;/b&gt; text", "escaped tags become <b>")
    add("html_numeric", "don&#39;t stop &#x1F431; cat", "numeric entities (decimal, hex)")
    add("html_named", "caf&eacute; au lait &nbsp;&copy; 2024", "named entities incl. nbsp")
    add("html_double", "fish &amp;amp; chips &amp;lt;tag&amp;gt;", "double-escaped entities (unescaped twice)")
    add("html_upper", "HTML &AMP; ENTITY", "upper-case entity name")
    add("curly_quotes", "\u201cquoted\u201d and \u2018single\u2019 it\u2019s", "curly quotes (ftfy straightens)")
    add("ligatures", "\ufb01sh and \ufb02owers \ufb00", "Latin ligatures (ftfy expands)")
    add("fullwidth", "\uff48\uff45\uff4c\uff4c\uff4f\u3000\uff57\uff4f\uff52\uff4c\uff44 \uff11\uff12\uff13",
        "fullwidth forms and ideographic space (ftfy narrows)")
    add("mojibake_cafe", "caf\u00c3\u00a9", "UTF-8 read as Latin-1/cp1252 (ftfy repairs to cafe-acute)")
    add("mojibake_quotes", "\u00e2\u20ac\u0153quoted\u00e2\u20ac\x9d", "mojibake curly quotes")
    add("emoji", "a dog \U0001F436 with a party hat \U0001F389", "emoji")
    add("emoji_zwj", "family \U0001F468\u200d\U0001F469\u200d\U0001F467 photo", "ZWJ emoji sequence")
    add("emoji_skin_flag", "\U0001F44D\U0001F3FD thumbs up \U0001F1EF\U0001F1F5", "skin tone modifier, flag")
    add("chinese", "\u4e00\u53ea\u732b\u7684\u7167\u7247", "CJK (Chinese)")
    add("japanese", "\u732b\u306e\u5199\u771f", "Japanese")
    add("korean", "\uace0\uc591\uc774 \uc0ac\uc9c4", "Korean Hangul")
    add("arabic", "\u0635\u0648\u0631\u0629 \u0642\u0637\u0629", "Arabic (RTL)")
    add("hebrew", "\u05ea\u05de\u05d5\u05e0\u05d4 \u05e9\u05dc \u05d7\u05ea\u05d5\u05dc", "Hebrew")
    add("cyrillic", "\u0444\u043e\u0442\u043e\u0433\u0440\u0430\u0444\u0438\u044f \u041a\u041e\u0428\u041a\u0418",
        "Cyrillic, mixed case")
    add("greek_final_sigma", "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3 \u03a3\u03a4\u0391 \u039d\u0395\u03a1\u0391",
        "upper-case Greek: Python lower() uses final sigma, per-char lowercasing does not")
    add("hindi", "\u092c\u093f\u0932\u094d\u0932\u0940 \u0915\u0940 \u0924\u0938\u094d\u0935\u0940\u0930",
        "Devanagari: vowel signs are marks, not \\p{L}, so words split")
    add("thai", "\u0e20\u0e32\u0e1e\u0e16\u0e48\u0e32\u0e22\u0e41\u0e21\u0e27", "Thai (no spaces, tone marks)")
    add("vietnamese", "\u1ea2nh ch\u1ee5p con m\u00e8o", "Vietnamese precomposed diacritics")
    add("accented_latin", "Cr\u00e8me br\u00fbl\u00e9e \u00e0 la fran\u00e7aise, na\u00efve fa\u00e7ade, "
        "\u00c5ngstr\u00f6m, \u00d8resund, Stra\u00dfe", "accented Latin, sharp s")
    add("turkish_dotted_i", "\u0130stanbul and D\u0130YARBAKIR", "dotted capital I lowercases to 2 code points")
    add("nfc", "caf\u00e9 na\u00efve", "precomposed (NFC)")
    add("nfd", "cafe\u0301 nai\u0308ve", "decomposed (NFD); ftfy normalizes to NFC, same ids as nfc")
    add("combining_marks", "a\u0332b\u0332c\u0332 z\u0335\u0336", "combining marks with no precomposed form")
    add("whitespace_mix", "a\tphoto\n\nof   a\r\ncat", "tabs, newlines, CRLF, runs of spaces")
    add("unicode_spaces", "a\u00a0photo\u2003of\u2009a\u3000cat", "NBSP, em space, thin space, ideographic space")
    add("leading_trailing", "   a photo of a cat   ", "leading/trailing whitespace")
    add("empty", "", "empty string -> [SOT, EOT]")
    add("whitespace_only", "  \t\n  ", "whitespace only -> [SOT, EOT]")
    add("literal_endoftext_hf", "<|endoftext|>", "HF/OpenAI special name: plain text for open_clip")
    add("literal_startoftext_hf", "<|startoftext|>", "HF/OpenAI special name: plain text for open_clip")
    add("literal_sot", "<start_of_text>", "open_clip's SOT name in user text: becomes id 49406")
    add("literal_eot", "<end_of_text>", "open_clip's EOT name in user text: becomes id 49407")
    add("literal_eot_mid", "a photo <end_of_text> of a cat", "EOT mid-text: pooling takes the FIRST EOT")
    add("literal_sot_upper", "<START_OF_TEXT> dog", "special token matched after lower-casing")
    add("literal_specials_only", "<end_of_text><end_of_text>", "only special tokens")
    add("control_chars", "a\x00b\x07c\x1bd\x7f e\x85f photo", "C0/C1 control characters (ftfy removes some)")
    add("zero_width", "zero\u200bwidth\u200djoiner\u200cnon\ufeffbom\u2060wj", "ZWSP, ZWJ, ZWNJ, BOM, word joiner")
    add("soft_hyphen", "photo\u00adgraph of a cat", "soft hyphen")
    add("long_word", "pneumonoultramicroscopicsilicovolcanoconiosis", "long word, many BPE merges")
    add("very_long_word", "supercalifragilisticexpialidocious" * 8, "very long word (272 chars), truncated")
    add("url_email", "https://example.com/path?q=1&x=2#frag mail someone@example.org",
        "URL and e-mail ('&x' is not an entity)")
    add("hashtags", "#sunset @nature #photooftheday #NoFilter", "hashtags and mentions")
    add("mixed_script", "tokyo \u6771\u4eac 2020 \u043c\u043e\u0441\u043a\u0432\u0430 caf\u00e9", "scripts mixed")
    add("math_symbols", "x\u00b2 + y\u00b2 = z\u00b2 \u2264 \u221e \u00bd \u2460 \u216b", "superscripts, fractions, "
        "circled and Roman numerals (\\p{N})")
    add("quotes_backslash", 'He said "hi" \\ back\\slash `tick` \'n\'', "ASCII quotes, backslash, backtick")
    add("single_letter", "a", "single letter")
    add("single_punct", "!!!", "punctuation only")
    add("single_digit", "7", "single digit")
    add("repeated_char", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "repeated char")
    add("boundary_75", _boundary_text(st, 75), "exactly 75 BPE tokens: fits (SOT + 75 + EOT = 77)")
    add("boundary_76", _boundary_text(st, 76), "exactly 76 BPE tokens: truncated by one, last id forced to EOT")
    add("long_paragraph",
        "A long caption: the photograph shows a busy street market in the early morning, with vendors "
        "arranging crates of oranges, lemons, tomatoes and peppers under striped awnings, a cyclist weaving "
        "between shoppers, pigeons on the cobblestones, a bakery window full of bread, and in the distance "
        "a clock tower whose hands read a quarter past seven while the sun rises behind it. Further back, "
        "a tram rattles past a row of pastel houses, a dog sleeps in a doorway, and a street musician tunes "
        "an old violin beside a fountain where children chase each other around the stone rim.",
        "well over 77 tokens: truncation")

    names = [t["name"] for t in T]
    assert len(names) == len(set(names))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(T, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return T


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", default="tests/fixtures")
    a = ap.parse_args()
    made = make_images(os.path.join(a.fixtures, "images"))
    texts = make_texts(os.path.join(a.fixtures, "texts.json"))
    total = 0
    for name, source, what in made:
        p = os.path.join(a.fixtures, "images", name)
        total += os.path.getsize(p)
        with Image.open(p) as im:
            print(f"{name:34s} {os.path.getsize(p) / 1024:8.1f} KiB  {im.format:5s} {im.mode:5s} {im.size}  <- {source}")
    print(f"{len(made)} images, {total / 1e6:.2f} MB; {len(texts)} texts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
