//! Text cleaning (the ftfy + html port) and open_clip tokenization of any UTF-8 text.
//!
//! `super::preprocess` is src/preprocess wherever this body is compiled (the fuzz crate, or the seeds
//! test that imports `clip_serve::preprocess`).

use std::path::Path;

use super::preprocess::text::{ClipTokenizer, clean_text};

/// The fixture tokenizer (tests/fixtures/model/textual/tokenizer.json) under the repository root.
pub fn tokenizer(repo_root: &Path) -> ClipTokenizer {
    let path = repo_root.join("tests/fixtures/model/textual/tokenizer.json");
    match ClipTokenizer::from_file(&path, 77) {
        Ok(t) => t,
        Err(e) => panic!("the fixture tokenizer {}: {e}", path.display()),
    }
}

pub fn run(tokenizer: &ClipTokenizer, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = clean_text(text);
    let t = tokenizer.encode(text);
    assert_eq!(t.ids.len(), 77);
    assert_eq!(t.ids[0], 49406, "starts with the start-of-text token");
}
