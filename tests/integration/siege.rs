//! The doors under attack by clients that hold no key (issue: siege-proof): silent uploads, idle
//! and slow connections, one peer taking every place, probes behind a full pool, and browser-borne
//! requests. Each test here failed on the server before these bounds existed.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use clip_serve::grpc::pb;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::Instant,
};

use crate::common::{config, parse_http, serve, tiny_model};

/// A connection from a loopback address of the attacker's own (all of 127.0.0.0/8 is this host).
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Whether the server closes `conn` (EOF or reset) within `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A reply (408 and the like) before the close.
            Ok(Ok(_)) => continue,
        }
    }
}

async fn post(addr: SocketAddr, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply).await;
    parse_http(&reply).unwrap_or_default()
}

const JSON: &str = "Content-Type: application/json\r\n";
const SMALL: &str = r#"{"input": ["a small call"]}"#;

/// Eight uploads that declare 32 MiB each, send 11 bytes and go quiet held the whole default byte
/// budget before: now they hold what arrived, and small calls on both doors go through; the
/// silent ones are cut off by the minimum rate and answered 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_uploads_hold_only_what_arrived_and_are_cut_off() {
    let server = serve(config(&tiny_model())).await;
    let http = server.server.http_addr;
    let mut silent = Vec::new();
    for _ in 0..8 {
        let mut conn = connect_from(ATTACKER, http).await;
        conn.write_all(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 33554432\r\n\r\n{\"input\": [",
        )
        .await
        .unwrap();
        silent.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, reply) = post(http, "/v1/embeddings", JSON, SMALL).await;
    assert_eq!(status, 200, "{reply}");
    server
        .embed()
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["a small call".into()],
        })
        .await
        .expect("gRPC serves during the attack");
    // Below --body-min-rate after its 5 s grace: 408 and closed.
    let mut reply = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(15), silent[0].read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "a silent upload was never cut off");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("--body-min-rate"), "{reply}");
}

/// Connections that never send a byte are closed on both ports at --header-read-timeout (hyper
/// ran without a timer, and gRPC had no preface deadline: they stayed open for good); an idle
/// keep-alive connection is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_on_both_ports() {
    let mut cfg = config(&tiny_model());
    cfg.doors.header_read_timeout = Duration::from_secs(1);
    let server = serve(cfg).await;
    for addr in [server.server.http_addr, server.server.grpc_addr] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut conn, Duration::from_secs(5)).await,
            "a silent connection to {addr} stayed open"
        );
    }
    let mut keep_alive = TcpStream::connect(server.server.http_addr).await.unwrap();
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0; 512];
    let n = keep_alive.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(
        closed_within(&mut keep_alive, Duration::from_secs(5)).await,
        "an idle keep-alive connection stayed open"
    );
}

/// One peer cannot take every place: its connections past --max-connections-per-peer are closed
/// at once while another peer's calls are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_connection_place() {
    let mut cfg = config(&tiny_model());
    cfg.doors.max_connections = 16;
    cfg.doors.max_connections_per_peer = 4;
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(ATTACKER, http).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = connect_from(ATTACKER, http).await;
    assert!(
        closed_within(&mut fifth, Duration::from_secs(2)).await,
        "the peer's fifth connection was kept"
    );
    for _ in 0..8 {
        let (status, reply) = post(http, "/v1/embeddings", JSON, SMALL).await;
        assert_eq!(status, 200, "{reply}");
    }
}

/// Probes have a listener of their own: with every API place taken, /readyz still answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_every_api_place_is_taken() {
    let mut cfg = config(&tiny_model());
    cfg.doors.max_connections = 4;
    cfg.doors.max_connections_per_peer = 0;
    let mut server = serve(cfg).await;
    server.server.wait_ready().await.unwrap();
    let probe = server
        .server
        .probe_addr
        .expect("a probe listener by default");
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect_from(ATTACKER, server.server.http_addr).await);
        held.push(connect_from(ATTACKER, server.server.grpc_addr).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (status, body) = crate::common::http_get(probe, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// A unary gRPC message that stops arriving is ended with DEADLINE_EXCEEDED at
/// --body-read-timeout, holding only what arrived meanwhile (tonic buffered it unbounded in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_grpc_message_that_stops_arriving_gets_deadline_exceeded() {
    let mut cfg = config(&tiny_model());
    cfg.doors.body_read_timeout = Duration::from_secs(2);
    cfg.doors.body_min_rate = 0;
    let server = serve(cfg).await;
    let addr = server.server.grpc_addr;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/clip.v1.Embed/EmbedTexts"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    // A frame header announcing 1 MiB, then 10 bytes of it.
    let mut data = vec![0u8];
    data.extend((1u32 << 20).to_be_bytes());
    data.extend([0x0a; 10]);
    send.send_data(data.into(), false).unwrap();
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        let response = response.await.unwrap();
        let headers = response.headers().clone();
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            chunk.unwrap();
        }
        let trailers = body.trailers().await.unwrap().unwrap_or_default();
        let status = trailers
            .get("grpc-status")
            .or(headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string());
        let message = trailers
            .get("grpc-message")
            .or(headers.get("grpc-message"))
            .map(|v| v.to_str().unwrap().to_string());
        (status, message)
    })
    .await
    .expect("the call was never ended");
    assert_eq!(status.0.as_deref(), Some("4"), "{status:?}");
    assert!(status.1.unwrap_or_default().contains("body-read-timeout"));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    drop(send);
}

/// Without an API key, a browser request by a foreign Host name (DNS rebinding) or from another
/// site is refused, and a JSON route refuses a form post.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_borne_requests_are_refused_without_a_key() {
    let server = serve(config(&tiny_model())).await;
    let http = server.server.http_addr;
    let raw = |host: &'static str, extra: &'static str, content_type: &'static str| async move {
        let mut conn = TcpStream::connect(http).await.unwrap();
        conn.write_all(
            format!(
                "POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{SMALL}",
                SMALL.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply).await;
        parse_http(&reply).unwrap_or_default()
    };
    let json = "application/json";
    let (status, reply) = raw(
        "rebound.example:8080",
        "Sec-Fetch-Site: same-origin\r\n",
        json,
    )
    .await;
    assert_eq!(status, 403, "{reply}");
    assert!(reply.contains("--allowed-hosts"), "{reply}");
    let (status, reply) = raw("127.0.0.1", "Origin: https://evil.example\r\n", json).await;
    assert_eq!(status, 403, "{reply}");
    let (status, reply) = raw("127.0.0.1", "", "text/plain").await;
    assert_eq!(status, 415, "{reply}");
    let (status, reply) = raw("127.0.0.1", "", json).await;
    assert_eq!(status, 200, "{reply}");
}
