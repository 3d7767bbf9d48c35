//! Logging set-up (`tracing` with an EnvFilter, human-readable or JSON lines, on stderr), request
//! ids, and the Prometheus metric definitions ([`metrics`]). No listener: `/metrics` is served by
//! the HTTP layer (`http/probes.rs`).

pub mod metrics;
pub mod usage;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Longest client-chosen request id kept; longer or non-printable ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id of a call, on either interface: the client's own `x-request-id` when it is
/// 1-128 printable ASCII characters, a new UUIDv4 otherwise.
pub fn request_id(presented: Option<&str>) -> String {
    presented
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_LEN
                && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Installs the global subscriber. Errors when the filter does not parse or a subscriber exists.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("--log-filter {filter:?}: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_target(false).with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    }
    .map_err(|e| e.to_string())
}
