//! The fuzz targets' bodies (fuzz/src/targets/) over their committed seeds (fuzz/corpus/TARGET) and a
//! fixed set of mutations of each seed (truncations, flipped and inserted bytes), in the ordinary test
//! build: CI's sanitizer build covers `image` and `text` only (scripts/fuzz.sh), and these keep every
//! target's seeds and a deterministic spread of broken inputs around them checked on each run. The
//! coverage-guided campaign over all four is `scripts/fuzz.sh 600`, by hand.

use std::path::{Path, PathBuf};

use clip_serve::preprocess;

#[path = "../../fuzz/src/targets/http_json.rs"]
mod http_json;
#[path = "../../fuzz/src/targets/image.rs"]
mod image;
#[path = "../../fuzz/src/targets/proto.rs"]
mod proto;
#[path = "../../fuzz/src/targets/text.rs"]
mod text;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The committed seeds of one target, sorted by name; fails when there are none (a renamed folder).
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = repo_root().join("fuzz/corpus").join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no seeds in {}", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// `count` variants of `seed` from a fixed xorshift stream: a truncation, a flipped byte, an inserted
/// byte or a duplicated slice, in turn. The first byte (the targets' mode selector) is mutated too.
fn mutations(seed: &[u8], count: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ seed.len() as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|i| {
            let mut m = seed.to_vec();
            let at = |r: u64, len: usize| if len == 0 { 0 } else { r as usize % len };
            match i % 4 {
                0 => m.truncate(at(next(), seed.len() + 1)),
                1 if !m.is_empty() => {
                    let k = at(next(), m.len());
                    m[k] ^= 1 << (next() % 8);
                }
                2 => {
                    let k = at(next(), m.len() + 1);
                    m.insert(k, next() as u8);
                }
                _ => {
                    let k = at(next(), m.len() + 1);
                    let n = at(next(), 64).min(m.len() - k);
                    let slice = m[k..k + n].to_vec();
                    m.splice(k..k, slice);
                }
            }
            m
        })
        .collect()
}

fn run_all(target: &str, per_seed: usize, run: impl Fn(&[u8])) -> usize {
    let mut inputs = 0;
    for (path, seed) in seeds(target) {
        for input in std::iter::once(seed.clone()).chain(mutations(&seed, per_seed)) {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&input)));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} panicked on {} (or a mutation of it, {} bytes: {:?}...)",
                path.display(),
                input.len(),
                &input[..input.len().min(32)]
            );
            inputs += 1;
        }
    }
    inputs
}

#[test]
fn fuzz_seeds_image() {
    // Few mutations: a mutated photograph usually still decodes, and the crate is unoptimized here.
    assert!(run_all("image", 3, image::run) >= 14);
}

#[test]
fn fuzz_seeds_text() {
    let tokenizer = text::tokenizer(repo_root());
    assert!(run_all("text", 16, |data| text::run(&tokenizer, data)) >= 20);
}

#[test]
fn fuzz_seeds_http_json() {
    assert!(run_all("http_json", 256, http_json::run) >= 5);
}

#[test]
fn fuzz_seeds_proto() {
    assert!(run_all("proto", 256, proto::run) >= 4);
}

#[test]
fn mutations_are_fixed_and_varied() {
    let seed = b"\x02{\"input\": [\"a\", \"b\"]}";
    let a = mutations(seed, 32);
    assert_eq!(a, mutations(seed, 32), "the same inputs on every run");
    let distinct: std::collections::HashSet<_> = a.iter().collect();
    assert!(distinct.len() > 24, "{} distinct of 32", distinct.len());
    assert!(a.iter().any(|m| m.len() < seed.len()) && a.iter().any(|m| m.len() > seed.len()));
}
