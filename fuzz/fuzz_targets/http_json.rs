//! The HTTP API's JSON bodies (src/targets/http_json.rs); needs the feature `app`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clip_serve_fuzz::http_json::run(data));
