//! CPython string semantics that open_clip's cleaning relies on: `str.isspace` (for `strip` and
//! `split`), `str.lower` (with the Final_Sigma rule) and `unicodedata.normalize("NFC")`, all from
//! tables generated out of the Python that runs open_clip (see `scripts/gen_text_tables.py`), so
//! that the Unicode version of Rust's standard library cannot make the port differ.

use std::borrow::Cow;

use super::tables_unicode::{
    CASE_IGNORABLE, CASED, CCC, COMPOSE, COMPOSE_SECOND, DECOMP, LOWER_MULTI, LOWER_SINGLE,
    NFC_MAYBE, PY_SPACE,
};

/// Whether `c` lies in one of the sorted, disjoint inclusive `ranges`.
pub(super) fn in_ranges(ranges: &[(u32, u32)], c: u32) -> bool {
    match ranges.binary_search_by(|&(lo, _)| lo.cmp(&c)) {
        Ok(_) => true,
        Err(0) => false,
        Err(i) => ranges.get(i - 1).is_some_and(|&(_, hi)| c <= hi),
    }
}

/// Python's `str.isspace()` for one character.
pub(super) fn is_py_space(c: char) -> bool {
    let u = c as u32;
    if u < 0x80 {
        return matches!(u, 0x09..=0x0D | 0x1C..=0x20);
    }
    in_ranges(PY_SPACE, u)
}

/// Python's `str.strip()` (no arguments).
pub(super) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `" ".join(s.split())`.
pub(super) fn py_split_join(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split(is_py_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

fn is_case_ignorable(c: char) -> bool {
    in_ranges(CASE_IGNORABLE, c as u32)
}

fn is_cased(c: char) -> bool {
    in_ranges(CASED, c as u32)
}

/// CPython's `handle_capital_sigma`: the lower case of U+03A3 at index `i` of `chars`.
fn lower_sigma(chars: &[char], i: usize) -> char {
    let before = chars[..i].iter().rev().find(|&&c| !is_case_ignorable(c));
    let mut final_sigma = before.is_some_and(|&c| is_cased(c));
    if final_sigma && i + 1 < chars.len() {
        let after = chars[i + 1..].iter().find(|&&c| !is_case_ignorable(c));
        final_sigma = after.is_none_or(|&c| !is_cased(c));
    }
    if final_sigma { '\u{3C2}' } else { '\u{3C3}' }
}

/// Python's `str.lower()`.
pub(super) fn py_lower(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        let u = c as u32;
        if u < 0x80 {
            out.push(c.to_ascii_lowercase());
        } else if u == 0x3A3 {
            out.push(lower_sigma(&chars, i));
        } else if let Ok(k) = LOWER_SINGLE.binary_search_by(|&(from, _)| from.cmp(&u)) {
            out.push(char::from_u32(LOWER_SINGLE[k].1).unwrap_or(c));
        } else if let Ok(k) = LOWER_MULTI.binary_search_by(|&(from, _)| from.cmp(&u)) {
            out.push_str(LOWER_MULTI[k].1);
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// NFC, following CPython's unicodedata.c (nfd_nfkd + nfc_nfkc).
// ---------------------------------------------------------------------------------------------

const S_BASE: u32 = 0xAC00;
const L_BASE: u32 = 0x1100;
const V_BASE: u32 = 0x1161;
const T_BASE: u32 = 0x11A7;
const L_COUNT: u32 = 19;
const V_COUNT: u32 = 21;
const T_COUNT: u32 = 28;
const N_COUNT: u32 = V_COUNT * T_COUNT;
const S_COUNT: u32 = L_COUNT * N_COUNT;

fn ccc(c: u32) -> u8 {
    if c < 0x300 {
        return 0;
    }
    match CCC.binary_search_by(|&(lo, _, _)| lo.cmp(&c)) {
        Ok(i) => CCC[i].2,
        Err(0) => 0,
        Err(i) => {
            let (_, hi, k) = CCC[i - 1];
            if c <= hi { k } else { 0 }
        }
    }
}

fn decompose_into(c: u32, out: &mut Vec<u32>) {
    if (S_BASE..S_BASE + S_COUNT).contains(&c) {
        let s = c - S_BASE;
        out.push(L_BASE + s / N_COUNT);
        out.push(V_BASE + (s % N_COUNT) / T_COUNT);
        let t = s % T_COUNT;
        if t != 0 {
            out.push(T_BASE + t);
        }
        return;
    }
    match DECOMP.binary_search_by(|&(from, _)| from.cmp(&c)) {
        Ok(k) => out.extend(DECOMP[k].1.chars().map(|d| d as u32)),
        Err(_) => out.push(c),
    }
}

fn is_first(c: u32) -> bool {
    COMPOSE.binary_search_by(|&(a, _, _)| a.cmp(&c)).is_ok()
}

fn is_last(c: u32) -> bool {
    in_ranges(COMPOSE_SECOND, c)
}

fn compose_pair(a: u32, b: u32) -> Option<u32> {
    COMPOSE
        .binary_search_by(|&(x, y, _)| (x, y).cmp(&(a, b)))
        .ok()
        .map(|k| COMPOSE[k].2)
}

/// `unicodedata.normalize("NFC", s)`.
pub(super) fn nfc(s: &str) -> Cow<'_, str> {
    if !s
        .chars()
        .any(|c| (c as u32) >= 0x300 && in_ranges(NFC_MAYBE, c as u32))
    {
        return Cow::Borrowed(s);
    }
    // NFD: full canonical decomposition, then canonical ordering (CPython's insertion sort).
    let mut d: Vec<u32> = Vec::with_capacity(s.len());
    for c in s.chars() {
        decompose_into(c as u32, &mut d);
    }
    // CPython sorts with an insertion sort, which is a stable sort by combining class within each
    // run of non-starters; a stable merge sort gives the same order without the quadratic worst
    // case on long runs of marks.
    let mut i = 0;
    while i < d.len() {
        if ccc(d[i]) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < d.len() && ccc(d[i]) != 0 {
            i += 1;
        }
        if i - start > 1 {
            d[start..i].sort_by_key(|&c| ccc(c));
        }
    }
    // Composition (nfc_nfkc).
    let len = d.len();
    let mut skipped = vec![false; len];
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < len {
        if skipped[i] {
            i += 1;
            continue;
        }
        let mut code = d[i];
        if (L_BASE..L_BASE + L_COUNT).contains(&code)
            && i + 1 < len
            && (V_BASE..V_BASE + V_COUNT).contains(&d[i + 1])
        {
            let l_index = code - L_BASE;
            let v_index = d[i + 1] - V_BASE;
            code = S_BASE + (l_index * V_COUNT + v_index) * T_COUNT;
            i += 2;
            if i < len && T_BASE < d[i] && d[i] < T_BASE + T_COUNT {
                code += d[i] - T_BASE;
                i += 1;
            }
            out.extend(char::from_u32(code));
            continue;
        }
        if !is_first(code) {
            out.extend(char::from_u32(code));
            i += 1;
            continue;
        }
        let mut i1 = i + 1;
        let mut comb = 0u8;
        while i1 < len {
            let code1 = d[i1];
            let comb1 = ccc(code1);
            if comb != 0 {
                if comb1 == 0 {
                    break;
                }
                if comb >= comb1 {
                    i1 += 1;
                    continue;
                }
            }
            let composed = if is_last(code1) {
                compose_pair(d[i], code1)
            } else {
                None
            };
            match composed {
                None => {
                    if comb1 == 0 {
                        break;
                    }
                    comb = comb1;
                    i1 += 1;
                }
                Some(c) => {
                    d[i] = c;
                    skipped[i1] = true;
                    i1 += 1;
                    if !is_first(d[i]) {
                        break;
                    }
                }
            }
        }
        out.extend(char::from_u32(d[i]));
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_strip_split() {
        assert!(is_py_space('\u{1c}'));
        assert!(is_py_space('\u{85}'));
        assert!(is_py_space('\u{3000}'));
        assert!(!is_py_space('\u{200b}'));
        assert_eq!(py_strip("\u{1f} a b\u{a0}"), "a b");
        assert_eq!(py_split_join("  a \u{1c}\t b\u{2028}c  "), "a b c");
        assert_eq!(py_split_join(""), "");
    }

    #[test]
    fn lower_matches_python() {
        assert_eq!(py_lower("HeLLo"), "hello");
        assert_eq!(py_lower("\u{130}"), "i\u{307}");
        assert_eq!(py_lower("ΟΔΟΣ"), "οδο\u{3c2}");
        assert_eq!(py_lower("Σ"), "σ");
        assert_eq!(py_lower("AΣB"), "aσb");
        assert_eq!(py_lower("AΣ.B"), "aσ.b"); // '.' is case-ignorable
        assert_eq!(py_lower("AΣ B"), "aς b");
    }

    #[test]
    fn nfc_basics() {
        assert_eq!(nfc("e\u{301}"), "\u{e9}");
        assert_eq!(nfc("\u{1100}\u{1161}\u{11a8}"), "\u{ac01}");
        assert_eq!(nfc("a\u{323}\u{302}"), "\u{1ead}");
        assert_eq!(nfc("a\u{302}\u{323}"), "\u{1ead}");
        assert_eq!(nfc("\u{212b}"), "\u{c5}");
        assert!(matches!(nfc("plain ascii"), Cow::Borrowed(_)));
    }
}
