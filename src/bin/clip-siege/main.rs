//! `clip-siege`: the attacks of "siege-proof" (issue 20) against a running server on loopback, each
//! bounded in count and time, and what honest clients see meanwhile. `scripts/siege.sh` builds a
//! release server, starts it with default flags and runs this against it.
//!
//! For each attack it reports: small calls (one short text, a new connection per call, the way a
//! client behind a load balancer comes) on both doors, HTTP `POST /v1/embeddings` and gRPC
//! `Embed/EmbedTexts`: success rate and p99 latency; probes (`GET /readyz` on the probe listener, or
//! on the HTTP port) and the gRPC health check: max and p99 latency; the server's peak RSS (VmHWM of
//! /proc/PID/status, reset before each attack through /proc/PID/clear_refs); and what was lost
//! (deleted items still searchable, zombie collections, upserted items not searchable, or the
//! server process gone). The attacker connects from another loopback address (127.0.0.2 by
//! default) than the honest clients (127.0.0.1), so that a server may tell them apart by peer as
//! it would on the internet; everything goes to loopback and nowhere else.
//!
//! A program that measures, not a test: the markdown table goes to stdout (and `--markdown FILE`);
//! it exits non-zero when a target is missed only with `--strict`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an attack harness run by hand: a panic is a failed run"
)]

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tonic::transport::Endpoint;

mod report;
mod siege;
mod wire;

use report::*;
use siege::*;
use wire::*;

use clip_serve::{
    common::parse_duration,
    grpc::{
        pb::{self, embed_client::EmbedClient},
        status::code_name,
    },
};

/// Probes must answer within this.
const PROBE_TARGET: Duration = Duration::from_secs(1);
/// The server's peak resident memory must stay under this.
const RSS_TARGET: u64 = 5 << 29; // 2.5 GiB
/// A 1x1 PNG, for the classify body (labels are what it is about).
const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Attack {
    /// HTTP bodies that declare --declared-bytes, send 11 bytes and go quiet (--silent-uploads).
    Silent,
    /// --idle-sockets connections to each port that never send a byte.
    Idle,
    /// Hang-ups 0.5-5 ms after sending a delete, a collection delete or an upsert; then the store
    /// is checked for split writes.
    Hangup,
    /// Bodies of --amp-bytes in the worst JSON shapes, a few at once.
    Amplify,
    /// Connections that send their request 1 byte per --trickle-interval (half the body, half the
    /// headers).
    Trickle,
    /// Idle sockets on both ports kept open by an attacker that reconnects when closed, with
    /// probes at a kubelet's pace.
    Kubelet,
}

/// Attacks a clip-serve on loopback and prints what honest clients saw meanwhile (markdown).
#[derive(Debug, Clone, Parser)]
#[command(name = "clip-siege", version)]
struct Args {
    /// The server's HTTP address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// The server's gRPC address (loopback only).
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// Where probes go: the server's --probe-addr if it has one [default: --http-addr].
    #[arg(long)]
    probe_addr: Option<SocketAddr>,
    /// The probe path.
    #[arg(long, default_value = "/readyz")]
    probe_path: String,
    /// The server's process id, for its peak RSS (VmHWM) and whether it still runs.
    #[arg(long)]
    pid: Option<u32>,
    /// The loopback address the attacker connects from (honest clients use 127.0.0.1).
    #[arg(long, default_value = "127.0.0.2")]
    attacker_addr: IpAddr,
    /// Which attacks, in order (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "silent,idle,hangup,trickle,kubelet,amplify"
    )]
    attacks: Vec<Attack>,
    /// How long each timed attack lasts (silent, idle, amplify).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Silent uploads per round, one round each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    silent_uploads: Vec<usize>,
    /// The Content-Length a silent upload declares.
    #[arg(long, default_value_t = 32 << 20)]
    declared_bytes: u64,
    /// Idle connections to each port (HTTP and gRPC).
    #[arg(long, default_value_t = 1100)]
    idle_sockets: usize,
    /// Items upserted before each hang-up.
    #[arg(long, default_value_t = 1000)]
    hangup_items: usize,
    /// How long after sending the attacker hangs up (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.5ms,1ms,2ms,5ms", value_parser = parse_duration)]
    hangup_delays: Vec<Duration>,
    /// Times each hang-up delay is tried.
    #[arg(long, default_value_t = 2)]
    hangup_rounds: usize,
    /// Size of each amplification body (at most the server's --max-message-bytes).
    #[arg(long, default_value_t = 32 << 20)]
    amp_bytes: usize,
    /// Concurrent senders of each amplification shape (4 shapes).
    #[arg(long, default_value_t = 1)]
    amp_concurrency: usize,
    /// Trickling connections.
    #[arg(long, default_value_t = 256)]
    trickle_connections: usize,
    /// One byte per this.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    trickle_interval: Duration,
    /// How long the kubelet scenario lasts.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    kubelet_duration: Duration,
    /// How long the slow trickle lasts: past the server's body and header deadlines, to see
    /// whether it cuts them.
    #[arg(long, default_value = "35s", value_parser = parse_duration)]
    trickle_duration: Duration,
    /// Honest callers per door, each calling in a loop.
    #[arg(long, default_value_t = 2)]
    callers: usize,
    /// Pause between one caller's calls.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    call_interval: Duration,
    /// A small call or probe slower than this counts as failed (and is cut there).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    call_timeout: Duration,
    /// Time between probes.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    probe_interval: Duration,
    /// After each attack, how long to wait for the server to serve again before going on.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    settle: Duration,
    /// Append the markdown table to this file too.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write every number as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit with status 2 when a target is missed.
    #[arg(long)]
    strict: bool,
}

fn loopback(what: &str, ip: IpAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        ip.is_loopback(),
        "{what} {ip} is not a loopback address: clip-siege attacks loopback only"
    );
    Ok(())
}

fn render(args: &Args, attacker: Option<IpAddr>, rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Targets: small calls 100 % OK (or a quick 429 for the attacker's own key only), probes < {} s, \
         peak RSS < 2.5 GiB, 0 deleted items searchable, 0 zombies. Small calls: {} callers per door, \
         each a new connection per call, one short text; probes: GET {} on {} every {} (judged), and the gRPC health check on the \
         gRPC port (shown, not judged: probes belong on the probe listener); attacker from {}.\n\n",
        PROBE_TARGET.as_secs(),
        args.callers,
        args.probe_path,
        args.probe_addr.unwrap_or(args.http_addr),
        ms(args.probe_interval.as_secs_f64() * 1e3),
        attacker.map_or("127.0.0.1 (the callers' address)".to_string(), |a| a.to_string()),
    ));
    out.push_str(
        "| attack | HTTP small calls OK | HTTP p99 | gRPC small calls OK | gRPC p99 | probe max / p99 | gRPC health OK / max | peak RSS | lost | result |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        out.push_str(&row.markdown());
        out.push('\n');
    }
    out.push('\n');
    if rows.iter().any(|r| r.peak_since_start) {
        out.push_str("\\* peak since the server started (VmHWM could not be reset).\n\n");
    }
    for row in rows {
        out.push_str(&row.note());
        out.push('\n');
    }
    out
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let probe_addr = args.probe_addr.unwrap_or(args.http_addr);
    for (what, ip) in [
        ("--http-addr", args.http_addr.ip()),
        ("--grpc-addr", args.grpc_addr.ip()),
        ("--probe-addr", probe_addr.ip()),
        ("--attacker-addr", args.attacker_addr),
    ] {
        loopback(what, ip)?;
    }
    let args = Arc::new(args);
    if settle(&args).await.is_none() {
        anyhow::bail!(
            "the server does not serve small calls and probes on {} / {} / {} (is it up and ready?)",
            args.http_addr,
            args.grpc_addr,
            probe_addr
        );
    }
    // The attacker's address, if this host lets it be bound.
    let attacker = match connect(args.http_addr, Some(args.attacker_addr), args.call_timeout).await
    {
        Ok(_) => Some(args.attacker_addr),
        Err(e) => {
            eprintln!(
                "clip-siege: cannot connect from {} ({e}); the attacker uses 127.0.0.1 like the callers",
                args.attacker_addr
            );
            None
        }
    };
    let siege = Siege {
        args: Arc::clone(&args),
        attacker,
    };
    let mut rows = Vec::new();
    'attacks: for attack in &args.attacks {
        let mut batch = Vec::new();
        match attack {
            Attack::Silent => {
                for &n in &args.silent_uploads {
                    batch.push(siege.silent(n).await);
                }
            }
            Attack::Idle => batch.push(siege.idle(false).await),
            Attack::Kubelet => batch.push(siege.idle(true).await),
            Attack::Trickle => batch.push(siege.trickle().await),
            Attack::Amplify => batch.push(siege.amplify().await?),
            Attack::Hangup => batch.push(siege.hangup().await?),
        }
        for mut row in batch {
            let dead = args.pid.is_some_and(|pid| !alive(pid));
            if dead {
                row.lost = Some(Lost {
                    count: 1,
                    detail: "the server process is gone".into(),
                });
            } else {
                match settle(&args).await {
                    Some(t) => row.notes.push(format!(
                        "served again {:.1} s after the attack stopped",
                        t.as_secs_f64()
                    )),
                    None => row.notes.push(format!(
                        "did not serve again within {} s of the attack stopping",
                        args.settle.as_secs()
                    )),
                }
            }
            row.judge();
            eprintln!("clip-siege: {}", row.markdown());
            rows.push(row);
            if dead {
                break 'attacks;
            }
        }
    }
    let table = render(&args, attacker, &rows);
    print!("{table}");
    if let Some(path) = &args.markdown {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(table.as_bytes())?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(rows.iter().all(|r| r.missed.is_empty()))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let strict = args.strict;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clip-siege: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) if strict => {
            eprintln!("clip-siege: targets missed (--strict)");
            std::process::ExitCode::from(2)
        }
        Ok(false) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clip-siege: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_plain_and_chunked() {
        let plain = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((429, b"{}".to_vec())));
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, b"abcde".to_vec())));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn a_row_misses_what_it_misses() {
        let ok = |ms: f64| Call {
            ok: true,
            ms,
            code: String::new(),
        };
        let calls = Stat::of(&[ok(1.0), ok(2.0)]);
        let mut row = Row {
            attack: "x".into(),
            seconds: 1.0,
            http: calls.clone(),
            grpc: Stat::of(&[
                ok(1.0),
                Call {
                    ok: false,
                    ms: 5.0,
                    code: "429".into(),
                },
            ]),
            probe: Stat::of(&[ok(1500.0)]),
            health: calls,
            http_healthz: None,
            peak_rss_bytes: Some(3 << 30),
            peak_since_start: false,
            lost: Some(Lost {
                count: 0,
                detail: String::new(),
            }),
            notes: Vec::new(),
            missed: Vec::new(),
        };
        row.judge();
        assert_eq!(row.missed, ["gRPC calls", "probes", "RSS"]);
    }
}
