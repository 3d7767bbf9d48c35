//! Text cleaning (the ftfy + html port) and open_clip tokenization of any UTF-8 text.
#![no_main]

use std::sync::OnceLock;

use clip_serve::preprocess::text::{ClipTokenizer, clean_text};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/model/textual/tokenizer.json"
        );
        ClipTokenizer::from_file(path.as_ref(), 77).expect("the fixture tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = clean_text(text);
    let t = tokenizer().encode(text);
    assert_eq!(t.ids.len(), 77);
    assert_eq!(t.ids[0], 49406, "starts with the start-of-text token");
});
