//! Compiles `proto/` with protox (pure Rust, so no `protoc` is needed on the build machine) and
//! emits the file descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/clip/v1/clip.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile([proto], ["proto"])?;
    let descriptor_path = out_dir.join("clip_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `bytes` fields decode as `Bytes` slices of tonic's receive buffer instead of copies. An
        // EmbedStream's buffer would otherwise keep the capacity of its largest message for the
        // stream's life (see `grpc/embed.rs`).
        .bytes(".")
        // prost's codec, but a request message that does not decode is INVALID_ARGUMENT.
        .codec_path("crate::grpc::codec::ClientErrorCodec")
        .compile_fds(fds)?;
    Ok(())
}
