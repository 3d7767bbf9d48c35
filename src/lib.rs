//! clip-serve: a gRPC (and HTTP) microservice serving OpenCLIP image and text embeddings through
//! ONNX Runtime.
//!
//! Layers, top to bottom; imports only point down (README "Architecture" draws the request path):
//!
//! - wiring: [`cli`] (flags -> each domain's config), [`server`] (model -> batchers -> services ->
//!   both listeners; shutdown), `main.rs`, and the `clip-bench` load generator under `src/bin/`;
//! - protocol layers, side by side: [`grpc`] (tonic) and [`http`] (axum). tonic, prost, axum and
//!   hyper types stop there;
//! - features: [`classify`] (zero-shot, label sets), [`retrieve`] (ranking, collections) and
//!   [`jobs`] (OpenAI's Batch API: files, batches, the background runner);
//! - [`embed`]: the embedding service (validation, preprocessing pool, model slot, batchers);
//! - engines: [`batch`] (the dynamic batcher), [`model`] (ONNX Runtime, providers, towers),
//!   [`preprocess`] (image decode + resample, text clean + tokenize; pure);
//! - [`postgres`]: the shared PostgreSQL pool, schema and error mapping of `--store postgres`,
//!   used by both features;
//! - shared below everything: [`admission`] (permits, shutdown), [`security`] (API keys, TLS
//!   material), [`telemetry`] (logs, request ids, metric definitions), [`common`] (the request error
//!   with its field paths, small helpers).

pub mod admission;
pub mod batch;
pub mod classify;
pub mod cli;
pub mod common;
pub mod embed;
pub mod grpc;
pub mod http;
pub mod jobs;
pub mod model;
pub mod postgres;
pub mod preprocess;
pub mod retrieve;
pub mod security;
pub mod server;
pub mod telemetry;

pub use cli::Config;
pub use common::ServiceError;
