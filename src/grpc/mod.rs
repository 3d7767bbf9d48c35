//! The protocol layer: generated code, one file per service, proto <-> domain conversion and the
//! single mapping from [`ServiceError`](crate::common::ServiceError) to `tonic::Status`. tonic and prost
//! types do not leave this module.
//!
//! Layer: a door, beside `http/`. Depends on the domain (`embed`, `classify`, `retrieve`), on
//! `security` (the API-key interceptor, TLS) and `telemetry`; nothing below imports it.

pub mod auth;
pub mod classify;
pub mod client;
pub mod codec;
pub mod context;
pub mod embed;
mod embed_stream;
pub mod info;
pub mod progress;
pub mod retrieve;
pub mod status;
pub mod transport;

/// Generated protobuf and gRPC code for `proto/clip/v1/clip.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("clip.v1");

    /// Encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/clip_descriptor.bin"));
}

/// Fully qualified service names, as health checking and reflection know them.
pub const SERVICE_NAMES: [&str; 4] = [
    "clip.v1.Embed",
    "clip.v1.Info",
    "clip.v1.Classify",
    "clip.v1.Retrieve",
];
