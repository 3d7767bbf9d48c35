//! The integration tests, as one test binary (one link instead of one per file): each module starts
//! the real server in-process on 127.0.0.1:0 (`signals` runs it as a child process) and talks to it
//! with the generated clients, plain HTTP or the official SDKs' wire formats.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is a failed test"
)]

mod common;

mod batches;
mod batches_replicas;
mod cancel_safety;
mod classify;
mod fast_paths;
mod fuzz_seeds;
mod hardening;
mod http_clients;
mod http_collections;
mod http_dropins;
mod http_layers;
mod http_shapes;
mod indexer;
mod keys;
mod memory;
mod observability;
mod openai;
mod openapi;
mod openvino;
mod pages;
mod parity;
mod postgres;
mod postgres_index;
mod postgres_mirror;
#[cfg(unix)]
mod postgres_replicas;
mod postgres_siege;
mod postgres_store;
mod priorities;
mod quota;
mod retrieve;
mod server;
mod siege;
#[cfg(unix)]
mod signals;
mod traces;
mod url_fetch;
