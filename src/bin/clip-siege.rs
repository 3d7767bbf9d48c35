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

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 on tokio sockets.

fn io_code(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused",
        ConnectionReset => "reset",
        ConnectionAborted => "aborted",
        BrokenPipe => "broken pipe",
        TimedOut => "timeout",
        UnexpectedEof => "closed",
        AddrNotAvailable => "no local address",
        _ => "io error",
    }
    .to_string()
}

/// A connection to `addr`, from `from` if given (both loopback: checked in `main`).
async fn connect(
    addr: SocketAddr,
    from: Option<IpAddr>,
    limit: Duration,
) -> Result<TcpStream, String> {
    let open = async {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }?;
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(addr).await
    };
    match tokio::time::timeout(limit, open).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(format!("connect {}", io_code(&e))),
        Err(_) => Err("connect timeout".into()),
    }
}

/// A request head; `len` adds a JSON content type and the length.
fn head(method: &str, path: &str, host: SocketAddr, len: Option<u64>) -> Vec<u8> {
    let mut h = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: clip-siege\r\nConnection: close\r\n"
    );
    if let Some(len) = len {
        h.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {len}\r\n"
        ));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Status and body of a whole response, if `buf` holds one's head.
fn parse_response(buf: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = &buf[end + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Some((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        },
    ))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| s.split(';').next())
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size.filter(|&s| s > 0) else {
            break;
        };
        let start = eol + 2;
        let stop = (start + size).min(b.len());
        out.extend_from_slice(&b[start..stop]);
        b = b.get(stop + 2..).unwrap_or(&[]);
    }
    out
}

/// One request on a new connection (`Connection: close`), the whole of it within `limit`. A server
/// that answers before reading the body (413, 429) and closes is still heard.
async fn http_call(
    addr: SocketAddr,
    from: Option<IpAddr>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    limit: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let call = async {
        let mut stream = connect(addr, from, limit).await?;
        let mut request = head(method, path, addr, body.map(|b| b.len() as u64));
        let small = body.is_some_and(|b| b.len() < 1 << 20);
        if small {
            request.extend_from_slice(body.unwrap_or_default());
        }
        let wrote = async {
            stream.write_all(&request).await?;
            if let Some(body) = body.filter(|_| !small) {
                stream.write_all(body).await?;
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        let mut buf = Vec::new();
        let read = stream.read_to_end(&mut buf).await;
        match parse_response(&buf) {
            Some(response) => Ok(response),
            None => Err(match (wrote, read) {
                (Err(e), _) | (_, Err(e)) => io_code(&e),
                _ if buf.is_empty() => "closed".into(),
                _ => "bad response".into(),
            }),
        }
    };
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

// ---------------------------------------------------------------------------------------------
// Honest clients, probes and the server's memory, while an attack runs.

#[derive(Debug, Clone)]
struct Call {
    ok: bool,
    ms: f64,
    code: String,
}

#[derive(Debug, Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn push(&self, started: Instant, result: Result<(), String>) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let call = match result {
            Ok(()) => Call {
                ok: true,
                ms,
                code: String::new(),
            },
            Err(code) => Call {
                ok: false,
                ms,
                code,
            },
        };
        if let Ok(mut calls) = self.0.lock() {
            calls.push(call);
        }
    }
    fn stat(&self) -> Stat {
        let calls = self.0.lock().map(|c| c.clone()).unwrap_or_default();
        Stat::of(&calls)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Calls of one kind: latencies over every call, failed ones included (cut at --call-timeout).
#[derive(Debug, Clone, Default, Serialize)]
struct Stat {
    total: usize,
    ok: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: BTreeMap<String, usize>,
}

impl Stat {
    fn of(calls: &[Call]) -> Stat {
        let mut ms: Vec<f64> = calls.iter().map(|c| c.ms).collect();
        ms.sort_by(f64::total_cmp);
        let mut errors = BTreeMap::new();
        for c in calls.iter().filter(|c| !c.ok) {
            *errors.entry(c.code.clone()).or_default() += 1;
        }
        Stat {
            total: calls.len(),
            ok: calls.iter().filter(|c| c.ok).count(),
            p50_ms: percentile(&ms, 50.0),
            p99_ms: percentile(&ms, 99.0),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
            errors,
        }
    }
    fn all_ok(&self) -> bool {
        self.total > 0 && self.ok == self.total
    }
    fn rate(&self) -> String {
        if self.total == 0 {
            return "no calls".into();
        }
        format!(
            "{:.1} % ({}/{})",
            100.0 * self.ok as f64 / self.total as f64,
            self.ok,
            self.total
        )
    }
    fn errors(&self) -> String {
        self.errors
            .iter()
            .map(|(code, n)| format!("{code} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.1} ms")
    } else if v < 10_000.0 {
        format!("{v:.0} ms")
    } else {
        format!("{:.1} s", v / 1e3)
    }
}

/// A small HTTP call: one short text, 200 with one embedding.
async fn small_http(args: &Args, n: u64) -> Result<(), String> {
    let body = serde_json::to_vec(&json!({ "input": [format!("a small call, number {n}")] }))
        .map_err(|e| e.to_string())?;
    let (status, reply) = http_call(
        args.http_addr,
        None,
        "POST",
        "/v1/embeddings",
        Some(&body),
        args.call_timeout,
    )
    .await?;
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let reply: Value = serde_json::from_slice(&reply).map_err(|_| "bad JSON".to_string())?;
    match reply["data"].as_array().map(Vec::len) {
        Some(1) => Ok(()),
        _ => Err("wrong reply".into()),
    }
}

async fn grpc_channel(args: &Args) -> Result<tonic::transport::Channel, String> {
    Endpoint::from_shared(format!("http://{}", args.grpc_addr))
        .map_err(|e| e.to_string())?
        .connect_timeout(args.call_timeout)
        .timeout(args.call_timeout)
        .connect()
        .await
        .map_err(|_| "connect failed".to_string())
}

/// A small gRPC call on a new connection: EmbedTexts with one short text.
async fn small_grpc(args: &Args, n: u64) -> Result<(), String> {
    let call = async {
        let mut client = EmbedClient::new(grpc_channel(args).await?);
        let reply = client
            .embed_texts(pb::EmbedTextsRequest {
                texts: vec![format!("a small call, number {n}")],
            })
            .await
            .map_err(|s| code_name(s.code()).to_string())?;
        match reply.get_ref().embeddings.len() {
            1 => Ok(()),
            _ => Err("wrong reply".to_string()),
        }
    };
    tokio::time::timeout(args.call_timeout, call)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

/// A probe: GET `path` on `addr`, 200.
async fn probe_http(args: &Args, addr: SocketAddr, path: &str) -> Result<(), String> {
    match http_call(addr, None, "GET", path, None, args.call_timeout).await? {
        (200, _) => Ok(()),
        (status, _) => Err(format!("HTTP {status}")),
    }
}

/// grpc.health.v1 Check of the whole server on a new connection: SERVING.
async fn probe_grpc_health(args: &Args) -> Result<(), String> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let call = async {
        let mut client = HealthClient::new(grpc_channel(args).await?);
        let reply = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|s| code_name(s.code()).to_string())?;
        match reply.get_ref().status {
            1 => Ok(()),
            other => Err(format!("status {other}")),
        }
    };
    tokio::time::timeout(args.call_timeout, call)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

/// The HTTP and gRPC callers, the probes and the RSS sampler of one attack.
struct Watch {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    http: Calls,
    grpc: Calls,
    probe: Calls,
    health: Calls,
    /// /healthz on the HTTP port when probes go to a separate listener.
    http_healthz: Option<Calls>,
    rss_max_kib: Arc<Mutex<u64>>,
    peak_reset: bool,
    started: Instant,
    /// The server's RSS when the attack began (what earlier attacks left behind).
    rss_at_start_kib: Option<u64>,
}

/// Sleeps `d`, or less when `stop` turns true.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = until_stopped(stop) => {}
    }
}

/// Returns when `stop` turns true (or its sender is gone).
async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

impl Watch {
    fn start(args: &Arc<Args>) -> Watch {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let (http, grpc, probe, health) = (
            Calls::default(),
            Calls::default(),
            Calls::default(),
            Calls::default(),
        );
        let probe_addr = args.probe_addr.unwrap_or(args.http_addr);
        let http_healthz = (probe_addr != args.http_addr).then(Calls::default);
        for c in 0..args.callers as u64 {
            for door in [0, 1] {
                let (args, mut stop) = (Arc::clone(args), stop_rx.clone());
                let calls: Calls = if door == 0 {
                    http.clone()
                } else {
                    grpc.clone()
                };
                tasks.spawn(async move {
                    let mut n = c * 1_000_000;
                    while !stopped(&stop) {
                        let t = Instant::now();
                        let r = if door == 0 {
                            small_http(&args, n).await
                        } else {
                            small_grpc(&args, n).await
                        };
                        calls.push(t, r);
                        n += 1;
                        pause(&mut stop, args.call_interval).await;
                    }
                });
            }
        }
        {
            let (args, mut stop) = (Arc::clone(args), stop_rx.clone());
            let (probe, health, healthz) = (
                Calls::clone(&probe),
                Calls::clone(&health),
                http_healthz.clone(),
            );
            tasks.spawn(async move {
                while !stopped(&stop) {
                    let t = Instant::now();
                    let probing = async {
                        let r = probe_http(&args, probe_addr, &args.probe_path).await;
                        probe.push(t, r);
                    };
                    let checking = async {
                        let r = probe_grpc_health(&args).await;
                        health.push(t, r);
                    };
                    let port = async {
                        if let Some(calls) = &healthz {
                            let r = probe_http(&args, args.http_addr, "/healthz").await;
                            calls.push(t, r);
                        }
                    };
                    tokio::join!(probing, checking, port);
                    let left = args.probe_interval.saturating_sub(t.elapsed());
                    pause(&mut stop, left).await;
                }
            });
        }
        let rss_max_kib = Arc::new(Mutex::new(0));
        let mut peak_reset = false;
        if let Some(pid) = args.pid {
            // Writing 5 to clear_refs resets VmHWM (Linux 4.0+).
            peak_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
            let (max, mut stop) = (Arc::clone(&rss_max_kib), stop_rx.clone());
            tasks.spawn(async move {
                while !stopped(&stop) {
                    if let Some(kib) = proc_status_kib(pid, "VmRSS:")
                        && let Ok(mut m) = max.lock()
                    {
                        *m = (*m).max(kib);
                    }
                    pause(&mut stop, Duration::from_millis(50)).await;
                }
            });
        }
        Watch {
            stop,
            tasks,
            http,
            grpc,
            probe,
            health,
            http_healthz,
            rss_max_kib,
            peak_reset,
            started: Instant::now(),
            rss_at_start_kib: args.pid.and_then(|pid| proc_status_kib(pid, "VmRSS:")),
        }
    }

    async fn finish(mut self, args: &Args, attack: String) -> Row {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let sampled = self.rss_max_kib.lock().map(|m| *m).unwrap_or(0);
        let peak_kib = args
            .pid
            .map(|pid| proc_status_kib(pid, "VmHWM:").unwrap_or(0).max(sampled));
        let mut notes = Vec::new();
        if let Some(kib) = self.rss_at_start_kib {
            notes.push(format!("RSS at the start {} MiB", kib >> 10));
        }
        Row {
            attack,
            seconds: self.started.elapsed().as_secs_f64(),
            http: self.http.stat(),
            grpc: self.grpc.stat(),
            probe: self.probe.stat(),
            health: self.health.stat(),
            http_healthz: self.http_healthz.map(|c| c.stat()),
            peak_rss_bytes: peak_kib.filter(|&k| k > 0).map(|k| k * 1024),
            peak_since_start: !self.peak_reset,
            lost: None,
            notes,
            missed: Vec::new(),
        }
    }
}

/// A `kB` field of /proc/PID/status.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Whether the process still runs (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    !status
        .lines()
        .any(|l| l.starts_with("State:") && (l.contains("Z (") || l.contains("X (")))
}

/// Waits until a small call on each door and a probe succeed; how long that took, or None when
/// it did not happen within --settle.
async fn settle(args: &Args) -> Option<Duration> {
    let started = Instant::now();
    let probe_addr = args.probe_addr.unwrap_or(args.http_addr);
    let mut n = 900_000_000;
    while started.elapsed() < args.settle {
        n += 1;
        let (h, g, p) = tokio::join!(
            small_http(args, n),
            small_grpc(args, n),
            probe_http(args, probe_addr, &args.probe_path)
        );
        if h.is_ok() && g.is_ok() && p.is_ok() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The results.

#[derive(Debug, Serialize)]
struct Lost {
    /// Items or collections lost or split; 0 is the target.
    count: u64,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Row {
    attack: String,
    seconds: f64,
    http: Stat,
    grpc: Stat,
    probe: Stat,
    health: Stat,
    http_healthz: Option<Stat>,
    peak_rss_bytes: Option<u64>,
    /// VmHWM could not be reset before the attack: the peak is the process's since it started.
    peak_since_start: bool,
    lost: Option<Lost>,
    notes: Vec<String>,
    /// The targets this attack missed.
    missed: Vec<String>,
}

impl Row {
    fn judge(&mut self) {
        let mut missed = Vec::new();
        if !self.http.all_ok() {
            missed.push("HTTP calls");
        }
        if !self.grpc.all_ok() {
            missed.push("gRPC calls");
        }
        if !self.probe.all_ok() || self.probe.max_ms >= PROBE_TARGET.as_secs_f64() * 1e3 {
            missed.push("probes");
        }
        if self.peak_rss_bytes.is_some_and(|b| b >= RSS_TARGET) {
            missed.push("RSS");
        }
        if self.lost.as_ref().is_some_and(|l| l.count > 0) {
            missed.push("lost");
        }
        self.missed = missed.into_iter().map(String::from).collect();
    }

    fn markdown(&self) -> String {
        let rss = match self.peak_rss_bytes {
            Some(b) => format!(
                "{:.0} MiB{}",
                b as f64 / (1 << 20) as f64,
                if self.peak_since_start { "*" } else { "" }
            ),
            None => "-".into(),
        };
        let lost = match &self.lost {
            Some(l) => l.detail.clone(),
            None => "-".into(),
        };
        let result = if self.missed.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", self.missed.join(", "))
        };
        format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} |",
            self.attack,
            self.http.rate(),
            ms(self.http.p99_ms),
            self.grpc.rate(),
            ms(self.grpc.p99_ms),
            ms(self.probe.max_ms),
            ms(self.probe.p99_ms),
            self.health.rate(),
            ms(self.health.max_ms),
            rss,
            lost,
            result
        )
    }

    fn note(&self) -> String {
        let mut parts = Vec::new();
        let failed = |name: &str, s: &Stat| {
            (s.ok < s.total).then(|| format!("{name} failures: {}", s.errors()))
        };
        parts.extend(failed("HTTP", &self.http));
        parts.extend(failed("gRPC", &self.grpc));
        parts.extend(failed("probe", &self.probe));
        parts.extend(failed("gRPC health", &self.health));
        if let Some(h) = &self.http_healthz {
            parts.push(format!(
                "/healthz on the HTTP port: {}, max {}{}",
                h.rate(),
                ms(h.max_ms),
                if h.ok < h.total {
                    format!(" ({})", h.errors())
                } else {
                    String::new()
                }
            ));
        }
        parts.extend(self.notes.iter().cloned());
        format!("- **{}**: {}.", self.attack, parts.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Attacker connections and what became of them.

#[derive(Debug, Clone, Copy)]
enum Fate {
    ConnectFailed,
    /// Still open when the attack stopped.
    Open,
    /// Closed (or reset) by the server, this long into the attack, without an answer.
    Closed(f64),
    /// Answered with this status before the request was complete.
    Answered(u16, f64),
    /// The whole request went out and this was the answer (0: none).
    Completed(u16),
}

#[derive(Debug, Default)]
struct Census {
    connect_failed: usize,
    open: usize,
    closed: usize,
    answered: BTreeMap<u16, usize>,
    completed: BTreeMap<u16, usize>,
    first_cut_s: Option<f64>,
    last_cut_s: Option<f64>,
    reconnects: usize,
}

impl Census {
    fn add(&mut self, fates: &[Fate]) {
        self.reconnects += fates.len().saturating_sub(1);
        for fate in fates {
            let cut_at = match *fate {
                Fate::ConnectFailed => {
                    self.connect_failed += 1;
                    None
                }
                Fate::Open => {
                    self.open += 1;
                    None
                }
                Fate::Closed(at) => {
                    self.closed += 1;
                    Some(at)
                }
                Fate::Answered(status, at) => {
                    *self.answered.entry(status).or_default() += 1;
                    Some(at)
                }
                Fate::Completed(status) => {
                    *self.completed.entry(status).or_default() += 1;
                    None
                }
            };
            if let Some(at) = cut_at {
                self.first_cut_s = Some(self.first_cut_s.map_or(at, |f| f.min(at)));
                self.last_cut_s = Some(self.last_cut_s.map_or(at, |l| l.max(at)));
            }
        }
    }

    fn describe(&self, what: &str) -> String {
        let counts = |m: &BTreeMap<u16, usize>| {
            m.iter()
                .map(|(s, n)| {
                    if *s == 0 {
                        format!("no answer x{n}")
                    } else {
                        format!("{s} x{n}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = vec![format!("{} open at the end", self.open)];
        if self.closed > 0 {
            parts.push(format!("{} closed by the server", self.closed));
        }
        if !self.answered.is_empty() {
            parts.push(format!("answered early: {}", counts(&self.answered)));
        }
        if !self.completed.is_empty() {
            parts.push(format!("completed: {}", counts(&self.completed)));
        }
        if let (Some(first), Some(last)) = (self.first_cut_s, self.last_cut_s) {
            parts.push(format!("cut between {first:.1} s and {last:.1} s"));
        }
        if self.connect_failed > 0 {
            parts.push(format!("{} connects failed", self.connect_failed));
        }
        if self.reconnects > 0 {
            parts.push(format!("{} reconnects", self.reconnects));
        }
        format!("{what}: {}", parts.join(", "))
    }
}

/// What became of a connection: the server answered or closed it, or `stop` came first.
async fn outcome(
    stream: &mut TcpStream,
    stop: &mut watch::Receiver<bool>,
    started: Instant,
) -> Fate {
    let read = async {
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        buf
    };
    tokio::select! {
        buf = read => {
            let at = started.elapsed().as_secs_f64();
            match parse_response(&buf) {
                Some((status, _)) => Fate::Answered(status, at),
                None => Fate::Closed(at),
            }
        }
        () = until_stopped(stop) => Fate::Open,
    }
}

/// The attack's connections run until `stop`; a bounded number connect at once.
struct Attackers {
    stop: watch::Sender<bool>,
    tasks: JoinSet<Vec<Fate>>,
    started: Instant,
    gate: Arc<Semaphore>,
}

impl Attackers {
    fn new() -> Attackers {
        Attackers {
            stop: watch::channel(false).0,
            tasks: JoinSet::new(),
            started: Instant::now(),
            gate: Arc::new(Semaphore::new(128)),
        }
    }

    async fn connect(
        gate: &Semaphore,
        addr: SocketAddr,
        from: Option<IpAddr>,
    ) -> Result<TcpStream, String> {
        let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
        connect(addr, from, Duration::from_secs(5)).await
    }

    /// `count` connections to `addr` that send `first` (maybe nothing), then wait; with
    /// `reconnect`, one closed by the server is opened again a second later.
    fn hold(
        &mut self,
        count: usize,
        addr: SocketAddr,
        from: Option<IpAddr>,
        first: Arc<Vec<u8>>,
        reconnect: bool,
    ) {
        for _ in 0..count {
            let (mut stop, started) = (self.stop.subscribe(), self.started);
            let (gate, first) = (Arc::clone(&self.gate), Arc::clone(&first));
            self.tasks.spawn(async move {
                let mut fates = Vec::new();
                while !stopped(&stop) {
                    let fate = match Attackers::connect(&gate, addr, from).await {
                        Ok(mut stream) => {
                            if stream.write_all(&first).await.is_ok() {
                                outcome(&mut stream, &mut stop, started).await
                            } else {
                                Fate::Closed(started.elapsed().as_secs_f64())
                            }
                        }
                        Err(_) => Fate::ConnectFailed,
                    };
                    fates.push(fate);
                    if matches!(fate, Fate::Open) || !reconnect || fates.len() >= 1000 {
                        break;
                    }
                    pause(&mut stop, Duration::from_secs(1)).await;
                }
                fates
            });
        }
    }

    /// `count` connections that send `now`, then `slow` one byte per `interval`, then read the
    /// answer.
    fn trickle(
        &mut self,
        count: usize,
        addr: SocketAddr,
        from: Option<IpAddr>,
        now: Arc<Vec<u8>>,
        slow: Arc<Vec<u8>>,
        interval: Duration,
    ) {
        for _ in 0..count {
            let (mut stop, started) = (self.stop.subscribe(), self.started);
            let (gate, now, slow) = (Arc::clone(&self.gate), Arc::clone(&now), Arc::clone(&slow));
            self.tasks.spawn(async move {
                let Ok(mut stream) = Attackers::connect(&gate, addr, from).await else {
                    return vec![Fate::ConnectFailed];
                };
                let (mut rd, mut wr) = stream.split();
                let reader = async {
                    let mut buf = Vec::new();
                    let _ = rd.read_to_end(&mut buf).await;
                    buf
                };
                tokio::pin!(reader);
                let writer = async {
                    wr.write_all(&now).await?;
                    for b in slow.iter() {
                        tokio::time::sleep(interval).await;
                        wr.write_all(&[*b]).await?;
                    }
                    Ok::<_, std::io::Error>(())
                };
                let cut = |buf: Vec<u8>| {
                    let at = started.elapsed().as_secs_f64();
                    match parse_response(&buf) {
                        Some((status, _)) => Fate::Answered(status, at),
                        None => Fate::Closed(at),
                    }
                };
                let fate = tokio::select! {
                    buf = &mut reader => cut(buf),
                    wrote = writer => match wrote {
                        Ok(()) => match tokio::time::timeout(Duration::from_secs(10), &mut reader).await {
                            Ok(buf) => Fate::Completed(parse_response(&buf).map_or(0, |r| r.0)),
                            Err(_) => Fate::Completed(0),
                        },
                        Err(_) => Fate::Closed(started.elapsed().as_secs_f64()),
                    },
                    () = until_stopped(&mut stop) => Fate::Open,
                };
                vec![fate]
            });
        }
    }

    async fn finish(mut self) -> Census {
        let _ = self.stop.send(true);
        let mut census = Census::default();
        while let Some(fates) = self.tasks.join_next().await {
            if let Ok(fates) = fates {
                census.add(&fates);
            }
        }
        census
    }
}

// ---------------------------------------------------------------------------------------------
// The attacks.

struct Siege {
    args: Arc<Args>,
    /// None when the attacker address could not be bound: attacker and callers share 127.0.0.1.
    attacker: Option<IpAddr>,
}

impl Siege {
    /// 1. N bodies declaring 32 MiB, 11 bytes sent, then silence.
    async fn silent(&self, n: usize) -> Row {
        let args = &self.args;
        let mut attackers = Attackers::new();
        let mut first = head(
            "POST",
            "/v1/embeddings",
            args.http_addr,
            Some(args.declared_bytes),
        );
        first.extend_from_slice(br#"{"input":[""#);
        attackers.hold(n, args.http_addr, self.attacker, Arc::new(first), false);
        // The uploads are in before anyone is measured.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let watch = Watch::start(args);
        tokio::time::sleep(args.duration).await;
        let mut row = watch.finish(args, format!("silent uploads x{n}")).await;
        let census = attackers.finish().await;
        row.notes.push(census.describe("attacker uploads"));
        row
    }

    /// 2 and 6. Idle connections to both ports; `kubelet`: kept open (reconnecting).
    async fn idle(&self, kubelet: bool) -> Row {
        let args = &self.args;
        let mut http = Attackers::new();
        let mut grpc = Attackers::new();
        let nothing = Arc::new(Vec::new());
        http.hold(
            args.idle_sockets,
            args.http_addr,
            self.attacker,
            Arc::clone(&nothing),
            kubelet,
        );
        grpc.hold(
            args.idle_sockets,
            args.grpc_addr,
            self.attacker,
            nothing,
            kubelet,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let watch = Watch::start(args);
        let (duration, name) = if kubelet {
            (
                args.kubelet_duration,
                format!(
                    "kubelet: {} idle sockets per port held + probes",
                    args.idle_sockets
                ),
            )
        } else {
            (
                args.duration,
                format!("idle sockets x{} per port", args.idle_sockets),
            )
        };
        tokio::time::sleep(duration).await;
        let mut row = watch.finish(args, name).await;
        row.notes
            .push(http.finish().await.describe("HTTP idle sockets"));
        row.notes
            .push(grpc.finish().await.describe("gRPC idle sockets"));
        row
    }

    /// 5. Requests sent 1 byte per --trickle-interval: half trickle the body, half the headers.
    async fn trickle(&self) -> Row {
        let args = &self.args;
        let bytes_needed = (args.trickle_duration.as_secs_f64()
            / args.trickle_interval.as_secs_f64())
        .ceil() as usize
            + 8;
        // A valid body padded with spaces, so that it lasts past the attack.
        let mut body = br#"{"input":["a slow text"]}"#.to_vec();
        body.resize(body.len().max(bytes_needed), b' ');
        let body_head = head(
            "POST",
            "/v1/embeddings",
            args.http_addr,
            Some(body.len() as u64),
        );
        let mut attackers = Attackers::new();
        let half = args.trickle_connections / 2;
        attackers.trickle(
            args.trickle_connections - half,
            args.http_addr,
            self.attacker,
            Arc::new(body_head.clone()),
            Arc::new(body.clone()),
            args.trickle_interval,
        );
        // Slowloris: the request line at once, the headers (and the body) trickled.
        let line_end = body_head
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(0, |p| p + 2);
        let mut rest = body_head[line_end..].to_vec();
        rest.extend_from_slice(&body);
        attackers.trickle(
            half,
            args.http_addr,
            self.attacker,
            Arc::new(body_head[..line_end].to_vec()),
            Arc::new(rest),
            args.trickle_interval,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let watch = Watch::start(args);
        tokio::time::sleep(args.trickle_duration).await;
        let mut row = watch
            .finish(
                args,
                format!(
                    "slow trickle x{} (1 B per {})",
                    args.trickle_connections,
                    ms(args.trickle_interval.as_secs_f64() * 1e3)
                ),
            )
            .await;
        row.notes.push(
            attackers
                .finish()
                .await
                .describe("trickling connections (half body, half headers)"),
        );
        row
    }

    /// 4. The worst JSON shapes at --amp-bytes, sent again and again for --duration.
    async fn amplify(&self) -> anyhow::Result<Row> {
        let args = &self.args;
        let collection = "siege-amp";
        let dimension = self.create(collection).await?;
        let cap = args.amp_bytes;
        let fill = |prefix: &str, unit: &dyn Fn(usize) -> String, last: &str, suffix: &str| {
            let mut body = prefix.as_bytes().to_vec();
            let room = cap.saturating_sub(suffix.len() + last.len());
            let mut i = 0;
            loop {
                let u = unit(i);
                if body.len() + u.len() > room {
                    break;
                }
                body.extend_from_slice(u.as_bytes());
                i += 1;
            }
            body.extend_from_slice(last.as_bytes());
            body.extend_from_slice(suffix.as_bytes());
            (body, i + 1)
        };
        let vector = vec!["0.1"; dimension].join(",");
        let shapes = vec![
            (
                "tiny items",
                "/v1/embeddings",
                fill(r#"{"input":["#, &|_| r#""a","#.into(), r#""a""#, "]}"),
            ),
            (
                "one item, a huge nested array",
                "/v1/embeddings",
                fill(r#"{"input":[["#, &|_| "[0],".into(), "[0]", "]]}"),
            ),
            (
                "a labels string of commas",
                "/v1/classify",
                fill(
                    &format!(r#"{{"input":[{{"image":"{PNG_1X1}"}}],"labels":""#),
                    &|_| "a,".into(),
                    "a",
                    r#""}"#,
                ),
            ),
            (
                "metadata with millions of keys",
                "/v1/collections/siege-amp/items",
                fill(
                    &format!(r#"{{"items":[{{"id":"m","vector":[{vector}],"metadata":{{"#),
                    &|i| format!(r#""{i:x}":"","#),
                    r#""end":"""#,
                    "}}]}",
                ),
            ),
        ];
        let watch = Watch::start(args);
        let deadline = Instant::now() + args.duration;
        let mut senders = JoinSet::new();
        let mut notes = Vec::new();
        for (s, (name, path, (body, units))) in shapes.into_iter().enumerate() {
            notes.push(format!("{name}: {units} elements in {} bytes", body.len()));
            let body = Arc::new(body);
            for _ in 0..args.amp_concurrency {
                let (args, body, from) = (Arc::clone(args), Arc::clone(&body), self.attacker);
                senders.spawn(async move {
                    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
                    while Instant::now() < deadline {
                        // A send started before the deadline is heard out (the server may take
                        // long to parse): the callers and probes are measured until then.
                        let limit = Duration::from_secs(60);
                        let answer =
                            match http_call(args.http_addr, from, "POST", path, Some(&body), limit)
                                .await
                            {
                                Ok((status, _)) => status.to_string(),
                                Err(e) => e,
                            };
                        *answers.entry(answer).or_default() += 1;
                    }
                    (s, answers)
                });
            }
        }
        let mut answers: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); notes.len()];
        while let Some(Ok((s, a))) = senders.join_next().await {
            for (k, n) in a {
                *answers[s].entry(k).or_default() += n;
            }
        }
        let mut row = watch
            .finish(
                args,
                format!(
                    "JSON amplification: 4 shapes x{} at {} MiB",
                    args.amp_concurrency,
                    cap >> 20
                ),
            )
            .await;
        for (note, answers) in notes.iter().zip(&answers) {
            let answers: Vec<String> = answers.iter().map(|(k, n)| format!("{k} x{n}")).collect();
            row.notes
                .push(format!("{note}, answered {}", answers.join(", ")));
        }
        self.drop_collection(collection).await;
        Ok(row)
    }

    /// 3. Hang-ups right after a write is sent; then the store is checked for splits.
    async fn hangup(&self) -> anyhow::Result<Row> {
        let args = &self.args;
        let watch = Watch::start(args);
        let mut deleted_searchable = 0u64;
        let mut delete_splits = 0usize;
        let mut deletes_done = 0usize;
        let mut zombies = 0u64;
        let mut zombie_detail = BTreeMap::<String, usize>::new();
        let mut drops_done = 0usize;
        let mut unsearchable = 0u64;
        let mut ghosts = 0u64;
        let mut upsert_splits = 0usize;
        let mut upserts_done = 0usize;
        let mut trials = 0usize;
        for round in 0..args.hangup_rounds {
            for (d, delay) in args.hangup_delays.iter().enumerate() {
                trials += 1;
                let ids: Vec<String> = (0..args.hangup_items)
                    .map(|i| format!("item-{i}"))
                    .collect();
                // A delete of every item, hung up on.
                let name = format!("siege-del-{round}-{d}");
                let dimension = self.create(&name).await?;
                self.upsert(&name, &ids, dimension, round * 100 + d).await?;
                let body = serde_json::to_vec(&json!({ "ids": ids }))?;
                self.hang_up(
                    "POST",
                    &format!("/v1/collections/{name}/items/delete"),
                    Some(&body),
                    *delay,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (_, missing) = self.get_items(&name, &ids).await?;
                let hits = self.search(&name, dimension).await?;
                let split = missing.iter().filter(|id| hits.contains(*id)).count() as u64;
                deletes_done += usize::from(!missing.is_empty());
                deleted_searchable += split;
                delete_splits += usize::from(split > 0);
                self.drop_collection(&name).await;

                // A collection delete, hung up on.
                let name = format!("siege-drop-{round}-{d}");
                let dimension = self.create(&name).await?;
                self.upsert(&name, &ids, dimension, round * 100 + d).await?;
                self.hang_up("DELETE", &format!("/v1/collections/{name}"), None, *delay)
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let path = format!("/v1/collections/{name}");
                let get = self.status("GET", &path, None).await;
                let delete = self.status("DELETE", &path, None).await;
                let create = self
                    .status("POST", "/v1/collections", Some(json!({ "name": name })))
                    .await;
                drops_done += usize::from(get == 404);
                // Consistent: (200, 200, 201) not deleted, (404, 404, 201) deleted.
                if !matches!((get, delete, create), (200, 200, 201) | (404, 404, 201)) {
                    zombies += 1;
                    *zombie_detail
                        .entry(format!("GET {get}, DELETE {delete}, re-create {create}"))
                        .or_default() += 1;
                }
                self.drop_collection(&name).await;

                // An upsert, hung up on.
                let name = format!("siege-up-{round}-{d}");
                let dimension = self.create(&name).await?;
                let body = serde_json::to_vec(&upsert_body(&ids, dimension, round * 100 + d))?;
                self.hang_up(
                    "POST",
                    &format!("/v1/collections/{name}/items"),
                    Some(&body),
                    *delay,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (present, _) = self.get_items(&name, &ids).await?;
                let hits = self.search(&name, dimension).await?;
                let lost = present.iter().filter(|id| !hits.contains(*id)).count() as u64;
                ghosts += hits.iter().filter(|id| !present.contains(*id)).count() as u64;
                upserts_done += usize::from(!present.is_empty());
                unsearchable += lost;
                upsert_splits += usize::from(lost > 0);
                self.drop_collection(&name).await;
            }
        }
        let mut row = watch
            .finish(
                args,
                format!(
                    "hang-up during writes ({} items; closed {} ms after sending)",
                    args.hangup_items,
                    args.hangup_delays
                        .iter()
                        .map(|d| format!("{}", d.as_secs_f64() * 1e3))
                        .collect::<Vec<_>>()
                        .join("/"),
                ),
            )
            .await;
        row.lost = Some(Lost {
            count: deleted_searchable + zombies + unsearchable + ghosts,
            detail: format!(
                "{deleted_searchable} deleted searchable, {zombies} zombies, {unsearchable} upserted unsearchable"
            ),
        });
        row.notes.push(format!(
            "{trials} trials of each write ({} rounds x {} delays); deletes that took effect: {deletes_done}, \
             of them split (items/get missing, search finds them): {delete_splits}; collection deletes \
             that took effect: {drops_done}, zombies: {zombies}{}; upserts that took effect: \
             {upserts_done}, of them split (on disk, not found by search): {upsert_splits}; items \
             searchable but not on disk: {ghosts}",
            args.hangup_rounds,
            args.hangup_delays.len(),
            if zombie_detail.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    zombie_detail
                        .iter()
                        .map(|(k, n)| format!("{k}: x{n}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        ));
        Ok(row)
    }

    /// Sends a whole request from the attacker's address, waits `delay` and closes the socket.
    async fn hang_up(&self, method: &str, path: &str, body: Option<&[u8]>, delay: Duration) {
        let args = &self.args;
        let Ok(mut stream) = connect(args.http_addr, self.attacker, args.call_timeout).await else {
            return;
        };
        let mut request = head(method, path, args.http_addr, body.map(|b| b.len() as u64));
        request.extend_from_slice(body.unwrap_or_default());
        if stream.write_all(&request).await.is_err() {
            return;
        }
        // Sub-millisecond: a spin, not the timer wheel (1 ms granularity).
        let sent = Instant::now();
        while sent.elapsed() < delay {
            std::hint::spin_loop();
        }
        drop(stream);
    }

    /// An API call as an honest client; the status and the JSON reply (Null if none).
    async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let body = body.map(|b| serde_json::to_vec(&b)).transpose()?;
        let (status, reply) = http_call(
            self.args.http_addr,
            None,
            method,
            path,
            body.as_deref(),
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{method} {path}: {e}"))?;
        Ok((
            status,
            serde_json::from_slice(&reply).unwrap_or(Value::Null),
        ))
    }

    async fn status(&self, method: &str, path: &str, body: Option<Value>) -> u16 {
        self.api(method, path, body).await.map_or(0, |(s, _)| s)
    }

    /// Creates collection `name` (dropping an old one first); its dimension.
    async fn create(&self, name: &str) -> anyhow::Result<usize> {
        self.drop_collection(name).await;
        let (status, reply) = self
            .api("POST", "/v1/collections", Some(json!({ "name": name })))
            .await?;
        anyhow::ensure!(status == 201, "creating {name}: HTTP {status} {reply}");
        reply["dimension"]
            .as_u64()
            .map(|d| d as usize)
            .with_context(|| format!("creating {name}: no dimension in {reply}"))
    }

    async fn drop_collection(&self, name: &str) {
        let _ = self
            .status("DELETE", &format!("/v1/collections/{name}"), None)
            .await;
    }

    async fn upsert(
        &self,
        name: &str,
        ids: &[String],
        dimension: usize,
        seed: usize,
    ) -> anyhow::Result<()> {
        let (status, reply) = self
            .api(
                "POST",
                &format!("/v1/collections/{name}/items"),
                Some(upsert_body(ids, dimension, seed)),
            )
            .await?;
        anyhow::ensure!(
            status == 200,
            "upserting into {name}: HTTP {status} {reply}"
        );
        Ok(())
    }

    /// The ids items/get finds, and those it says are missing.
    async fn get_items(
        &self,
        name: &str,
        ids: &[String],
    ) -> anyhow::Result<(HashSet<String>, HashSet<String>)> {
        let (status, reply) = self
            .api(
                "POST",
                &format!("/v1/collections/{name}/items/get"),
                Some(json!({ "ids": ids })),
            )
            .await?;
        anyhow::ensure!(status == 200, "items/get on {name}: HTTP {status} {reply}");
        let strings = |v: &Value| -> HashSet<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        };
        let present = reply["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["id"].as_str().map(String::from))
            .collect();
        Ok((present, strings(&reply["missing"])))
    }

    /// The ids a search with top_k = --hangup-items finds (every item of a collection that size).
    async fn search(&self, name: &str, dimension: usize) -> anyhow::Result<HashSet<String>> {
        let (status, reply) = self
            .api(
                "POST",
                &format!("/v1/collections/{name}/search"),
                Some(json!({
                    "query": { "vector": vec![1.0f32; dimension] },
                    "top_k": self.args.hangup_items,
                })),
            )
            .await?;
        anyhow::ensure!(status == 200, "search on {name}: HTTP {status} {reply}");
        Ok(reply["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["id"].as_str().map(String::from))
            .collect())
    }
}

/// Items with pseudo-random vectors (xorshift from `seed`) and a little metadata.
fn upsert_body(ids: &[String], dimension: usize, seed: usize) -> Value {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let items: Vec<Value> = ids
        .iter()
        .map(|id| {
            let vector: Vec<f32> = (0..dimension).map(|_| next()).collect();
            json!({ "id": id, "vector": vector, "metadata": { "source": "siege" } })
        })
        .collect();
    json!({ "items": items })
}

// ---------------------------------------------------------------------------------------------

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
