//! Logs, metrics and traces: the log format and filter, whether usage series name API keys, and the
//! OpenTelemetry exporter's flags (`TraceArgs`, flattened in from `telemetry::trace`).

use clap::Args;

use crate::telemetry::LogFormat;

/// Logs, metrics and traces.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Label /metrics usage series (`clip_usage_total`) with API key names (or, for bare keys,
    /// hash prefixes). Off: every key counts under key="redacted".
    #[arg(
        long,
        env = "CLIP_SERVE_METRICS_KEY_NAMES",
        default_value_t = false,
        display_order = 820
    )]
    pub metrics_key_names: bool,

    /// Log format.
    #[arg(long, env = "CLIP_SERVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, display_order = 870)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info,clip_serve=debug`.
    #[arg(
        long,
        env = "CLIP_SERVE_LOG",
        default_value = "info,ort=warn",
        display_order = 880
    )]
    pub log_filter: String,

    // OpenTelemetry traces (`--otlp-*`), defined beside the exporter in `telemetry::trace`; listed
    // after every other flag, as they always were.
    #[command(flatten, next_display_order = 890)]
    pub trace: crate::telemetry::TraceArgs,
}
