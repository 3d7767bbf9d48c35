//! Logging set-up (`tracing` with an EnvFilter, human-readable or JSON lines, on stderr), trace
//! export over OTLP ([`trace`]), request ids, and the Prometheus metric definitions ([`metrics`]).
//! No listener: `/metrics` is served by the HTTP layer (`http/probes.rs`).

pub mod metrics;
pub mod trace;
pub mod usage;

pub use trace::{TraceArgs, TraceGuard};
use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn, fmt, prelude::*};

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

/// Installs the global subscriber: the log lines (filtered by `filter`) and, when `trace` names an
/// OTLP endpoint, the span exporter (every span of this crate, whatever the log filter says). Errors
/// when the filter or the endpoint does not parse or a subscriber exists. Keep the guard until the
/// server has stopped: dropping it flushes the spans still queued.
pub fn init(format: LogFormat, filter: &str, trace: &TraceArgs) -> Result<TraceGuard, String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("--log-filter {filter:?}: {e}"))?;
    let logs = match format {
        LogFormat::Text => fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let (provider, guard) = trace::provider(trace)?;
    let spans = provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(trace::tracer(&provider))
            .with_filter(filter_fn(|meta| {
                meta.is_span() && meta.target().starts_with(env!("CARGO_CRATE_NAME"))
            }))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(guard)
}
