//! Worst cases of the text path: the ftfy port's fix loop runs until nothing changes, and each pass
//! of `unescape_html` peels one level of `&amp;` nesting, so a 16 KiB text of nested entities is
//! the quadratic case. Prints, per adversarial 16 KiB text, the time of `clean_text` (median of N
//! runs) and of the whole tokenization. A program that measures, not a test.
//!
//! Usage: cargo bench --bench text_worst_case -- [--runs N] [--bytes 16384]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark program: a panic is a failed run"
)]

use std::time::Instant;

use clip_serve::preprocess::text::{ClipTokenizer, clean_text};

fn main() {
    let mut runs = 5usize;
    let mut bytes = 16 * 1024usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--bytes" => bytes = args.next().and_then(|v| v.parse().ok()).expect("--bytes N"),
            _ => {} // `--bench` from cargo
        }
    }
    let tokenizer =
        ClipTokenizer::from_file("tests/fixtures/model/textual/tokenizer.json".as_ref(), 77)
            .expect("tokenizer");
    let fill = |unit: &str| unit.repeat(bytes / unit.len().max(1));
    // One `&` followed by as many `amp;` as fit: one level peeled per pass.
    let nested = format!("&{}lt;", "amp;".repeat(bytes / 4 - 2));
    let cases: Vec<(&str, String)> = vec![
        ("plain words", fill("a photo of a cat ")),
        ("&amp; repeated", fill("&amp; ")),
        ("&amp;amp;... nested", nested),
        (
            "&#38;#38;... numeric nested",
            format!("&{}lt;", "#38;".repeat(bytes / 4 - 2)),
        ),
        ("mojibake (UTF-8 read as cp1252)", fill("Ã©")),
        ("fullwidth + ligatures", fill("ＡＢＣﬁﬂ")),
        (
            "curly quotes and dashes",
            fill("\u{201c}a\u{201d} \u{2014} "),
        ),
        (
            "control and escape chars",
            fill("\u{1b}[31mred\u{1b}[0m\u{7f}"),
        ),
    ];
    println!(
        "{:<34} {:>8} {:>14} {:>14}",
        "16 KiB text", "bytes", "clean_text", "tokenize"
    );
    for (name, text) in &cases {
        let mut clean_ms = Vec::new();
        let mut tok_ms = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            let cleaned = clean_text(text);
            clean_ms.push(started.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(cleaned);
            let started = Instant::now();
            std::hint::black_box(tokenizer.encode(text));
            tok_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        clean_ms.sort_by(f64::total_cmp);
        tok_ms.sort_by(f64::total_cmp);
        println!(
            "{name:<34} {:>8} {:>11.2} ms {:>11.2} ms",
            text.len(),
            clean_ms[runs / 2],
            tok_ms[runs / 2]
        );
    }
}
