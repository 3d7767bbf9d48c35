//! open_clip's text cleaning (`open_clip.tokenizer._clean_lower`), ported exactly:
//!
//! ```python
//! def basic_clean(text):
//!     text = ftfy.fix_text(text)
//!     text = html.unescape(html.unescape(text))
//!     return text.strip()
//!
//! def whitespace_clean(text):
//!     text = " ".join(text.split())
//!     return text.strip()
//!
//! clean = whitespace_clean(basic_clean(text)).lower()
//! ```
//!
//! `ftfy.fix_text` (ftfy 6.3, default `TextFixerConfig`) is ported step by step below; the data it
//! needs (codecs, heuristics, entity tables) is generated from the real Python sources by
//! `scripts/gen_text_tables.py`.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;
use regex::bytes::{NoExpand, Regex as BytesRegex};

use super::html::{ftfy_unescape_html_fully, html_unescape};
use super::pyunicode::{in_ranges, nfc, py_lower, py_split_join, py_strip};
use super::tables_ftfy::{
    ALTERED_UTF8_PATTERN, BADNESS_PATTERN, CHARMAP_DECODE, CHARMAP_NAMES, CONTROL_CHARS, LIGATURES,
    LOSSY_UTF8_PATTERN, PY_DECIMAL, SLOPPY_1252_C1, UTF8_CONTINUATION, UTF8_CONTINUATION_STRICT,
    UTF8_FIRST_OF_2, UTF8_FIRST_OF_3, UTF8_FIRST_OF_4, WIDTH_MAP, WINDOWS_1252_STRICT,
};

/// ftfy's `TextFixerConfig.max_decode_length`.
const MAX_DECODE_LENGTH: usize = 1_000_000;

/// open_clip's `_clean_lower`: `whitespace_clean(basic_clean(text)).lower()`.
pub fn clean_text(text: &str) -> String {
    let fixed = fix_text(text);
    let once = html_unescape(&fixed);
    let twice = html_unescape(&once);
    let stripped = py_strip(&twice);
    let joined = py_split_join(stripped);
    py_lower(&joined)
}

/// Replaces `text` by `f(text)` when `f` produced something new.
fn apply(text: &mut String, f: impl FnOnce(&str) -> Cow<'_, str>) {
    if let Cow::Owned(s) = f(text) {
        *text = s;
    }
}

/// `ftfy.fix_text(text)` with the default configuration.
pub(super) fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true; // config.unescape_html == "auto", switched off for good by a '<'
    let mut pos = 0;
    while pos < text.len() {
        let mut end = text[pos..].find('\n').map_or(text.len(), |i| pos + i + 1);
        if end - pos > MAX_DECODE_LENGTH {
            // the limit counts code points
            if let Some((i, _)) = text[pos..end].char_indices().nth(MAX_DECODE_LENGTH) {
                end = pos + i;
            }
        }
        let segment = &text[pos..end];
        if unescape && segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
        pos = end;
    }
    out
}

/// `ftfy.fix_and_explain(segment, config)` without the explanation.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_owned();
    loop {
        let orig = text.clone();
        if unescape {
            // To its own fixpoint at once (the loop would take one pass per level of `&amp;`
            // nesting; the result is the same).
            apply(&mut text, ftfy_unescape_html_fully);
        }
        text = fix_encoding(&text);
        apply(&mut text, fix_c1_controls);
        apply(&mut text, fix_latin_ligatures);
        apply(&mut text, fix_character_width);
        apply(&mut text, uncurl_quotes);
        apply(&mut text, fix_line_breaks);
        // fix_surrogates: a Rust string cannot hold surrogates, and no step above creates one
        // (html.unescape maps them to U+FFFD, the UTF-8 decoders never produce them).
        apply(&mut text, remove_terminal_escapes);
        apply(&mut text, remove_control_chars);
        apply(&mut text, nfc);
        if text == orig {
            return text;
        }
    }
}

/// `ftfy.fix_encoding(text)`.
fn fix_encoding(text: &str) -> String {
    let mut text = text.to_owned();
    loop {
        match fix_encoding_one_step(&text) {
            Cow::Borrowed(_) => return text,
            Cow::Owned(fixed) => {
                if fixed == text {
                    return text;
                }
                text = fixed;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// codecs
// ---------------------------------------------------------------------------------------------

struct Charmap {
    sloppy: bool,
    macroman: bool,
    latin1: bool,
    ascii: [Option<u8>; 128],
    high: Vec<(u32, u8)>,
}

impl Charmap {
    fn encode(&self, text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            let u = c as u32;
            let b = if u < 128 {
                self.ascii[u as usize]?
            } else {
                let i = self.high.binary_search_by(|&(x, _)| x.cmp(&u)).ok()?;
                self.high[i].1
            };
            out.push(b);
        }
        Some(out)
    }
}

fn charmaps() -> &'static [Charmap] {
    static MAPS: OnceLock<Vec<Charmap>> = OnceLock::new();
    MAPS.get_or_init(|| {
        CHARMAP_NAMES
            .iter()
            .zip(CHARMAP_DECODE.iter())
            .map(|(name, table)| {
                let mut ascii = [None; 128];
                let mut high = Vec::new();
                for (b, &c) in table.iter().enumerate() {
                    let byte = b as u8;
                    if c < 128 {
                        ascii[c as usize] = Some(byte);
                    } else {
                        high.push((u32::from(c), byte));
                    }
                }
                high.sort_unstable();
                Charmap {
                    sloppy: name.starts_with("sloppy"),
                    macroman: *name == "macroman",
                    latin1: *name == "latin-1",
                    ascii,
                    high,
                }
            })
            .collect()
    })
}

#[allow(
    clippy::expect_used,
    reason = "a generated constant pattern, compiled by the tests"
)]
fn altered_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    RE.get_or_init(|| BytesRegex::new(ALTERED_UTF8_PATTERN).expect("generated ALTERED_UTF8 regex"))
}

#[allow(
    clippy::expect_used,
    reason = "a generated constant pattern, compiled by the tests"
)]
fn lossy_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    RE.get_or_init(|| BytesRegex::new(LOSSY_UTF8_PATTERN).expect("generated LOSSY_UTF8 regex"))
}

#[allow(
    clippy::expect_used,
    reason = "a generated constant pattern, compiled by the tests"
)]
fn badness_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::RegexBuilder::new(BADNESS_PATTERN)
            .size_limit(64 << 20)
            .dfa_size_limit(16 << 20)
            .build()
            .expect("generated BADNESS regex")
    })
}

/// Builds the lazily initialised tables and regexes (a few milliseconds), so that the first
/// text does not pay for it. The regexes are generated constants covered by the tests.
pub(super) fn warm_up() {
    let _ = charmaps();
    let _ = altered_utf8_re();
    let _ = lossy_utf8_re();
    let _ = badness_re();
}

/// `ftfy.badness.is_bad`.
fn is_bad(text: &str) -> bool {
    badness_re().is_match(text)
}

/// `ftfy.fixes.restore_byte_a0`.
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    // A_GRAVE_WORD_RE = b"\xc3 (?! |quele|quela|quilo|s )" -> b"\xc3\xa0 "
    let mut tmp = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0xC3 && bytes.get(i + 1) == Some(&b' ') {
            let rest = &bytes[i + 2..];
            let blocked = [&b" "[..], b"quele", b"quela", b"quilo", b"s "]
                .iter()
                .any(|p| rest.starts_with(p));
            if !blocked {
                tmp.extend_from_slice(b"\xc3\xa0 ");
                i += 2;
                continue;
            }
        }
        tmp.push(bytes[i]);
        i += 1;
    }
    altered_utf8_re()
        .replace_all(&tmp, |caps: &regex::bytes::Captures<'_>| {
            caps[0]
                .iter()
                .map(|&b| if b == b' ' { 0xA0 } else { b })
                .collect::<Vec<u8>>()
        })
        .into_owned()
}

/// Python's `$` in a bytes pattern without MULTILINE: end, or just before a final newline.
fn dollar(input: &[u8], p: usize) -> bool {
    p == input.len() || (p + 1 == input.len() && input[p] == b'\n')
}

fn in_byte_range(input: &[u8], p: usize, lo: u8, hi: u8) -> bool {
    input.get(p).is_some_and(|&b| (lo..=hi).contains(&b))
}

/// First position where ftfy's `SPECIAL_BYTES_RE` (utf8_variants.py) matches.
fn special_bytes_search(input: &[u8]) -> Option<usize> {
    (0..input.len()).find(|&k| match input[k] {
        // NULL_EXPR: \xc0(\x80|$)
        0xC0 => input.get(k + 1) == Some(&0x80) || dollar(input, k + 1),
        // SURROGATE_EXPR: \xed([\xa0-\xbf]|$)([\x80-\xbf]|$); CESU8_EXPR implies it
        0xED => {
            let p = if in_byte_range(input, k + 1, 0xA0, 0xBF) {
                k + 2
            } else if dollar(input, k + 1) {
                k + 1
            } else {
                return false;
            };
            in_byte_range(input, p, 0x80, 0xBF) || dollar(input, p)
        }
        _ => false,
    })
}

/// `bytes.decode("utf-8-variants")` (ftfy's CESU-8 / Java-null tolerant UTF-8), strict errors.
fn decode_utf8_variants(input: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(input.len());
    let mut pos = 0;
    while pos < input.len() {
        let rest = &input[pos..];
        match special_bytes_search(rest) {
            None => {
                out.push_str(std::str::from_utf8(rest).ok()?);
                pos = input.len();
            }
            Some(k) if k > 0 => {
                out.push_str(std::str::from_utf8(&rest[..k]).ok()?);
                pos += k;
            }
            Some(_) => {
                if rest[0] == 0xC0 {
                    if rest.len() > 1 {
                        out.push('\0');
                        pos += 2;
                    } else {
                        return None;
                    }
                } else if rest.len() < 6 {
                    out.push_str(std::str::from_utf8(rest).ok()?);
                    pos = input.len();
                } else if in_byte_range(rest, 1, 0xA0, 0xAF)
                    && in_byte_range(rest, 2, 0x80, 0xBF)
                    && rest[3] == 0xED
                    && in_byte_range(rest, 4, 0xB0, 0xBF)
                    && (in_byte_range(rest, 5, 0x80, 0xBF) || dollar(rest, 5))
                {
                    let cp = ((u32::from(rest[1]) & 0x0F) << 16)
                        + ((u32::from(rest[2]) & 0x3F) << 10)
                        + ((u32::from(rest[4]) & 0x0F) << 6)
                        + (u32::from(rest[5]) & 0x3F)
                        + 0x10000;
                    out.push(char::from_u32(cp)?);
                    pos += 6;
                } else {
                    // the real decoder rejects the three bytes (an encoded surrogate)
                    std::str::from_utf8(&rest[..3]).ok()?;
                    return None;
                }
            }
        }
    }
    Some(out)
}

fn utf8_detector_match(chars: &[char], start: usize) -> usize {
    let cont = |i: usize| {
        chars
            .get(i)
            .is_some_and(|&c| in_ranges(UTF8_CONTINUATION, c as u32))
    };
    let mut p = start;
    while let Some(&c) = chars.get(p) {
        let u = c as u32;
        if in_ranges(UTF8_FIRST_OF_2, u) && cont(p + 1) {
            p += 2;
        } else if in_ranges(UTF8_FIRST_OF_3, u) && cont(p + 1) && cont(p + 2) {
            p += 3;
        } else if in_ranges(UTF8_FIRST_OF_4, u) && cont(p + 1) && cont(p + 2) && cont(p + 3) {
            p += 4;
        } else {
            break;
        }
    }
    p
}

/// `ftfy.fixes.decode_inconsistent_utf8`.
fn decode_inconsistent_utf8(text: &str) -> Cow<'_, str> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut changed = false;
    let mut copied = 0; // char index
    let mut pos = 0;
    while pos < chars.len() {
        let lookbehind_ok = pos == 0 || !in_ranges(UTF8_CONTINUATION_STRICT, chars[pos - 1] as u32);
        let end = if lookbehind_ok {
            utf8_detector_match(&chars, pos)
        } else {
            pos
        };
        if end == pos {
            pos += 1;
            continue;
        }
        let substr: String = chars[pos..end].iter().collect();
        if end - pos < chars.len() && is_bad(&substr) {
            let fixed = fix_encoding(&substr);
            if fixed != substr {
                out.extend(&chars[copied..pos]);
                out.push_str(&fixed);
                copied = end;
                changed = true;
            }
        }
        pos = end;
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    out.extend(&chars[copied..]);
    Cow::Owned(out)
}

/// One step of ftfy's `fix_encoding_and_explain` (`_fix_encoding_one_step_and_explain`).
fn fix_encoding_one_step(text: &str) -> Cow<'_, str> {
    if text.is_empty() || text.is_ascii() || !is_bad(text) {
        return Cow::Borrowed(text);
    }
    let mut latin1_possible = false;
    for map in charmaps() {
        let Some(mut bytes) = map.encode(text) else {
            continue;
        };
        if map.latin1 {
            latin1_possible = true;
        }
        if !map.macroman && altered_utf8_re().is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if map.sloppy {
            bytes = lossy_utf8_re()
                .replace_all(&bytes, NoExpand("\u{FFFD}".as_bytes()))
                .into_owned();
        }
        let decoded = if bytes.contains(&0xED) || bytes.contains(&0xC0) {
            decode_utf8_variants(&bytes)
        } else {
            String::from_utf8(bytes).ok()
        };
        if let Some(fixed) = decoded {
            return Cow::Owned(fixed);
        }
    }
    if let Cow::Owned(fixed) = decode_inconsistent_utf8(text)
        && fixed != text
    {
        return Cow::Owned(fixed);
    }
    // ftfy checks `"windows-1252" in possible_1byte_encodings`, which never holds (the list
    // names "sloppy-windows-1252"), so Latin-1 text is always tried as strict Windows-1252.
    if latin1_possible {
        let fixed: Option<String> = text
            .chars()
            .map(|c| {
                let b = c as usize;
                let u = WINDOWS_1252_STRICT.get(b).copied().unwrap_or(0xFFFF);
                if u == 0xFFFF {
                    None
                } else {
                    char::from_u32(u32::from(u))
                }
            })
            .collect();
        if let Some(fixed) = fixed
            && fixed != text
        {
            return Cow::Owned(fixed);
        }
    }
    if text.chars().any(is_c1) {
        return fix_c1_controls(text);
    }
    Cow::Borrowed(text)
}

// ---------------------------------------------------------------------------------------------
// single-character fixers
// ---------------------------------------------------------------------------------------------

/// Maps each character through `f` (None = keep), allocating only when something changes.
fn translate<'a>(text: &'a str, f: impl Fn(char) -> Option<&'static str>) -> Cow<'a, str> {
    let Some(first) = text.char_indices().find(|&(_, c)| f(c).is_some()) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first.0]);
    for c in text[first.0..].chars() {
        match f(c) {
            Some(r) => out.push_str(r),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn is_c1(c: char) -> bool {
    ('\u{80}'..='\u{9f}').contains(&c)
}

/// `ftfy.fixes.fix_c1_controls`: C1 controls decoded as sloppy Windows-1252.
fn fix_c1_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_c1) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if is_c1(c) {
                    let u = SLOPPY_1252_C1[(c as usize) - 0x80];
                    char::from_u32(u32::from(u)).unwrap_or(c)
                } else {
                    c
                }
            })
            .collect(),
    )
}

fn table_lookup(table: &'static [(u32, &'static str)], c: char) -> Option<&'static str> {
    let u = c as u32;
    table
        .binary_search_by(|&(k, _)| k.cmp(&u))
        .ok()
        .map(|i| table[i].1)
}

/// `ftfy.fixes.fix_latin_ligatures`.
fn fix_latin_ligatures(text: &str) -> Cow<'_, str> {
    translate(text, |c| {
        if ('\u{132}'..='\u{fb06}').contains(&c) {
            table_lookup(LIGATURES, c)
        } else {
            None
        }
    })
}

/// `ftfy.fixes.fix_character_width`.
fn fix_character_width(text: &str) -> Cow<'_, str> {
    translate(text, |c| {
        if c == '\u{3000}' || ('\u{ff01}'..='\u{ffef}').contains(&c) {
            table_lookup(WIDTH_MAP, c)
        } else {
            None
        }
    })
}

/// `ftfy.fixes.uncurl_quotes`.
fn uncurl_quotes(text: &str) -> Cow<'_, str> {
    translate(text, |c| match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => Some("'"),
        '\u{201c}'..='\u{201f}' => Some("\""),
        _ => None,
    })
}

/// `ftfy.fixes.fix_line_breaks`.
fn fix_line_breaks(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| matches!(c, '\r' | '\u{2028}' | '\u{2029}' | '\u{85}'))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Length in bytes of an `ANSI_RE` match (`\033\[((?:\d|;)*)([a-zA-Z])`) at the start of `s`.
fn ansi_match(s: &str) -> Option<usize> {
    let rest = s.strip_prefix("\u{1b}[")?;
    let mut len = 2;
    for c in rest.chars() {
        if c == ';' || in_ranges(PY_DECIMAL, c as u32) {
            len += c.len_utf8();
        } else if c.is_ascii_alphabetic() {
            return Some(len + 1);
        } else {
            return None;
        }
    }
    None
}

/// `ftfy.fixes.remove_terminal_escapes`.
fn remove_terminal_escapes(text: &str) -> Cow<'_, str> {
    if !text.contains("\u{1b}[") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut pos = 0;
    while let Some(off) = text[pos..].find('\u{1b}') {
        let at = pos + off;
        match ansi_match(&text[at..]) {
            Some(len) => {
                out.push_str(&text[copied..at]);
                copied = at + len;
                pos = at + len;
            }
            None => pos = at + 1,
        }
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// `ftfy.fixes.remove_control_chars`.
fn remove_control_chars(text: &str) -> Cow<'_, str> {
    let is_control = |c: char| in_ranges(CONTROL_CHARS, c as u32);
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().filter(|&c| !is_control(c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ftfy_docstring_examples() {
        assert_eq!(fix_text("âœ” No problems"), "✔ No problems");
        assert_eq!(fix_text("&macr;\\_(ã\u{83}\u{84})_/&macr;"), "¯\\_(ツ)_/¯");
        assert_eq!(
            fix_text("Broken text&hellip; it&#x2019;s ﬂubberiﬁc!"),
            "Broken text\u{2026} it's flubberific!"
        );
        assert_eq!(fix_text("ＬＯＵＤ　ＮＯＩＳＥＳ"), "LOUD NOISES");
        assert_eq!(fix_text("sÃ³"), "só");
        assert_eq!(fix_text("voilÃ le travail"), "voilà le travail");
        assert_eq!(fix_text("schÃ¶n"), "schön");
        assert_eq!(fix_text("\u{1b}[36;44mI'm blue\u{1b}[0m"), "I'm blue");
        assert_eq!(fix_text("a\r\nb\rc\u{2028}d"), "a\nb\nc\nd");
    }

    #[test]
    fn clean_text_examples() {
        assert_eq!(clean_text("  A Photo\tof   a CAT  "), "a photo of a cat");
        assert_eq!(clean_text("Tom &amp;amp; Jerry"), "tom & jerry");
        assert_eq!(clean_text("\u{201c}Hello\u{201d}"), "\"hello\"");
        assert_eq!(clean_text(""), "");
    }

    /// Building blocks against Python:
    /// `python scripts/gen_text_cases.py --units /tmp/units.json` then
    /// `CLIP_FTFY_UNITS=/tmp/units.json cargo test --release building_blocks -- --ignored`.
    #[test]
    #[ignore = "needs CLIP_FTFY_UNITS from scripts/gen_text_cases.py --units"]
    fn building_blocks_against_python() {
        use serde_json::Value;
        let path = std::env::var("CLIP_FTFY_UNITS").expect("CLIP_FTFY_UNITS");
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
        let mut bad = 0;
        let s = |v: &Value| v.as_str().expect("string").to_string();
        for case in doc["utf8_variants"].as_array().expect("array") {
            let hex = s(&case[0]);
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            let want = case[1].as_str().map(str::to_string);
            if decode_utf8_variants(&bytes) != want {
                bad += 1;
                eprintln!(
                    "utf8_variants {hex}: got {:?} want {want:?}",
                    decode_utf8_variants(&bytes)
                );
            }
        }
        for case in doc["is_bad"].as_array().expect("array") {
            if is_bad(&s(&case[0])) != case[1].as_bool().expect("bool") {
                bad += 1;
                eprintln!("is_bad {:?}", case[0]);
            }
        }
        for case in doc["fix_encoding"].as_array().expect("array") {
            let got = fix_encoding(&s(&case[0]));
            if got != s(&case[1]) {
                bad += 1;
                eprintln!("fix_encoding {:?}: got {got:?} want {:?}", case[0], case[1]);
            }
        }
        for case in doc["html_unescape"].as_array().expect("array") {
            let got = html_unescape(&s(&case[0])).into_owned();
            if got != s(&case[1]) {
                bad += 1;
                eprintln!(
                    "html_unescape {:?}: got {got:?} want {:?}",
                    case[0], case[1]
                );
            }
        }
        for case in doc["nfc_lower"].as_array().expect("array") {
            let t = s(&case[0]);
            if nfc(&t) != s(&case[1]) || py_lower(&t) != s(&case[2]) {
                bad += 1;
                eprintln!("nfc/lower {t:?}: got {:?} / {:?}", nfc(&t), py_lower(&t));
            }
        }
        assert_eq!(bad, 0, "{bad} building-block cases differ from Python");
    }

    #[test]
    fn utf8_variants() {
        assert_eq!(
            decode_utf8_variants(b"null \xc0\x80!").as_deref(),
            Some("null \0!")
        );
        assert_eq!(
            decode_utf8_variants(b"\xed\xa0\xbd\xed\xb8\x80").as_deref(),
            Some("\u{1f600}")
        );
        assert_eq!(decode_utf8_variants(b"\xed\xa0\x80x"), None);
    }
}
