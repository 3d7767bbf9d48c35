//! Python's `html.unescape` (CPython 3.11 `html/__init__.py`) and ftfy's `unescape_html`.

use std::borrow::Cow;

use super::pyunicode::in_ranges;
use super::tables_html::{FTFY_UPPER, HTML5, INVALID_CHARREFS, INVALID_CODEPOINTS};

fn html5_lookup(name: &str) -> Option<&'static str> {
    HTML5
        .binary_search_by(|&(n, _)| n.cmp(name))
        .ok()
        .map(|i| HTML5[i].1)
}

/// `_replace_charref` for a numeric reference with value `num` (saturated above 0x10FFFF).
fn numeric_charref(num: u64, out: &mut String) {
    if let Ok(small) = u32::try_from(num)
        && let Ok(i) = INVALID_CHARREFS.binary_search_by(|&(n, _)| n.cmp(&small))
    {
        out.push_str(INVALID_CHARREFS[i].1);
        return;
    }
    if (0xD800..=0xDFFF).contains(&num) || num > 0x10FFFF {
        out.push('\u{FFFD}');
        return;
    }
    // num <= 0x10FFFF and not a surrogate here
    let c = num as u32;
    if in_ranges(INVALID_CODEPOINTS, c) {
        return;
    }
    out.extend(char::from_u32(c));
}

fn parse_saturating(digits: &str, radix: u32) -> u64 {
    let mut v: u64 = 0;
    for d in digits.chars() {
        let x = d.to_digit(radix).unwrap_or(0) as u64;
        v = v.saturating_mul(radix as u64).saturating_add(x);
        if v > 0x11_0000 {
            // anything above 0x10FFFF behaves the same; keep the value bounded
            v = 0x11_0000;
        }
    }
    v
}

/// Tries the `_charref` regex at `amp` (the byte index of a `&`). On a match, appends the
/// replacement to `out` and returns the byte index just after the match.
fn charref_at(s: &str, amp: usize, out: &mut String) -> Option<usize> {
    let rest = &s[amp + 1..];
    let b = rest.as_bytes();
    if b.first() == Some(&b'#') {
        // '#[0-9]+;?'
        let n = b[1..].iter().take_while(|x| x.is_ascii_digit()).count();
        if n > 0 {
            let digits = &rest[1..1 + n];
            let mut end = 1 + n;
            if b.get(end) == Some(&b';') {
                end += 1;
            }
            numeric_charref(parse_saturating(digits, 10), out);
            return Some(amp + 1 + end);
        }
        // '#[xX][0-9a-fA-F]+;?'
        if matches!(b.get(1), Some(b'x' | b'X')) {
            let n = b[2..].iter().take_while(|x| x.is_ascii_hexdigit()).count();
            if n > 0 {
                let digits = &rest[2..2 + n];
                let mut end = 2 + n;
                if b.get(end) == Some(&b';') {
                    end += 1;
                }
                numeric_charref(parse_saturating(digits, 16), out);
                return Some(amp + 1 + end);
            }
        }
        return None;
    }
    // '[^\t\n\f <&#;]{1,32};?'
    let mut end = 0;
    let mut count = 0;
    for (i, c) in rest.char_indices() {
        if count == 32 || matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';') {
            break;
        }
        count += 1;
        end = i + c.len_utf8();
    }
    if count == 0 {
        return None;
    }
    if b.get(end) == Some(&b';') {
        end += 1;
    }
    let name = &rest[..end];
    if let Some(v) = html5_lookup(name) {
        out.push_str(v);
        return Some(amp + 1 + end);
    }
    // longest prefix of at least 2 characters (Python: range(len(s)-1, 1, -1))
    let bounds: Vec<usize> = name.char_indices().map(|(i, _)| i).collect();
    for x in (2..bounds.len()).rev() {
        let prefix = &name[..bounds[x]];
        if let Some(v) = html5_lookup(prefix) {
            out.push_str(v);
            out.push_str(&name[bounds[x]..]);
            return Some(amp + 1 + end);
        }
    }
    out.push('&');
    out.push_str(name);
    Some(amp + 1 + end)
}

/// Python's `html.unescape(s)`.
pub(super) fn html_unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut pos = 0;
    while let Some(off) = s[pos..].find('&') {
        let amp = pos + off;
        let mut repl = String::new();
        match charref_at(s, amp, &mut repl) {
            Some(end) => {
                out.push_str(&s[copied..amp]);
                out.push_str(&repl);
                copied = end;
                pos = end;
            }
            None => pos = amp + 1,
        }
    }
    out.push_str(&s[copied..]);
    Cow::Owned(out)
}

/// ftfy's `_unescape_fixup` for a match of `&#?[0-9A-Za-z]{1,24};`.
fn ftfy_fixup(entity: &str, out: &mut String) {
    let name = &entity[1..];
    if let Some(v) = html5_lookup(name) {
        // `entity` ends with ';', so this is one of the HTML5 names with a semicolon
        out.push_str(v);
    } else if let Ok(i) = FTFY_UPPER.binary_search_by(|&(n, _)| n.cmp(name)) {
        out.push_str(FTFY_UPPER[i].1);
    } else if entity.starts_with("&#") {
        let unescaped = html_unescape(entity);
        if unescaped.contains(';') {
            out.push_str(entity);
        } else {
            out.push_str(&unescaped);
        }
    } else {
        out.push_str(entity);
    }
}

/// ftfy's `fixes.unescape_html`: one pass. The server uses [`ftfy_unescape_html_fully`]; this is
/// the reference it is checked against.
#[cfg(test)]
pub(super) fn ftfy_unescape_html(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut pos = 0;
    while let Some(off) = s[pos..].find('&') {
        let amp = pos + off;
        let mut start = amp + 1;
        if b.get(start) == Some(&b'#') {
            start += 1;
        }
        let n = b[start..]
            .iter()
            .take_while(|x| x.is_ascii_alphanumeric())
            .count();
        if (1..=24).contains(&n) && b.get(start + n) == Some(&b';') {
            let end = start + n + 1;
            out.push_str(&s[copied..amp]);
            ftfy_fixup(&s[amp..end], &mut out);
            copied = end;
            pos = end;
        } else {
            pos = amp + 1;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(s);
    }
    out.push_str(&s[copied..]);
    Cow::Owned(out)
}

/// [`ftfy_unescape_html`] applied until nothing changes, in one left-to-right pass (linear time).
///
/// ftfy's fix loop runs `unescape_html` once per pass until the text is stable, so `&amp;amp;lt;`
/// takes one pass per level: 16 KiB of nesting is ~4,000 passes of every fixer (quadratic, ~150 ms).
/// Entity replacement is a terminating rewrite system without overlapping redexes (an entity's
/// body holds no `&`, every replacement is shorter than its entity), so every order of replacing
/// reaches the same text; this one reduces each entity as soon as its `;` arrives, including the
/// entities that earlier replacements complete. The fix loop's result is unchanged.
pub(super) fn ftfy_unescape_html_fully(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    for ch in s.chars() {
        out.push(ch);
        if ch == ';' {
            changed |= reduce_entity_suffix(&mut out);
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(s)
    }
}

/// Replaces the entity `out` ends with (it ends with `;`), again while replacements end with
/// `;`. Returns whether anything changed.
fn reduce_entity_suffix(out: &mut String) -> bool {
    // `&` + `#` + 24 alphanumerics + `;`.
    const LONGEST: usize = 27;
    let mut changed = false;
    loop {
        let b = out.as_bytes();
        let end = b.len();
        if b.last() != Some(&b';') {
            return changed;
        }
        let from = end.saturating_sub(LONGEST);
        let Some(amp) = b[from..end]
            .iter()
            .rposition(|&c| c == b'&')
            .map(|i| from + i)
        else {
            return changed;
        };
        let mut start = amp + 1;
        if b.get(start) == Some(&b'#') {
            start += 1;
        }
        let n = end - 1 - start;
        if !(1..=24).contains(&n) || !b[start..end - 1].iter().all(u8::is_ascii_alphanumeric) {
            return changed;
        }
        let mut replacement = String::new();
        ftfy_fixup(&out[amp..], &mut replacement);
        if replacement == out[amp..] {
            return changed;
        }
        out.truncate(amp);
        out.push_str(&replacement);
        changed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ftfy's way: one `unescape_html` pass at a time, until nothing changes.
    fn repeated(s: &str) -> String {
        let mut text = s.to_string();
        loop {
            let next = ftfy_unescape_html(&text).into_owned();
            if next == text {
                return text;
            }
            text = next;
        }
    }

    #[test]
    fn one_pass_to_the_fixpoint_equals_repeated_passes() {
        let cases = [
            "a &amp; b",
            "&amp;amp;amp;lt;",
            "&#38;#38;lt;",
            "&&#97;mp;",
            "&x&#59;",
            "&amp;semi;",
            "P&amp;EACUTE;REZ &amp;ntilde;",
            "&lt;tag&gt; &amp;nbsp; this&not that &#x26;#x26;gt;",
            "&&&amp;;;&amp;&amp;;&;",
            "&#59;&amp;#59;",
            "&amp;#x2019;&#x26;amp;",
            "no entities at all",
        ];
        for case in cases {
            assert_eq!(ftfy_unescape_html_fully(case), repeated(case), "{case:?}");
        }
        // Every combination of a few pieces, so orders nobody thought of are covered too.
        let pieces = ["&", "amp;", "#38;", "lt;", "a", ";", "#", "x26;", "&amp;"];
        let mut combos = vec![String::new()];
        for _ in 0..4 {
            combos = combos
                .iter()
                .flat_map(|c| pieces.iter().map(move |p| format!("{c}{p}")))
                .collect();
            for case in &combos {
                assert_eq!(ftfy_unescape_html_fully(case), repeated(case), "{case:?}");
            }
        }
        let nested = format!("&{}lt;", "amp;".repeat(4000));
        assert_eq!(ftfy_unescape_html_fully(&nested), "<");
    }

    #[test]
    fn python_html_unescape() {
        assert_eq!(html_unescape("a &amp; b"), "a & b");
        assert_eq!(html_unescape("&amp"), "&");
        assert_eq!(html_unescape("&ampxyz"), "&xyz");
        assert_eq!(html_unescape("&notit;"), "¬it;");
        assert_eq!(html_unescape("&#65;&#x42;&#X43"), "ABC");
        assert_eq!(
            html_unescape("&#0;&#x80;&#xD800;&#1114112;"),
            "\u{fffd}€\u{fffd}\u{fffd}"
        );
        assert_eq!(html_unescape("&#1;&#xb;x"), "x");
        assert_eq!(html_unescape("&#99999999999999999999999;"), "\u{fffd}");
        assert_eq!(html_unescape("&#;&#x;&;&unknown;"), "&#;&#x;&;&unknown;");
        assert_eq!(html_unescape("&lt;&gt"), "<>");
    }

    #[test]
    fn ftfy_unescape() {
        assert_eq!(ftfy_unescape_html("&lt;tag&gt;"), "<tag>");
        assert_eq!(ftfy_unescape_html("P&EACUTE;REZ"), "PÉREZ");
        assert_eq!(ftfy_unescape_html("BUNDESSTRA&SZLIG;E"), "BUNDESSTRASSE");
        assert_eq!(
            ftfy_unescape_html("&ntilde; &Ntilde; &NTILDE; &nTILDE;"),
            "ñ Ñ Ñ &nTILDE;"
        );
        assert_eq!(ftfy_unescape_html("this&not that"), "this&not that");
        assert_eq!(ftfy_unescape_html("&#59;"), "&#59;");
        assert_eq!(ftfy_unescape_html("&#x2019;"), "\u{2019}");
    }
}
