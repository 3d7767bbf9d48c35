//! Who may call: API keys (a key, or a key file with per-key rates), the default per-key rate,
//! failed key checks per peer, reflection without a key, and TLS (mutual with a client CA).

use std::path::PathBuf;

use clap::Args;

use crate::security::{RateLimit, Secret, TlsPaths};

/// API keys and TLS. `--tls-cert` and `--tls-key` go together and `--tls-client-ca` needs both
/// (clap's `requires`; `security::tls` checks again for configurations built in code).
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// An API key every call must present (`authorization: Bearer KEY`), except health checks,
    /// /healthz, /readyz and /metrics. Prefer --api-key-file: a flag shows in `ps`.
    #[arg(
        long,
        env = "CLIP_SERVE_API_KEY",
        hide_env_values = true,
        display_order = 780
    )]
    pub api_key: Option<String>,

    /// A file of API keys, one per line (`#` comments), re-read on SIGHUP: `name:key` (usage and logs
    /// show the name; a bare key is named by a short hash) and optionally ` rate=REQ_PER_S[:BURST]`.
    #[arg(long, env = "CLIP_SERVE_API_KEY_FILE", display_order = 790)]
    pub api_key_file: Option<PathBuf>,

    /// Items per second (and burst) each API key may spend, unless its key file line sets its own.
    /// A call costs its item count (images and texts embedded, images classified, items upserted,
    /// candidates ranked; at least 1), a stream 1 per item: a call of one item costs what a call
    /// cost before. A call larger than the burst is refused. Over it: 429 with Retry-After /
    /// RESOURCE_EXHAUSTED with RetryInfo. No limit without keys.
    #[arg(
        long,
        env = "CLIP_SERVE_RATE_LIMIT",
        value_name = "REQ_PER_S[:BURST]",
        display_order = 800
    )]
    pub rate_limit: Option<RateLimit>,

    /// Items per UTC day or month each API key may spend, unless its key file line sets its own
    /// `quota=`; counted in the store (shared by replicas with --store postgres). Over it: 429
    /// `insufficient_quota` / RESOURCE_EXHAUSTED, saying when it resets. Off by default.
    #[arg(
        long,
        env = "CLIP_SERVE_DEFAULT_QUOTA",
        value_name = "N/day|N/month",
        display_order = 805
    )]
    pub default_quota: Option<crate::security::quota::QuotaSpec>,

    /// How often the usage of keys without a quota, counted in memory, is written to the store
    /// (also before every usage read and at shutdown; a kill -9 loses at most this much). Keys
    /// with a quota are charged in the store on every call. 0: every call writes.
    #[arg(long, env = "CLIP_SERVE_USAGE_FLUSH_INTERVAL", default_value = "1s", value_parser = crate::common::parse_duration, display_order = 806)]
    pub usage_flush_interval: std::time::Duration,

    /// (key, day) usage rows held in memory between writes; one more writes them at once.
    #[arg(
        long,
        env = "CLIP_SERVE_USAGE_MAX_PENDING",
        default_value_t = 10_000,
        display_order = 807
    )]
    pub usage_max_pending: u32,

    /// Failed API key checks one peer address may make per minute (IPv6: per /64); past them its
    /// calls get 429 / RESOURCE_EXHAUSTED without a key check until the minute is over. 0: no limit.
    /// The address is the TCP peer's: behind a proxy that does not keep client addresses (a
    /// load balancer with SNAT) all clients share one, so raise this or set 0 there.
    #[arg(
        long,
        env = "CLIP_SERVE_AUTH_FAILURES_PER_MINUTE",
        default_value_t = 10,
        display_order = 810
    )]
    pub auth_failures_per_minute: u32,

    /// With API keys configured, let gRPC reflection through without a key.
    #[arg(
        long,
        env = "CLIP_SERVE_PUBLIC_REFLECTION",
        default_value_t = false,
        display_order = 830
    )]
    pub public_reflection: bool,

    /// TLS certificate chain (PEM) for both listeners; needs --tls-key.
    #[arg(
        long,
        env = "CLIP_SERVE_TLS_CERT",
        requires = "tls_key",
        display_order = 840
    )]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(
        long,
        env = "CLIP_SERVE_TLS_KEY",
        requires = "tls_cert",
        display_order = 850
    )]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to; turns on mutual TLS.
    #[arg(
        long,
        env = "CLIP_SERVE_TLS_CLIENT_CA",
        requires = "tls_cert",
        requires = "tls_key",
        display_order = 860
    )]
    pub tls_client_ca: Option<PathBuf>,
}

impl SecurityArgs {
    /// `--api-key`, empty meaning none.
    pub(super) fn api_key(&self) -> Option<Secret> {
        self.api_key.clone().filter(|k| !k.is_empty()).map(Secret)
    }

    pub(super) fn tls(&self) -> TlsPaths {
        TlsPaths {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: self.tls_client_ca.clone(),
        }
    }
}
