//! gRPC request messages and their validation (src/targets/proto.rs); needs the feature `app`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clip_serve_fuzz::proto::run(data));
