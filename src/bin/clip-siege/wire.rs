//! The wire side of the siege: raw HTTP/1 requests and replies, the honest small calls and probes,
//! and their latency statistics.

use super::*;

// Raw HTTP/1.1 on tokio sockets.

pub(crate) fn io_code(e: &std::io::Error) -> String {
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
pub(crate) async fn connect(
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
pub(crate) fn head(method: &str, path: &str, host: SocketAddr, len: Option<u64>) -> Vec<u8> {
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
pub(crate) fn parse_response(buf: &[u8]) -> Option<(u16, Vec<u8>)> {
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

pub(crate) fn dechunk(mut b: &[u8]) -> Vec<u8> {
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
pub(crate) async fn http_call(
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
pub(crate) struct Call {
    pub(crate) ok: bool,
    pub(crate) ms: f64,
    pub(crate) code: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Calls(pub(crate) Arc<Mutex<Vec<Call>>>);

impl Calls {
    pub(crate) fn push(&self, started: Instant, result: Result<(), String>) {
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
    pub(crate) fn stat(&self) -> Stat {
        let calls = self.0.lock().map(|c| c.clone()).unwrap_or_default();
        Stat::of(&calls)
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Calls of one kind: latencies over every call, failed ones included (cut at --call-timeout).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Stat {
    pub(crate) total: usize,
    pub(crate) ok: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) errors: BTreeMap<String, usize>,
}

impl Stat {
    pub(crate) fn of(calls: &[Call]) -> Stat {
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
    pub(crate) fn all_ok(&self) -> bool {
        self.total > 0 && self.ok == self.total
    }
    pub(crate) fn rate(&self) -> String {
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
    pub(crate) fn errors(&self) -> String {
        self.errors
            .iter()
            .map(|(code, n)| format!("{code} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(crate) fn ms(v: f64) -> String {
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
pub(crate) async fn small_http(args: &Args, n: u64) -> Result<(), String> {
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

pub(crate) async fn grpc_channel(args: &Args) -> Result<tonic::transport::Channel, String> {
    Endpoint::from_shared(format!("http://{}", args.grpc_addr))
        .map_err(|e| e.to_string())?
        .connect_timeout(args.call_timeout)
        .timeout(args.call_timeout)
        .connect()
        .await
        .map_err(|_| "connect failed".to_string())
}

/// A small gRPC call on a new connection: EmbedTexts with one short text.
pub(crate) async fn small_grpc(args: &Args, n: u64) -> Result<(), String> {
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
pub(crate) async fn probe_http(args: &Args, addr: SocketAddr, path: &str) -> Result<(), String> {
    match http_call(addr, None, "GET", path, None, args.call_timeout).await? {
        (200, _) => Ok(()),
        (status, _) => Err(format!("HTTP {status}")),
    }
}

/// grpc.health.v1 Check of the whole server on a new connection: SERVING.
pub(crate) async fn probe_grpc_health(args: &Args) -> Result<(), String> {
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
