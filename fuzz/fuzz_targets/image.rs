//! Every image decoder and the whole preprocessing pipeline (src/targets/image.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clip_serve_fuzz::image::run(data));
