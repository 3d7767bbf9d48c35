//! Listeners, connections and their timeouts: `--grpc-addr`, `--http-addr`, `--probe-addr`, the
//! connection places of both doors, the header, body and idle deadlines, HTTP/2 keepalive, the
//! connection age and the shutdown grace.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use crate::{admission::DoorConfig, common::parse_duration};

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    match s.trim() {
        "" | "off" | "none" => Ok(OptionalAddr(None)),
        addr => addr
            .parse()
            .map(|a| OptionalAddr(Some(a)))
            .map_err(|e| format!("{e} (an address like 0.0.0.0:8081, or off)")),
    }
}

/// The listeners and the connection and body bounds of both doors.
#[derive(Debug, Clone, Args)]
pub struct NetworkArgs {
    /// gRPC listen address.
    #[arg(
        long,
        env = "CLIP_SERVE_GRPC_ADDR",
        default_value = "0.0.0.0:50051",
        display_order = 10
    )]
    pub grpc_addr: SocketAddr,

    /// HTTP listen address for /metrics (Prometheus), /healthz and /readyz.
    #[arg(
        long,
        env = "CLIP_SERVE_HTTP_ADDR",
        default_value = "0.0.0.0:8080",
        display_order = 20
    )]
    pub http_addr: SocketAddr,

    /// A plain-HTTP listener for /healthz, /readyz and /metrics only, outside the API's connection
    /// places: never TLS, never an API key, so kubelet probes and Prometheus answer while the API
    /// listeners are full or demand TLS or client certificates (`off`: none).
    #[arg(long, env = "CLIP_SERVE_PROBE_ADDR", default_value = "0.0.0.0:8081", value_parser = parse_optional_addr, display_order = 30)]
    pub probe_addr: OptionalAddr,

    /// Open client connections across the gRPC and plain-HTTP listeners; a connection beyond it is
    /// closed as soon as it is accepted (clients retry, or a load balancer picks another replica).
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_CONNECTIONS",
        default_value_t = 1024,
        display_order = 340
    )]
    pub max_connections: u32,

    /// Open connections of one peer (an IPv4 address, or an IPv6 /64) across both listeners, so
    /// one client cannot take every place (0: no bound; behind a proxy, all clients are one peer).
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 256,
        display_order = 350
    )]
    pub max_connections_per_peer: u32,

    /// A TLS handshake, an HTTP request's head, the next request on an idle HTTP/1 keep-alive
    /// connection, and a gRPC connection's HTTP/2 preface must each arrive within this; the
    /// connection is closed otherwise.
    #[arg(long, env = "CLIP_SERVE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration, display_order = 360)]
    pub header_read_timeout: Duration,

    /// A gRPC connection on which nothing arrives for this long is closed, and so is a connection
    /// on either port whose reply makes no progress that long (0: never). Live clients answer the
    /// --http2-keepalive pings, so only silent or dead peers are cut; it is raised to the
    /// keepalive interval + 21 s when shorter.
    #[arg(long, env = "CLIP_SERVE_IDLE_TIMEOUT", default_value = "2m", value_parser = parse_duration, display_order = 370)]
    pub idle_timeout: Duration,

    /// An HTTP request body, or a unary gRPC request message, must arrive within this (408 /
    /// DEADLINE_EXCEEDED otherwise, and what it held is freed).
    #[arg(long, env = "CLIP_SERVE_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration, display_order = 380)]
    pub body_read_timeout: Duration,

    /// The least average rate (bytes/s) at which a body arrives once it has had 5 s (0: none); a
    /// slower one is cut off like a late one.
    #[arg(
        long,
        env = "CLIP_SERVE_BODY_MIN_RATE",
        default_value_t = 4096,
        display_order = 390
    )]
    pub body_min_rate: u64,

    /// HTTP request bodies being read at once; one more gets 503 at once.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_BODY_READERS",
        default_value_t = 128,
        display_order = 400
    )]
    pub max_body_readers: u32,

    /// Without an API key, the `Host` names a browser may reach the HTTP API by (DNS-rebinding
    /// protection), besides IP literals and localhost; `*` allows any. Requests without browser
    /// headers (Origin, Sec-Fetch-*) are not checked.
    #[arg(
        long,
        env = "CLIP_SERVE_ALLOWED_HOSTS",
        value_delimiter = ',',
        display_order = 410
    )]
    pub allowed_hosts: Vec<String>,

    /// Close each gRPC connection after this long (GOAWAY; calls in flight get --shutdown-grace to
    /// finish), so long-lived clients spread over replicas added later (0: never), e.g. 30m.
    #[arg(long, env = "CLIP_SERVE_MAX_CONNECTION_AGE", default_value = "30m", value_parser = parse_duration, display_order = 420)]
    pub max_connection_age: Duration,

    /// HTTP/2 keepalive pings on gRPC connections at this interval; a peer silent for 20 s more is
    /// dropped (0: off).
    #[arg(long, env = "CLIP_SERVE_HTTP2_KEEPALIVE", default_value = "60s", value_parser = parse_duration, display_order = 430)]
    pub http2_keepalive: Duration,

    /// On SIGTERM/SIGINT, how long calls in flight may take to finish before the remaining
    /// connections are closed (e.g. 30s, 500ms).
    #[arg(long, env = "CLIP_SERVE_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration, display_order = 770)]
    pub shutdown_grace: Duration,
}

impl NetworkArgs {
    /// The connection and body flags, checked.
    pub(super) fn door_config(&self) -> Result<DoorConfig, String> {
        if self.max_connections == 0 {
            return Err("--max-connections must be greater than 0".into());
        }
        for (name, d) in [
            ("header-read-timeout", self.header_read_timeout),
            ("body-read-timeout", self.body_read_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("--{name} must be greater than 0"));
            }
        }
        if self.max_body_readers == 0 {
            return Err("--max-body-readers must be greater than 0".into());
        }
        // A live client's ping answers must come before the idle deadline.
        let keepalive_floor = (!self.http2_keepalive.is_zero())
            .then(|| self.http2_keepalive + Duration::from_secs(21));
        let idle_timeout = Some(self.idle_timeout)
            .filter(|d| !d.is_zero())
            .map(|d| keepalive_floor.map_or(d, |floor| d.max(floor)));
        Ok(DoorConfig {
            max_connections: self.max_connections as usize,
            max_connections_per_peer: self.max_connections_per_peer as usize,
            header_read_timeout: self.header_read_timeout,
            idle_timeout,
            body_read_timeout: self.body_read_timeout,
            body_min_rate: self.body_min_rate,
            max_body_readers: self.max_body_readers as usize,
            allowed_hosts: self
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        })
    }
}
