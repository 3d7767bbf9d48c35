//! The command line, at the top of the crate: every flag has an environment twin (`CLIP_SERVE_*`,
//! plus `ORT_DYLIB_PATH` as ONNX Runtime users expect). docs/ARCHITECTURE.md ("Configuration")
//! says how the pieces fit.
//!
//! `serve`'s flags are one `clap::Args` struct per domain, each in its own file and flattened into
//! [`ServeArgs`]: [`network`] (listeners, connections, timeouts), [`model`] (model, runtime,
//! provider), [`limits`] (admission and request limits), [`batch`], [`fetch`] (image URLs),
//! [`classify`], [`retrieve`], [`store`] (data directory, PostgreSQL), [`security`] (API keys,
//! TLS) and [`telemetry`] (logs, metrics). Rules between flags are clap's (`requires`,
//! `conflicts_with`, `required_if_eq`) where clap can say them; what it cannot (a rule on another
//! flag's value, numeric relations, non-zero values) is checked by [`ServeArgs::validate`], which
//! builds each domain's own configuration struct into one [`Config`] for `server.rs`, or says in
//! one line which flag is wrong. Every flag carries `display_order` so `--help` lists them in the
//! order it always has (`tests/fixtures/cli/`, checked by `help_tests`).
//!
//! [`Config::for_model`] (tests, embedding) reads no environment variable: its defaults come from
//! the same flag definitions with their environment twins removed ([`ServeArgs::defaults`]).
//! Domain modules never import this one.

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use clap::{Args, FromArgMatches, Parser, Subcommand};

use crate::{
    admission::DoorConfig,
    classify::ClassifyConfig,
    embed::{EmbedConfig, fetch::FetchConfig},
    model::{CpuFeatures, PrecisionArg, ProviderOptions},
    postgres::StoreConfig,
    retrieve::RetrieveConfig,
    security::{Secret, TlsPaths},
};

pub mod batch;
pub mod batch_args;
pub mod classify;
pub mod fetch;
pub mod limits;
pub mod model;
pub mod network;
pub mod retrieve;
pub mod security;
pub mod store;
pub mod telemetry;

pub use model::{DEFAULT_MODEL_DIR, DEFAULT_ORT_DYLIB};
pub use network::OptionalAddr;
pub use store::StoreKind;

#[derive(Debug, Parser)]
#[command(
    name = "clip-serve",
    version,
    about = "Serve CLIP image and text embeddings over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the load generator is the separate `clip-bench` binary).
    Serve(Box<ServeArgs>),
    /// Upsert a folder of images into a collection of a running server (resumable).
    Index(crate::grpc::client::index::IndexArgs),
    /// Search a collection of a running server by text (or --image).
    Search(crate::grpc::client::search::SearchArgs),
}

/// `clip-serve serve`: every domain's flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: model::ModelArgs,
    #[command(flatten)]
    pub network: network::NetworkArgs,
    #[command(flatten)]
    pub limits: limits::LimitsArgs,
    #[command(flatten)]
    pub batch: batch::BatchArgs,
    #[command(flatten)]
    pub fetch: fetch::FetchArgs,
    #[command(flatten)]
    pub classify: classify::ClassifyArgs,
    #[command(flatten)]
    pub retrieve: retrieve::RetrieveArgs,
    #[command(flatten)]
    pub store: store::StoreArgs,
    #[command(flatten)]
    pub security: security::SecurityArgs,
    #[command(flatten, next_display_order = 880)]
    pub batch_api: batch_args::BatchApiArgs,
    #[command(flatten)]
    pub telemetry: telemetry::TelemetryArgs,
}

/// Validated server configuration: one struct per domain, built here, read by `server.rs`.
#[derive(Debug, Clone)]
pub struct Config {
    pub model_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Plain-HTTP probes and metrics, beside a TLS `http_addr`.
    pub probe_addr: Option<SocketAddr>,
    pub ort_dylib_path: PathBuf,
    /// The execution provider and its options (its `max_batch_size` follows `embed.batch`).
    pub providers: ProviderOptions,
    pub precision: PrecisionArg,
    /// The CPU features `--precision auto` and bf16 go by; `None`: this machine's (tests inject
    /// others).
    pub cpu_features: Option<CpuFeatures>,
    pub allow_ungated_precision: bool,
    pub full_length_text: bool,
    pub intra_op_threads: usize,
    pub skip_warmup: bool,
    /// Request limits, batching, streams and preprocessing (admission takes its permit count from
    /// `embed.limits.max_concurrent_requests`).
    pub embed: EmbedConfig,
    pub data_dir: PathBuf,
    pub classify: ClassifyConfig,
    pub retrieve: RetrieveConfig,
    /// The Batch API's bounds (`--batch-*`).
    pub jobs: crate::jobs::JobsConfig,
    /// Where collections (and with postgres, label sets) live.
    pub store: StoreConfig,
    pub shutdown_grace: Duration,
    /// Connection and body bounds of both doors.
    pub doors: DoorConfig,
    pub max_inflight_bytes: u64,
    pub max_stream_readers: usize,
    /// `None`: connections live as long as their clients keep them.
    pub max_connection_age: Option<Duration>,
    pub http2_keepalive: Option<Duration>,
    pub api_key: Option<Secret>,
    pub api_key_file: Option<PathBuf>,
    pub rate_limit: Option<crate::security::RateLimit>,
    pub default_quota: Option<crate::security::quota::QuotaSpec>,
    /// `--usage-flush-interval` (zero: every call writes) and `--usage-max-pending`.
    pub usage_flush_interval: Duration,
    pub usage_max_pending: usize,
    /// `--auth-failures-per-minute` (0: no limit).
    pub auth_failures_per_minute: u32,
    /// `--metrics-key-names`.
    pub metrics_key_names: bool,
    pub public_reflection: bool,
    pub tls: TlsPaths,
    /// Model names the HTTP API accepts besides the served ids (`--model-alias`).
    pub model_aliases: Vec<String>,
    /// `--fetch-image-urls` and its settings; `None`: URLs are refused.
    pub fetch: Option<FetchConfig>,
    /// `--max-json-depth`: nesting of free-form JSON in request bodies.
    pub max_json_depth: usize,
    /// `--max-json-bytes`: parsed free-form JSON per request body.
    pub max_json_bytes: usize,
}

/// `--NAME` must not be 0.
fn positive(name: &str, v: u64) -> Result<u64, String> {
    if v == 0 {
        Err(format!("--{name} must be greater than 0"))
    } else {
        Ok(v)
    }
}

/// `--NAME` must not be 0 and must fit a `usize`.
fn to_usize(name: &str, v: u64) -> Result<usize, String> {
    usize::try_from(positive(name, v)?).map_err(|_| format!("--{name} {v} is too large"))
}

impl ServeArgs {
    /// Checks the flags and resolves defaults. Errors are one line naming the flag.
    pub fn validate(self) -> Result<Config, String> {
        let Self {
            model,
            network,
            limits: limit_args,
            batch,
            fetch,
            classify,
            retrieve,
            store,
            security,
            batch_api,
            telemetry,
        } = self;
        let limits = limit_args.limits()?;
        let max_stream_in_flight = to_usize(
            "max-stream-in-flight",
            limit_args.max_stream_in_flight.into(),
        )?;
        let batch = batch.config(limits.max_items_per_request)?;
        let classify = classify.config(limits.max_text_bytes)?;
        let providers = model.providers(batch.max_batch_size)?;
        let retrieve = retrieve.config()?;
        let fetch = fetch.config(limits.max_image_bytes)?;
        let store_config = store.config()?;
        let doors = network.door_config()?;
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let intra_op_threads = model.intra_op_threads.map_or(cores, NonZeroUsize::get);
        Ok(Config {
            model_aliases: model.aliases(),
            model_dir: model.model_dir,
            grpc_addr: network.grpc_addr,
            http_addr: network.http_addr,
            probe_addr: network.probe_addr.0,
            ort_dylib_path: model
                .ort_dylib_path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ORT_DYLIB)),
            providers,
            precision: model.precision,
            cpu_features: None,
            allow_ungated_precision: model.allow_ungated_precision,
            full_length_text: model.full_length_text,
            intra_op_threads,
            skip_warmup: model.skip_warmup,
            embed: EmbedConfig {
                limits,
                batch,
                max_stream_in_flight,
                apply_exif_orientation: model.apply_exif_orientation,
                preprocess_workers: cores,
                max_decode_bytes: positive("max-decode-bytes", limit_args.max_decode_bytes)?,
            },
            data_dir: store.data_dir,
            classify,
            retrieve,
            jobs: batch_api.config()?,
            store: store_config,
            shutdown_grace: network.shutdown_grace,
            doors,
            max_inflight_bytes: positive("max-inflight-bytes", limit_args.max_inflight_bytes)?,
            max_stream_readers: to_usize(
                "max-stream-readers",
                limit_args.max_stream_readers.into(),
            )?,
            max_connection_age: Some(network.max_connection_age).filter(|d| !d.is_zero()),
            http2_keepalive: Some(network.http2_keepalive).filter(|d| !d.is_zero()),
            api_key: security.api_key(),
            tls: security.tls(),
            api_key_file: security.api_key_file,
            rate_limit: security.rate_limit,
            default_quota: security.default_quota,
            usage_flush_interval: security.usage_flush_interval,
            usage_max_pending: to_usize("usage-max-pending", security.usage_max_pending.into())?,
            auth_failures_per_minute: security.auth_failures_per_minute,
            metrics_key_names: telemetry.metrics_key_names,
            public_reflection: security.public_reflection,
            fetch,
            max_json_depth: to_usize("max-json-depth", limit_args.max_json_depth.into())?,
            max_json_bytes: to_usize("max-json-bytes", limit_args.max_json_bytes)?,
        })
    }

    /// Every flag at its default, whatever the environment holds: the same flag definitions with
    /// their environment twins removed, parsed from an empty command line. (A plain parse reads
    /// `CLIP_SERVE_*`, which would make a test's configuration depend on the shell it runs in.)
    pub fn defaults() -> ServeArgs {
        let command = ServeArgs::augment_args(clap::Command::new("serve"))
            .mut_args(|arg| arg.env(None::<&'static str>));
        // Every flag has a default or is optional, so an empty command line always parses.
        let parsed = command
            .try_get_matches_from(["serve"])
            .and_then(|matches| ServeArgs::from_arg_matches(&matches));
        match parsed {
            Ok(args) => args,
            Err(e) => unreachable!("`serve` without flags does not parse: {e}"),
        }
    }
}

impl Config {
    /// A configuration with every default, for tests and embedding the server as a library. It
    /// reads no environment variable (not `CLIP_SERVE_*`, not `ORT_DYLIB_PATH`): set fields
    /// explicitly.
    pub fn for_model(model_dir: impl Into<PathBuf>) -> Self {
        let mut args = ServeArgs::defaults();
        args.model.model_dir = model_dir.into();
        args.network.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        args.network.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        args.network.probe_addr = OptionalAddr(Some(SocketAddr::from(([127, 0, 0, 1], 0))));
        // The defaults are valid by construction; the unit tests keep them so.
        match args.validate() {
            Ok(config) => config,
            Err(e) => unreachable!("default configuration is invalid: {e}"),
        }
    }
}

#[cfg(test)]
mod help_tests;
#[cfg(test)]
mod tests;
