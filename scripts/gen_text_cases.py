#!/usr/bin/env python3
"""Generate text-preprocessing test cases from open_clip itself (cleaning + `open_clip.tokenize`).

Each case is {"text", "cleaned", "ids", "token_count", "kind"}:
  * cleaned      open_clip's clean function (`open_clip.tokenizer._clean_lower`: ftfy.fix_text,
                 html.unescape twice, strip, whitespace collapse, lower-case),
  * ids          `open_clip.tokenize(text, context_length)[0]` without the zero padding after the
                 end-of-text id (the consumer pads back to the context length),
  * token_count  1 + len(SimpleTokenizer.encode(text)) + 1, before truncation.

The corpus is adversarial: random code points from many Unicode blocks, every HTML5 entity name with
and without ';', numeric references (valid and invalid), mojibake made by decoding UTF-8 as
Windows-125x / Latin-1 / MacRoman / CP437 / ISO-8859-2 (also doubled, lossy, with NBSP->space),
CESU-8, curly quotes, ligatures, full/half width, control characters, terminal escapes, line
breaks, literal special tokens, emoji, CJK, combining marks, Hangul jamo, Greek sigma, long texts.

    python scripts/gen_text_cases.py --out /tmp/text_cases_big.json            # the big corpus
    python scripts/gen_text_cases.py --fixture tests/fixtures/text_cases.json  # + committed subset

The big corpus is compared with the Rust port by the ignored test in src/preprocess/text/:
    CLIP_TEXT_CASES=/tmp/text_cases_big.json cargo test --release text_cases_corpus -- --ignored
"""

from __future__ import annotations

import argparse
import html.entities
import json
import os
import random
import sys

CONTEXT_LENGTH = 77

WORDS = (
    "a photo of the cat dog man woman child car tree house city street beach mountain river sky "
    "red blue green yellow black white small large old new happy sad running sitting playing "
    "with on in at under over near two three many some bird flower pizza guitar computer phone "
    "painting drawing sketch close-up portrait landscape night day sunset snow rain it's don't "
    "we're they've I'm you'll he'd"
).split()

ACCENTED = [
    "café", "naïve", "résumé", "señor", "Ærøskøbing", "Straße", "crème brûlée", "São Paulo",
    "Zürich", "Kraków", "Łódź", "İstanbul", "Ελληνικά", "Σίσυφος", "ΟΔΥΣΣΕΥΣ", "Русский язык",
    "Україна", "Беларусь", "日本語のテキスト", "中文字符", "한국어 텍스트", "עברית", "العربية",
    "हिन्दी", "ภาษาไทย", "Tiếng Việt", "Čeština", "Slovenčina", "Magyar ő ű", "Română ș ț",
    "Íslenska þ ð", "Dansk æ ø å", "Português ã õ ç", "Español ñ ¿¡", "Français œ æ ç",
    "Türkçe ğ ş ı", "Latviešu ā ē ī", "Lietuvių ą ę ų", "Eesti õ ä ö ü", "Polski ą ć ę ł ń",
    "“smart quotes”", "‘single’", "it’s", "en–dash", "em—dash", "ellipsis…", "bullet •",
    "€100", "£20", "¥500", "©2024", "®", "™", "°C", "½ cup", "±5", "µm", "×2", "÷", "§3", "¶",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "❤️", "✔", "★", "♪", "→", "∞", "≠", "√",
    "ﬁne ﬂower", "ＬＯＵＤ", "ｶﾀｶﾅ", "Å", "Ω", "Ñ", "à la mode", "voilà", "déjà vu", "Ã la",
    "naïveté", "coöperate", "façade", "jalapeño", "piñata", "über", "Mädchen", "Øresund",
]

BLOCKS = [
    (0x20, 0x7E), (0x00, 0x1F), (0x7F, 0x9F), (0xA0, 0xFF), (0x100, 0x17F), (0x180, 0x24F),
    (0x250, 0x2AF), (0x2B0, 0x2FF), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F),
    (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0x980, 0x9FF), (0xE00, 0xE7F), (0x10A0, 0x10FF),
    (0x1100, 0x11FF), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x1E00, 0x1EFF), (0x1F00, 0x1FFF),
    (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20CF), (0x20D0, 0x20FF), (0x2100, 0x214F),
    (0x2150, 0x218F), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x2460, 0x24FF), (0x2500, 0x257F),
    (0x2580, 0x25FF), (0x2600, 0x26FF), (0x2700, 0x27BF), (0x2C00, 0x2C7F), (0x2E80, 0x2EFF),
    (0x3000, 0x303F), (0x3040, 0x309F), (0x30A0, 0x30FF), (0x3130, 0x318F), (0x3200, 0x32FF),
    (0x3300, 0x33FF), (0x4E00, 0x9FFF), (0xA640, 0xA69F), (0xA720, 0xA7FF), (0xAC00, 0xD7A3),
    (0xE000, 0xF8FF), (0xF900, 0xFAFF), (0xFB00, 0xFB4F), (0xFB50, 0xFDFF), (0xFE00, 0xFE0F),
    (0xFE20, 0xFE2F), (0xFE30, 0xFE4F), (0xFE50, 0xFE6F), (0xFE70, 0xFEFF), (0xFF00, 0xFFEF),
    (0xFFF0, 0xFFFF), (0x10000, 0x1007F), (0x10400, 0x1044F), (0x11000, 0x1107F), (0x11100, 0x1114F),
    (0x13000, 0x1342F), (0x16800, 0x16A3F), (0x16D40, 0x16D7F), (0x1D100, 0x1D1FF), (0x1D400, 0x1D7FF),
    (0x1E900, 0x1E95F), (0x1EE00, 0x1EEFF), (0x1F000, 0x1F02F), (0x1F100, 0x1F1FF), (0x1F300, 0x1F5FF),
    (0x1F600, 0x1F64F), (0x1F900, 0x1F9FF), (0x1FB00, 0x1FBFF), (0x20000, 0x2A6DF), (0x2F800, 0x2FA1F),
    (0x30000, 0x3134F), (0xE0000, 0xE007F), (0xE0100, 0xE01EF), (0xF0000, 0xFFFFF), (0x10FF00, 0x10FFFF),
]

SPECIAL_CHARS = (
    "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2007\u200a\u200b\u200c\u200d\u200e\u2028\u2029"
    "\u202f\u205f\u3000\ufeff\u00ad\u034f\u180e\u2060\u206a\u206f\ufff9\ufffb\ufffc\ufffd\x1b\x00\x7f"
    "\u02bc\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u2026\u0345\u03a3\u017f\u212a\u0130\u0131"
    "&<>;#'\"_"
)

SPECIAL_TOKENS = [
    "<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>", "<START_OF_TEXT>",
    "<End_Of_Text>", "<\u017ftart_of_text>", "<start_of_text", "start_of_text>", "< start_of_text >",
    "<startoftext>", "<|start_of_text|>", "<end_of_text><start_of_text>",
]

SINGLE_BYTE = [
    "windows-1252", "sloppy-windows-1252", "latin-1", "macroman", "cp437", "windows-1250",
    "sloppy-windows-1251", "windows-1253", "windows-1254", "windows-1257", "iso-8859-2", "cp850",
    "iso-8859-15", "koi8-r", "mac-cyrillic", "cp1255",
]


def rand_block_text(rnd: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.08:
            out.append(rnd.choice(SPECIAL_CHARS))
        elif r < 0.15:
            c = rnd.randrange(0x110000)
            if not 0xD800 <= c < 0xE000:
                out.append(chr(c))
        elif r < 0.25:
            out.append(" ")
        else:
            lo, hi = rnd.choice(BLOCKS)
            out.append(chr(rnd.randint(lo, hi)))
    return "".join(out)


def caption(rnd: random.Random, n: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(n))


def mojibake(rnd: random.Random, s: str) -> str | None:
    enc = rnd.choice(SINGLE_BYTE)
    b = s.encode("utf-8")
    r = rnd.random()
    if r < 0.15:
        b = b.replace(b"\xa0", b" ")
    try:
        if r > 0.9:
            out = b.decode(enc, errors="replace")
        else:
            out = b.decode(enc)
    except UnicodeDecodeError:
        out = b.decode(enc, errors="replace")
    except LookupError:
        return None
    if rnd.random() < 0.2:
        # double mojibake
        try:
            out = out.encode("utf-8").decode(rnd.choice(["windows-1252", "latin-1", "sloppy-windows-1252"]))
        except UnicodeDecodeError:
            pass
    if rnd.random() < 0.1:
        out = out.replace("\ufffd", "?")
    return out


def cesu8(s: str) -> bytes:
    out = bytearray()
    for ch in s:
        c = ord(ch)
        if c >= 0x10000:
            c -= 0x10000
            hi, lo = 0xD800 + (c >> 10), 0xDC00 + (c & 0x3FF)
            for u in (hi, lo):
                out += bytes([0xE0 | (u >> 12), 0x80 | ((u >> 6) & 0x3F), 0x80 | (u & 0x3F)])
        elif c == 0:
            out += b"\xc0\x80"
        else:
            out += ch.encode("utf-8")
    return bytes(out)


def gen_texts(seed: int, scale: int) -> list[tuple[str, str]]:
    import ftfy  # noqa: F401  (registers the sloppy codecs)

    rnd = random.Random(seed)
    texts: list[tuple[str, str]] = []

    def add(kind: str, t: str | None) -> None:
        if t is not None:
            texts.append((kind, t))

    # plain captions and simple variations
    fixed = [
        "", " ", "a photo of a cat", "A Photo Of A Cat.", "  lots   of\tspace\n\nand lines  ",
        "it's a dog's life", "I'M HERE, YOU'LL SEE, WE'D GO, THEY'VE BEEN, YOU'RE RIGHT",
        "2024-01-01 12:34:56", "3.14159265358979", "hello,world!!!???", "e-mail@example.com",
        "https://example.com/a?b=c&d=e", "C++ and C#", "tabs\tand\x0bvertical\x0cfeeds",
    ]
    for t in fixed:
        add("plain", t)
    for _ in range(300 * scale):
        add("plain", caption(rnd, rnd.randint(1, 20)))

    # random unicode
    for _ in range(1500 * scale):
        add("unicode", rand_block_text(rnd, rnd.randint(1, 40)))
    for _ in range(300 * scale):
        add("unicode", "".join(chr(c) for c in (rnd.randrange(0x110000) for _ in range(rnd.randint(1, 12))) if not 0xD800 <= c < 0xE000))

    # combining marks / NFC stress, Hangul jamo, sigma
    marks = [chr(c) for c in list(range(0x300, 0x370)) + list(range(0x591, 0x5C8)) + [0x93C, 0x94D, 0x9BE, 0x9D7, 0xB3E, 0xB56, 0xB57, 0xBBE, 0xCD5, 0xCD6, 0xD3E, 0xD57, 0xDCF, 0xDDF, 0x102E, 0x1B35, 0x3099, 0x309A, 0x1D165, 0x1D16E, 0x0F71, 0x0F72, 0x0F74, 0x0F80]]
    bases = list("aeiouAEIOUnNcCsSzZyYwWhHkKgGrR") + ["α", "ω", "ε", "ι", "υ", "η", "ο", "Α", "Ω", "и", "е", "ক", "ো", "େ", "ஒ", "ಕ", "ക", "ක", "ဥ", "ᬅ", "か", "は", "𝅗", "ཀ", "\u0112", "\u00e8"]
    for _ in range(400 * scale):
        add("nfc", "".join(rnd.choice(bases) + "".join(rnd.choice(marks) for _ in range(rnd.randint(0, 4))) for _ in range(rnd.randint(1, 5))))
    for _ in range(150 * scale):
        add("hangul", "".join(chr(rnd.choice([rnd.randint(0x1100, 0x1112), rnd.randint(0x1161, 0x1175), rnd.randint(0x11A7, 0x11C2), rnd.randint(0xAC00, 0xD7A3), 0x1160, 0x115F, 0x3131])) for _ in range(rnd.randint(1, 8))))
    for _ in range(150 * scale):
        add("sigma", "".join(rnd.choice(["Σ", "σ", "ς", "A", "a", " ", ".", "'", "\u0345", "\u02b0", "\u00ad", "1", "Ω", "\u0301", "ʰ", "ᾼ", "ǅ"]) for _ in range(rnd.randint(1, 8))))

    # HTML entities: every name with and without ';', upper-cased, double-escaped, near '<'
    names = list(html.entities.html5)
    for name in names:
        base = name.rstrip(";")
        add("entity", f"x &{name} y")
        add("entity", f"&{base};{rnd.choice(['', 'a', '1', ';', ' ', 'ab;'])}")
        add("entity", f"&{base}{rnd.choice(['', 'a', 'xyz', '1', '=', '&amp;'])}")
        if rnd.random() < 0.3:
            add("entity", f"&{base.upper()}; &{base.upper()} &{base.capitalize()};")
        if rnd.random() < 0.2:
            add("entity", f"&amp;{name} and &amp;amp;{base};")
        if rnd.random() < 0.1:
            add("entity", f"<b>&{name}</b>")
    for _ in range(400 * scale):
        k = rnd.choice(names).rstrip(";")
        t = rnd.choice(["&", "&&", "&#", "&#x"]) + k + rnd.choice(["", ";", "zz", "ZZ;", " "]) + rnd.choice(["", " <", "\n<", " x"])
        add("entity", t)
    # numeric references
    special_nums = [0, 1, 8, 9, 10, 11, 12, 13, 14, 31, 32, 38, 59, 60, 65, 127, 128, 129, 130, 141, 143, 144, 150, 157, 159, 160, 173, 255, 256, 0x2019, 0xD7FF, 0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xE000, 0xFDD0, 0xFDEF, 0xFEFF, 0xFFFD, 0xFFFE, 0xFFFF, 0x10000, 0x1F600, 0x1FFFE, 0x10FFFF, 0x110000, 0xFFFFFFFF, 10**30]
    for _ in range(800 * scale):
        n = rnd.choice(special_nums) if rnd.random() < 0.6 else rnd.randrange(0x110000)
        form = rnd.randrange(6)
        if form == 0:
            t = f"&#{n};"
        elif form == 1:
            t = f"&#{n}"
        elif form == 2:
            t = f"&#x{n:x};"
        elif form == 3:
            t = f"&#X{n:X}"
        elif form == 4:
            t = f"&#{'0' * rnd.randint(1, 30)}{n};"
        else:
            t = f"&#x{n:x}{rnd.choice(['g;', 'z', ';;', 'ab;', ''])}"
        add("numeric", rnd.choice(["", "a", "word "]) + t + rnd.choice(["", "b", " end", "&amp;", "<"]))

    # mojibake
    pool = ACCENTED + [w for w in ACCENTED for _ in range(1)]
    for _ in range(2500 * scale):
        s = " ".join(rnd.choice(pool) for _ in range(rnd.randint(1, 4)))
        if rnd.random() < 0.3:
            s = caption(rnd, rnd.randint(1, 5)) + " " + s
        m = mojibake(rnd, s)
        if m is not None:
            if rnd.random() < 0.2:
                m = m + " " + rnd.choice(pool)  # mixed with correct text
            add("mojibake", m)
    for _ in range(600 * scale):
        s = rand_block_text(rnd, rnd.randint(1, 12))
        m = mojibake(rnd, s)
        if m is not None:
            add("mojibake-random", m)
    for _ in range(200 * scale):
        s = " ".join(rnd.choice(["😀", "𝒥", "𐍈", "🇺🇸", "a", "é", "\x00", "中"]) for _ in range(rnd.randint(1, 4)))
        b = cesu8(s)
        enc = rnd.choice(["latin-1", "sloppy-windows-1252", "windows-1252"])
        try:
            add("cesu8", b.decode(enc))
        except UnicodeDecodeError:
            add("cesu8", b.decode("latin-1"))
    for _ in range(200 * scale):
        # byte soup decoded as latin-1 / sloppy-1252: exercises the UTF-8 validity paths
        b = bytes(rnd.choice([rnd.randrange(256), 0xC0, 0x80, 0xED, 0xA0, 0xC3, 0xE2, 0x80, 0x9C, 0x20, 0x0A, 0x1A]) for _ in range(rnd.randint(1, 12)))
        add("bytes", b.decode(rnd.choice(["latin-1", "sloppy-windows-1252", "cp437", "macroman"])))

    # mojibake soup: characters that single-byte codecs produce for bytes 0x80-0xFF, mixed with
    # ASCII, spaces, NBSP, '?' and U+FFFD -- stresses the badness heuristic and the decoders
    soup = set()
    for enc in ["latin-1", "sloppy-windows-1252", "sloppy-windows-1251", "sloppy-windows-1250", "sloppy-windows-1253", "sloppy-windows-1254", "sloppy-windows-1257", "iso-8859-2", "macroman", "cp437"]:
        soup.update(bytes(range(0x80, 0x100)).decode(enc))
    soup = sorted(soup)
    filler = list("aeinorst AEZ.,?!'-") + ["\xa0", "\ufffd", "\x1a", " ", " "]
    for _ in range(1500 * scale):
        n = rnd.randint(1, 14)
        add("soup", "".join(rnd.choice(soup) if rnd.random() < 0.6 else rnd.choice(filler) for _ in range(n)))
    # UTF-8 byte patterns re-decoded one character at a time with mixed codecs
    for _ in range(800 * scale):
        s = rnd.choice(ACCENTED + ["à", "á", "Ã", " ", "—", "“", "”", "€", "…", "ß", "é", "ø", "ı", "Ω", "ж", "ש", "中", "😀"])
        b = s.encode("utf-8")
        out = []
        for byte in b:
            enc = rnd.choice(["latin-1", "sloppy-windows-1252", "sloppy-windows-1252", "macroman", "cp437", "sloppy-windows-1251", "iso-8859-2"])
            ch = bytes([byte]).decode(enc)
            if ch == "\xa0" and rnd.random() < 0.5:
                ch = " "
            out.append(ch)
        pre = rnd.choice(["", "a ", "the ", "x", "Ã ", "voil", "fa"])
        post = rnd.choice(["", " la", " quele", " s ", "s", " ", "  x", "?", "\ufffd"])
        add("mixed-codec", pre + "".join(out) + post)
    for _ in range(300 * scale):
        w = rnd.choice(["à", "á", "Ã ", "Â ", "â€ ", "Ã© ", "Ã  ", "Ã quele", "Ã quilo", "Ã s ", "Ã ", "Â", "Ã\xa0", "Ã¡", "Ã "])
        add("a0", rnd.choice(["", "x", "voil", " ", "la "]) + w + rnd.choice(["", "la", "s", " mode", "  ", "\xa0", "quela"]))

    # ftfy-specific: quotes, ligatures, width, controls, terminal escapes, line breaks
    for _ in range(400 * scale):
        parts = []
        for _ in range(rnd.randint(1, 6)):
            r = rnd.randrange(8)
            if r == 0:
                parts.append(rnd.choice(["\u201chi\u201d", "\u2018x\u2019", "\u02bcn", "\u201e\u201f", "\u201b"]))
            elif r == 1:
                parts.append(rnd.choice(["ﬀ", "ﬁ", "ﬂ", "ﬃ", "ﬄ", "ﬅ", "ﬆ", "Ĳ", "ĳ", "ŉ", "Ǳ", "ǲ", "ǳ", "Ǆ", "ǅ", "ǆ", "Ǉ", "ǈ", "ǉ", "Ǌ", "ǋ", "ǌ", "ﬓ"]))
            elif r == 2:
                parts.append("".join(chr(rnd.randint(0xFF01, 0xFFEF)) for _ in range(rnd.randint(1, 5))))
            elif r == 3:
                parts.append(rnd.choice(["\x1b[31m", "\x1b[0m", "\x1b[1;32;40m", "\x1b[", "\x1b[12", "\x1b[١٢m", "\x1b[;;H", "\x1b]0;t\x07", "\x1bX"]))
            elif r == 4:
                parts.append(rnd.choice(["\r\n", "\r", "\n", "\u2028", "\u2029", "\x85", "\r\r\n"]))
            elif r == 5:
                parts.append(chr(rnd.choice(list(range(0, 32)) + list(range(0x7F, 0xA0)) + [0x206A, 0x206F, 0xFEFF, 0xFFF9, 0xFFFA, 0xFFFB, 0xFFFC, 0x200B, 0x200D, 0x1D173])))
            elif r == 6:
                parts.append(rnd.choice(ACCENTED))
            else:
                parts.append(caption(rnd, rnd.randint(1, 3)))
        add("fixers", rnd.choice(["", " "]).join(parts))

    # literal special tokens
    for tok in SPECIAL_TOKENS:
        add("special", tok)
        add("special", f"a {tok} b")
        add("special", f"x{tok}y{tok}")
    for _ in range(200 * scale):
        add("special", " ".join(rnd.choice(SPECIAL_TOKENS + WORDS) for _ in range(rnd.randint(1, 8))))

    # multi-line texts (ftfy segments, '<' switches html unescaping off for later lines)
    for _ in range(200 * scale):
        lines = []
        for _ in range(rnd.randint(2, 5)):
            r = rnd.randrange(4)
            if r == 0:
                lines.append(caption(rnd, 3) + " &amp; &lt;b&gt; &eacute;")
            elif r == 1:
                lines.append("x < y &amp; z")
            elif r == 2:
                m = mojibake(rnd, rnd.choice(ACCENTED))
                lines.append(m or "")
            else:
                lines.append(rand_block_text(rnd, 8))
        add("multiline", rnd.choice(["\n", "\r\n", "\r"]).join(lines))

    # long texts
    for _ in range(150 * scale):
        n = rnd.choice([40, 74, 75, 76, 77, 100, 300])
        add("long", caption(rnd, n))
    for _ in range(50 * scale):
        add("long", rand_block_text(rnd, rnd.randint(100, 400)))
    add("long", "a" * 5000)
    add("long", "ab" * 3000)
    add("long", "1" * 200)
    add("long", "!" * 1000)
    add("long", "é" * 300)

    # dedupe, drop anything with a surrogate (not representable as Rust str / JSON)
    seen = set()
    out = []
    for kind, t in texts:
        if t in seen or any(0xD800 <= ord(c) < 0xE000 for c in t):
            continue
        seen.add(t)
        out.append((kind, t))
    return out


def make_cases(texts: list[tuple[str, str]]) -> list[dict]:
    import open_clip
    from open_clip.tokenizer import _clean_lower, _tokenizer

    cases = []
    errors = 0
    for kind, t in texts:
        try:
            cleaned = _clean_lower(t)
            ids = open_clip.tokenize([t], context_length=CONTEXT_LENGTH)[0].tolist()
            count = len(_tokenizer.encode(t)) + 2
        except Exception as e:  # noqa: BLE001
            errors += 1
            print(f"open_clip failed on {t!r}: {e!r}", file=sys.stderr)
            continue
        while ids and ids[-1] == 0:
            ids.pop()
        cases.append({"kind": kind, "text": t, "cleaned": cleaned, "ids": ids, "token_count": count})
    if errors:
        print(f"{errors} texts skipped (open_clip raised)", file=sys.stderr)
    return cases


def pick_fixture(cases: list[dict], budget: int, seed: int) -> list[dict]:
    """A stratified subset under `budget` bytes, favouring cases that cleaning changes."""
    rnd = random.Random(seed)
    by_kind: dict[str, list[dict]] = {}
    for c in cases:
        by_kind.setdefault(c["kind"], []).append(c)
    for lst in by_kind.values():
        rnd.shuffle(lst)
        lst.sort(key=lambda c: (c["cleaned"] == " ".join(c["text"].split()).lower(), len(c["text"]) > 200))
    chosen: list[dict] = []
    size = 2
    idx = {k: 0 for k in by_kind}
    while True:
        progressed = False
        for k in sorted(by_kind):
            lst = by_kind[k]
            if idx[k] >= len(lst):
                continue
            c = lst[idx[k]]
            idx[k] += 1
            n = len(json.dumps(c, ensure_ascii=False).encode()) + 2
            if size + n > budget:
                continue
            chosen.append(c)
            size += n
            progressed = True
        if not progressed:
            break
    return chosen


def gen_units(seed: int, n: int) -> dict:
    """Differential cases for the building blocks (used by an ignored Rust test in clean.rs)."""
    import html as pyhtml
    import unicodedata

    import ftfy
    from ftfy.badness import is_bad

    rnd = random.Random(seed)
    soup = set()
    for enc in ["latin-1", "sloppy-windows-1252", "sloppy-windows-1251", "sloppy-windows-1250", "macroman", "cp437"]:
        soup.update(bytes(range(0x80, 0x100)).decode(enc))
    soup = sorted(soup) + list("aeAZ .?\n") + ["\xa0", "\ufffd"]
    variants = []
    interesting = [0xC0, 0x80, 0xED, 0xA0, 0xAF, 0xB0, 0xBF, 0x0A, 0xE2, 0xC3, 0xF0, 0x9F, 0x41]
    for _ in range(n):
        b = bytes(rnd.choice(interesting) if rnd.random() < 0.8 else rnd.randrange(256) for _ in range(rnd.randint(0, 10)))
        try:
            out = b.decode("utf-8-variants")
        except UnicodeDecodeError:
            out = None
        if out is not None and any(0xD800 <= ord(c) < 0xE000 for c in out):
            continue
        variants.append([b.hex(), out])
    def piece() -> bytes:
        r = rnd.randrange(7)
        if r == 0:  # CESU-8 surrogate pair, possibly damaged or cut short
            b = bytes([0xED, rnd.randint(0xA0, 0xAF), rnd.randint(0x80, 0xBF), 0xED, rnd.randint(0xB0, 0xBF), rnd.randint(0x80, 0xBF)])
            if rnd.random() < 0.3:
                b = b[: rnd.randint(1, 6)]
            if rnd.random() < 0.2:
                b = b[:5] + b"\n"
            return b
        if r == 1:
            return rnd.choice([b"\xc0\x80", b"\xc0", b"\xc0\n", b"\xc0A"])
        if r == 2:
            return rnd.choice(["é", "中", "😀", "\n", "a", "\u0800", "\ud7ff", "\ue000"]).encode()
        if r == 3:
            return bytes([0xED, rnd.randint(0x80, 0xBF), rnd.randint(0x80, 0xBF)])
        if r == 4:
            return b"\xed" + rnd.choice([b"", b"\n", b"\xa0", b"\xa0\n"])
        return bytes([rnd.randrange(256)])

    for _ in range(n):
        b = b"".join(piece() for _ in range(rnd.randint(1, 4)))
        try:
            out = b.decode("utf-8-variants")
        except UnicodeDecodeError:
            out = None
        if out is not None and any(0xD800 <= ord(c) < 0xE000 for c in out):
            continue
        variants.append([b.hex(), out])
    bad, fixenc = [], []
    for _ in range(n):
        t = "".join(rnd.choice(soup) for _ in range(rnd.randint(1, 8)))
        bad.append([t, is_bad(t)])
        f = ftfy.fix_encoding(t)
        if not any(0xD800 <= ord(c) < 0xE000 for c in f):
            fixenc.append([t, f])
    unesc = []
    for _ in range(n):
        t = "".join(rnd.choice(["&", "#", "x", "X", ";", "1", "0", "9", "a", "f", "g", "amp", "lt", "not", "notin", "AMP", " ", "\t", "<", "é", "&amp", "12", "D800"]) for _ in range(rnd.randint(1, 8)))
        unesc.append([t, pyhtml.unescape(t)])
    norm = []
    pool = [chr(c) for c in range(0x300, 0x370)] + list("aeoAEOuUsSn") + [chr(c) for c in (0x1100, 0x1161, 0x11A8, 0xAC00, 0xAC01, 0x0B47, 0x0B3E, 0x0B57, 0x0DD9, 0x0DCF, 0x0DCA, 0x0DDF, 0x1B05, 0x1B35, 0x0F71, 0x0F72, 0x0F80, 0x0F81, 0x1D15E, 0x1D165, 0x1D16E, 0x2126, 0x212B, 0x0344, 0x0958, 0x093C, 0x05B4, 0x05D9, 0xFB1D, 0x0345, 0x03B9, 0x1FBE, 0x3099, 0x304B, 0x309B, 0x1E0A, 0x0323, 0x0307, 0x0112, 0x0300)]
    for _ in range(n):
        t = "".join(rnd.choice(pool) for _ in range(rnd.randint(1, 7)))
        norm.append([t, unicodedata.normalize("NFC", t), t.lower()])
    # every code point alone, and random strings over the characters NFC cares about
    relevant = set()
    for c in range(0x110000):
        if 0xD800 <= c < 0xE000:
            continue
        ch = chr(c)
        d = unicodedata.decomposition(ch)
        if unicodedata.combining(ch) or (d and not d.startswith("<")) or unicodedata.normalize("NFC", ch) != ch:
            relevant.add(c)
            if d and not d.startswith("<"):
                relevant.update(int(x, 16) for x in d.split())
        lo = ch.lower()
        nf = unicodedata.normalize("NFC", ch)
        if lo != ch or nf != ch:
            norm.append([ch, nf, lo])
    relevant = sorted(relevant)
    for _ in range(5 * n):
        t = "".join(chr(rnd.choice(relevant)) for _ in range(rnd.randint(1, 6)))
        norm.append([t, unicodedata.normalize("NFC", t), t.lower()])
    return {"utf8_variants": variants, "is_bad": bad, "fix_encoding": fixenc, "html_unescape": unesc, "nfc_lower": norm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the full corpus here")
    ap.add_argument("--fixture", help="write a small stratified subset here")
    ap.add_argument("--fixture-bytes", type=int, default=290_000)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--scale", type=int, default=1, help="multiply the number of random cases")
    ap.add_argument("--units", help="write building-block differential cases here (ftfy/html/NFC)")
    a = ap.parse_args()
    if a.units:
        with open(a.units, "w", encoding="utf-8") as f:
            json.dump(gen_units(a.seed, 20000 * a.scale), f, ensure_ascii=False)
        print(f"wrote {a.units}")
        if not a.out and not a.fixture:
            return
    if not a.out and not a.fixture:
        ap.error("give --out and/or --fixture")
    texts = gen_texts(a.seed, a.scale)
    cases = make_cases(texts)
    kinds: dict[str, int] = {}
    for c in cases:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    print(f"{len(cases)} cases: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(cases, f, ensure_ascii=False)
        print(f"wrote {a.out}")
    if a.fixture:
        sub = pick_fixture(cases, a.fixture_bytes, a.seed)
        os.makedirs(os.path.dirname(os.path.abspath(a.fixture)), exist_ok=True)
        with open(a.fixture, "w", encoding="utf-8") as f:
            f.write("[\n")
            f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in sub))
            f.write("\n]\n")
        print(f"wrote {a.fixture}: {len(sub)} cases, {os.path.getsize(a.fixture)} bytes")


if __name__ == "__main__":
    main()
