//! SIGTERM to a real server process with calls in flight: every admitted call completes, new calls
//! are refused, and the process exits 0 within its grace period.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::common::*;
use clip_serve::grpc::pb::{self, embed_client::EmbedClient};
use tonic::Code;

pub struct ChildServer {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub logs: mpsc::Receiver<String>,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `clip-serve serve` on ephemeral ports and reads the addresses from its JSON logs.
fn spawn_server(extra: &[&str]) -> ChildServer {
    spawn_server_in(&fresh_data_dir(), extra)
}

pub fn spawn_server_in(data_dir: &std::path::Path, extra: &[&str]) -> ChildServer {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clip-serve"))
        .arg("serve")
        .arg("--model-dir")
        .arg(tiny_model())
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--probe-addr",
            "127.0.0.1:0",
            "--intra-op-threads",
            "1",
            "--log-format",
            "json",
            "--log-filter",
            "info",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn clip-serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, logs) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Owned by the guard from here on, so a failed start kills the process.
    let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut server = ChildServer {
        child,
        grpc: unbound,
        http: unbound,
        logs,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = server
            .logs
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server logs its addresses");
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let (Some(grpc), Some(http)) = (event["grpc_addr"].as_str(), event["http_addr"].as_str())
        {
            server.grpc = grpc.parse().expect("grpc addr");
            server.http = http.parse().expect("http addr");
            return server;
        }
    }
}

impl ChildServer {
    pub fn wait_for_log(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let line = self
                .logs
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}; saw {seen:#?}"));
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return seen;
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn client(addr: SocketAddr) -> EmbedClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    EmbedClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_calls_in_flight_and_exits_zero() {
    // A long batch delay keeps the rows of every call in the queue when the signal arrives (the
    // batch waits up to 3 s to fill, from its first row).
    let mut server = spawn_server(&[
        "--max-batch-delay",
        "3s",
        "--max-batch-size",
        "1024",
        "--shutdown-grace",
        "15s",
    ]);
    server.wait_for_log("SERVING");
    let embed = client(server.grpc).await;

    const CALLS: usize = 24;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let mut embed = embed.clone();
            tokio::spawn(async move {
                embed
                    .embed_texts(pb::EmbedTextsRequest {
                        texts: vec![format!("call {i}"), format!("call {i} again")],
                    })
                    .await
            })
        })
        .collect();
    // Wait until every call is admitted and queued.
    let waiting_since = Instant::now();
    let mut metrics = String::new();
    let admitted = loop {
        assert!(
            waiting_since.elapsed() < Duration::from_secs(30),
            "the calls were not all queued:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("clip_") && !l.contains("_bucket"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        metrics = http_get(server.http, "/metrics").await.1;
        let queued = metric_value(&metrics, r#"clip_queue_depth_rows{modality="text"}"#);
        if queued == Some((2 * CALLS) as f64) {
            break metrics.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(
        metric_value(&admitted, "clip_requests_in_flight"),
        Some(CALLS as f64)
    );

    server.signal("-TERM");
    server.wait_for_log("shutting down");
    // New calls are refused while the admitted ones finish (on the open connection: UNAVAILABLE;
    // new connections are no longer accepted).
    let refused = embed
        .clone()
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["too late".into()],
        })
        .await;
    assert_eq!(
        refused.map_err(|e| e.code()).unwrap_err(),
        Code::Unavailable
    );

    for (i, call) in calls.into_iter().enumerate() {
        let reply = call
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("admitted call {i} failed during shutdown: {e:?}"));
        assert_eq!(reply.into_inner().embeddings.len(), 2, "call {i}");
    }
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
}

/// Whether this process ignores SIGINT (a shell starts background jobs that way, and children
/// inherit it: the server then never sees Ctrl-C, by POSIX convention).
fn sigint_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (2 - 1)) != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_with_nothing_in_flight_exits_zero_at_once() {
    let mut server = spawn_server(&["--shutdown-grace", "30s"]);
    server.wait_for_log("SERVING");
    let signal = if sigint_ignored() {
        eprintln!("SKIPPED the SIGINT variant: this test process ignores SIGINT; sending SIGTERM");
        "-TERM"
    } else {
        "-INT"
    };
    let started = Instant::now();
    server.signal(signal);
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an idle server does not wait out its grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_api_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "key-a\n").unwrap();
    let keys_arg = keys.display().to_string();
    let mut server = spawn_server(&["--api-key-file", &keys_arg]);
    server.wait_for_log("SERVING");
    let embed = client(server.grpc).await;
    let call = |key: &'static str| {
        let mut embed = embed.clone();
        async move {
            let mut request = tonic::Request::new(pb::EmbedTextsRequest {
                texts: vec!["a".into()],
            });
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {key}").parse().expect("metadata"),
            );
            embed
                .embed_texts(request)
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    assert_eq!(call("key-a").await, Ok(()));
    assert_eq!(call("key-b").await, Err(Code::Unauthenticated));
    std::fs::write(&keys, "# rotated\nkey-b\n").unwrap();
    server.signal("-HUP");
    let logs = server.wait_for_log("API key file reloaded");
    assert!(
        logs.iter().all(|l| !l.contains("key-b")),
        "keys are never logged"
    );
    assert_eq!(call("key-b").await, Ok(()));
    assert_eq!(call("key-a").await, Err(Code::Unauthenticated));
    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

/// The vector and metadata of a crash-test item, from its id alone.
fn crash_item(id: &str) -> (Vec<f32>, std::collections::HashMap<String, String>) {
    let mut x = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let vector = (0..32)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 10_007) as f32 / 1000.0 - 5.0
        })
        .collect();
    let metadata = [
        ("id".to_string(), id.to_string()),
        ("len".to_string(), id.len().to_string()),
    ]
    .into();
    (vector, metadata)
}

async fn verify_present(addr: SocketAddr, acknowledged: &[String]) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut retrieve =
        pb::retrieve_client::RetrieveClient::new(channel).max_decoding_message_size(64 << 20);
    for chunk in acknowledged.chunks(500) {
        let got = retrieve
            .get_items(pb::GetItemsRequest {
                collection: "crash".into(),
                ids: chunk.to_vec(),
            })
            .await
            .expect("get items")
            .into_inner();
        assert!(
            got.missing.is_empty(),
            "acknowledged ids lost: {:?}",
            got.missing
        );
        for item in got.items {
            let (vector, metadata) = crash_item(&item.id);
            assert_eq!(
                item.vector.unwrap().values,
                vector,
                "{}: vector changed",
                item.id
            );
            assert_eq!(item.metadata, metadata, "{}: metadata changed", item.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_upserts_survive_sigkill_at_any_moment() {
    let data = fresh_data_dir();
    let mut acknowledged: Vec<String> = Vec::new();
    // Kill points spread over the write loop; each restart must come up cleanly with every
    // acknowledged item intact.
    for (round, kill_after_ms) in [150u64, 420, 777, 1200].into_iter().enumerate() {
        let mut server = spawn_server_in(&data, &[]);
        server.wait_for_log("SERVING");
        verify_present(server.grpc, &acknowledged).await;
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut retrieve = pb::retrieve_client::RetrieveClient::new(channel);
        if round == 0 {
            retrieve
                .create_collection(pb::CreateCollectionRequest {
                    name: "crash".into(),
                    ..Default::default()
                })
                .await
                .expect("create");
        }
        let pid = server.child.id();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        });
        for batch in 0.. {
            let ids: Vec<String> = (0..7).map(|i| format!("r{round}-b{batch}-i{i}")).collect();
            let items = ids
                .iter()
                .map(|id| {
                    let (vector, metadata) = crash_item(id);
                    pb::Item {
                        id: id.clone(),
                        content: Some(pb::item::Content::Vector(pb::Vector { values: vector })),
                        metadata,
                    }
                })
                .collect();
            let reply = retrieve
                .upsert(pb::UpsertRequest {
                    collection: "crash".into(),
                    items,
                    model: String::new(),
                })
                .await;
            match reply {
                Ok(_) => acknowledged.extend(ids),
                Err(_) => break, // killed
            }
        }
        killer.await.unwrap();
        let status = server.wait_exit(Duration::from_secs(10));
        assert!(!status.success(), "killed, not exited");
    }
    assert!(
        acknowledged.len() > 50,
        "the test wrote too little to mean much: {}",
        acknowledged.len()
    );
    let mut server = spawn_server_in(&data, &[]);
    server.wait_for_log("SERVING");
    verify_present(server.grpc, &acknowledged).await;
    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

/// No listener outlives `--shutdown-grace`: a client trickling an HTTP body and an idle EmbedStream
/// do not keep the process alive after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_trickling_http_body_and_an_open_stream_exits_within_the_grace() {
    use tokio::io::AsyncWriteExt;
    let grace = Duration::from_secs(1);
    let mut server = spawn_server(&["--shutdown-grace", "1s"]);
    server.wait_for_log("SERVING");
    // An HTTP request whose body never completes: one byte every 100 ms.
    let mut http = tokio::net::TcpStream::connect(server.http)
        .await
        .expect("connect");
    http.write_all(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"input\": \"",
    )
    .await
    .expect("send the head");
    let trickle = tokio::spawn(async move {
        while http.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // An open stream that never sends an item.
    let (_keep_open, requests) = tokio::sync::mpsc::channel::<pb::EmbedStreamRequest>(1);
    let mut embed = client(server.grpc).await;
    let _stream = embed
        .embed_stream(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .expect("the stream opens");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    server.signal("-TERM");
    let status = server.wait_exit(grace + Duration::from_secs(2));
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < grace + Duration::from_secs(2));
    trickle.abort();
}
