//! Text cleaning and open_clip tokenization of any UTF-8 text (src/targets/text.rs).
#![no_main]

use std::sync::OnceLock;

use clip_serve_fuzz::{preprocess::text::ClipTokenizer, text};

fn tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| text::tokenizer(concat!(env!("CARGO_MANIFEST_DIR"), "/..").as_ref()))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| text::run(tokenizer(), data));
