//! Named API keys, usage per key and per-key rate limits, on both doors.

use clip_serve::grpc::pb;
use tonic::{Code, metadata::MetadataValue};
use tonic_types::StatusExt;

use crate::{common::*, hardening::try_get_metrics};

/// A raw HTTP/1.1 POST; returns the status line's code and the whole head (for headers).
async fn post(addr: std::net::SocketAddr, path: &str, body: &str, key: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_keys_are_metered_and_rate_limited_per_key_on_both_doors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "alice:sk-alice rate=1:2\nsk-bare\n").unwrap();
    let mut cfg = config(&tiny_model());
    cfg.api_key_file = Some(file);
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let texts = |key: &str| {
        let mut r = tonic::Request::new(pb::EmbedTextsRequest {
            texts: vec!["a photo of a cat".into(), "a dog".into()],
        });
        r.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {key}")).unwrap(),
        );
        r
    };
    // alice may burst 2 requests: two gRPC calls, then the third (over either door) is refused.
    for _ in 0..2 {
        server
            .embed()
            .embed_texts(texts("sk-alice"))
            .await
            .expect("within the burst");
    }
    let refused = server
        .embed()
        .embed_texts(texts("sk-alice"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let retry = refused
        .get_details_retry_info()
        .expect("RetryInfo in the details");
    let delay = retry.retry_delay.expect("a delay");
    assert!(delay > std::time::Duration::ZERO && delay <= std::time::Duration::from_secs(1));
    let (code, head) = post(http, "/v1/embeddings", r#"{"input": "a"}"#, "sk-alice").await;
    assert_eq!(code, 429, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert!(head.contains("rate_limit_exceeded"), "{head}");
    // Another key has its own bucket (the bare key has no limit at all).
    for _ in 0..5 {
        let (code, body) = post(
            http,
            "/v1/embeddings",
            r#"{"input": ["a", "b c"]}"#,
            "sk-bare",
        )
        .await;
        assert_eq!(code, 200, "{body}");
    }

    let metrics = try_get_metrics(http).await;
    let usage = |key: &str, kind: &str| {
        metric_value(
            &metrics,
            &format!("clip_usage_total{{key=\"{key}\",kind=\"{kind}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        usage("alice", "requests"),
        2.0,
        "refused calls are not usage"
    );
    assert!(
        usage("alice", "text_tokens") >= 4.0,
        "two texts of 2+ tokens, twice"
    );
    let bare = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("clip_usage_total{key=\"key-")
                .and_then(|rest| rest.split('"').next())
        })
        .expect("the bare key is named key-<hash>");
    assert_eq!(bare.len(), 8, "{bare}");
    assert_eq!(usage(&format!("key-{bare}"), "requests"), 5.0);
    assert!(
        !metrics.contains("sk-bare") && !metrics.contains("sk-alice"),
        "keys never show"
    );
}
