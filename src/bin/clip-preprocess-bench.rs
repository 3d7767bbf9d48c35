//! `clip-preprocess-bench`: image preprocessing speed, decode + resize + crop + RGB for each file
//! given. A program that measures (`cargo run --release --bin clip-preprocess-bench -- FILES`), not a
//! test; a binary rather than a `cargo bench` target so that scripts/gpu_bundle.sh ships it built
//! beside `clip-serve` (no dev-dependencies, the same release library).
//!
//! Two modes:
//! - default: single thread, median of N runs per file (scripts/bench_embed.sh runs it beside
//!   open_clip's PIL pipeline on the same files);
//! - `--threads T --seconds S`: T threads each preprocess the file in a loop for S seconds; reports
//!   images/s over all threads, the host-side ceiling a server on T cores cannot exceed
//!   (scripts/gpu_check.sh ships this binary in its bundle).
//!
//! Usage: clip-preprocess-bench [--runs N] [--threads T --seconds S] [--cfg preprocess_cfg.json]
//!        [--json OUT] FILE...
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark program: a panic is a failed run"
)]

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use clip_serve::preprocess::image::{ImageOptions, PreprocessConfig, preprocess};

/// Preprocess `bytes` on `threads` threads until `seconds` have passed; returns (images, elapsed s).
fn throughput(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    options: &ImageOptions,
    threads: usize,
    seconds: f64,
) -> (u64, f64) {
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(seconds);
    let counts: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while Instant::now() < stop {
                        assert!(preprocess(bytes, cfg, options).is_ok());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (counts.iter().sum(), start.elapsed().as_secs_f64())
}

fn main() {
    let mut runs = 21usize;
    let mut threads: Option<usize> = None;
    let mut seconds = 3.0f64;
    let mut cfg_path = PathBuf::from("tests/fixtures/model/visual/preprocess_cfg.json");
    let mut json_out: Option<PathBuf> = None;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--threads" => {
                threads = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .filter(|&t| t > 0)
                        .expect("--threads T (at least 1)"),
                );
            }
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&s: &f64| s > 0.0)
                    .expect("--seconds S (positive)");
            }
            "--cfg" => cfg_path = args.next().map(PathBuf::from).expect("--cfg FILE"),
            "--json" => json_out = args.next().map(PathBuf::from),
            _ => files.push(PathBuf::from(arg)),
        }
    }
    if files.is_empty() {
        files.push(PathBuf::from("tests/fixtures/images/coffee_4000x3000.jpg"));
    }
    let cfg = PreprocessConfig::from_json_file(&cfg_path).expect("preprocess config");
    let options = ImageOptions {
        max_pixels: 100_000_000,
        apply_exif_orientation: false,
    };
    let mut results = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        preprocess(&bytes, &cfg, &options).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Some(threads) = threads {
            let (images, elapsed) = throughput(&bytes, &cfg, &options, threads, seconds);
            let per_s = images as f64 / elapsed;
            println!(
                "{:60} {per_s:10.1} images/s  ({threads} threads, {images} images in {elapsed:.2} s)",
                file.display()
            );
            results.push(
                serde_json::json!({"file": file, "bytes": bytes.len(), "threads": threads,
                "images": images, "seconds": elapsed, "images_per_s": per_s}),
            );
            continue;
        }
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let out = preprocess(&bytes, &cfg, &options);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                assert!(out.is_ok());
                ms
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{:60} median {median:8.2} ms  min {:8.2} ms  ({runs} runs)",
            file.display(),
            times[0]
        );
        results.push(serde_json::json!({"file": file, "median_ms": median, "min_ms": times[0], "runs": runs}));
    }
    if let Some(out) = json_out {
        std::fs::write(&out, serde_json::to_string_pretty(&results).expect("json"))
            .expect("write --json");
    }
}
