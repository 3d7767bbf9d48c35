//! clip-serve: a gRPC microservice serving OpenCLIP image and text embeddings through ONNX Runtime.
//!
//! `main.rs` is a thin shell over [`server::run`]; integration tests start the same server in-process
//! with [`server::start`]. tonic and prost types stop at [`grpc`]: everything below speaks domain
//! types ([`service`], [`model`], [`preprocess`]).

pub mod auth;
pub mod batch;
pub mod classify;
pub mod config;
pub mod error;
pub mod grpc;
pub mod model;
pub mod openai;
pub mod preprocess;
pub mod retrieve;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use error::ServiceError;
