//! Named API keys, usage per key and per-key rate limits (in items), on both doors; key names kept
//! out of /metrics unless asked; failed key checks throttled per peer address.

use std::time::{Duration, Instant};

use clip_serve::grpc::pb;
use tokio_stream::StreamExt;
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
    std::fs::write(&file, "alice:sk-alice rate=1:4\nsk-bare\n").unwrap();
    let mut cfg = config(&tiny_model());
    cfg.api_key_file = Some(file);
    cfg.metrics_key_names = true;
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
    // alice may burst 4 items: two gRPC calls of two texts, then the third (over either door) is
    // refused. (Rate limits count items: with a limit per call, a burst of 4 would let 4 through.)
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

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {key}")).unwrap(),
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_names_stay_off_metrics_and_streams_pay_per_item() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "alice:sk-alice rate=5:1\nsk-bare\n").unwrap();
    let mut cfg = config(&tiny_model());
    cfg.api_key_file = Some(file);
    let server = serve(cfg).await;
    let http = server.server.http_addr;

    // A stream of 8 items on a key of 5 items/s, burst 1: the key check spends the burst (and
    // pays for the first item), the other 7 come at 5 a second, so the stream takes 1.4 s.
    let items: Vec<_> = (0..8)
        .map(|i| pb::EmbedStreamRequest {
            id: format!("{i}"),
            item: Some(pb::embed_stream_request::Item::Text("a cat".into())),
        })
        .collect();
    let started = Instant::now();
    let replies: Vec<_> = server
        .embed()
        .embed_stream(with_key(tokio_stream::iter(items), "sk-alice"))
        .await
        .expect("the stream opens")
        .into_inner()
        .collect()
        .await;
    let took = started.elapsed();
    assert_eq!(replies.len(), 8);
    for reply in &replies {
        let reply = reply
            .as_ref()
            .expect("every item waits its turn, none fails");
        assert!(
            matches!(
                reply.result,
                Some(pb::embed_stream_response::Result::Embedding(_))
            ),
            "{reply:?}"
        );
    }
    assert!(
        took >= Duration::from_millis(1200),
        "8 items at 5/s after a burst of 1 took {took:?}"
    );

    let (code, _) = post(
        http,
        "/v1/embeddings",
        r#"{"input": ["a", "b"]}"#,
        "sk-bare",
    )
    .await;
    assert_eq!(code, 200);
    let metrics = try_get_metrics(http).await;
    assert!(
        !metrics.contains("alice") && !metrics.contains("key=\"key-"),
        "no key names or hash prefixes without --metrics-key-names:\n{metrics}"
    );
    let requests = metric_value(
        &metrics,
        "clip_usage_total{key=\"redacted\",kind=\"requests\"}",
    );
    assert_eq!(requests, Some(2.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_key_checks_are_throttled_per_peer_address() {
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(clip_serve::security::Secret("sk-right".into()));
    cfg.auth_failures_per_minute = 3;
    let server = serve(cfg).await;
    let texts = || pb::EmbedTextsRequest {
        texts: vec!["a".into()],
    };
    for _ in 0..3 {
        let e = server
            .embed()
            .embed_texts(with_key(texts(), "sk-wrong"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    // This address spent its failures: even the right key gets a quick RESOURCE_EXHAUSTED, with
    // when to retry.
    let e = server
        .embed()
        .embed_texts(with_key(texts(), "sk-right"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("too many failed API key checks"),
        "{e:?}"
    );
    let delay = e
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(delay > Duration::from_secs(30), "{delay:?}");
}

/// An EmbedStream's items run in tasks of their own: what they compute still counts for the
/// caller's key. (A task spawned without `telemetry::usage::spawn` starts outside the call's usage
/// scope, and its text tokens would count for nobody.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_items_count_for_the_callers_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "carol:sk-carol\n").unwrap();
    let mut cfg = config(&tiny_model());
    cfg.api_key_file = Some(file);
    cfg.metrics_key_names = true;
    let server = serve(cfg).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for (i, text) in ["a photo of a cat", "a dog on a beach"].iter().enumerate() {
        tx.send(pb::EmbedStreamRequest {
            id: format!("t{i}"),
            item: Some(pb::embed_stream_request::Item::Text((*text).into())),
        })
        .await
        .unwrap();
    }
    drop(tx);
    let mut replies = server
        .embed()
        .embed_stream(with_key(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            "sk-carol",
        ))
        .await
        .expect("stream opens")
        .into_inner();
    let mut answered = 0;
    while let Some(reply) = replies.next().await {
        let reply = reply.expect("a reply");
        assert!(
            matches!(
                reply.result,
                Some(pb::embed_stream_response::Result::Embedding(_))
            ),
            "{reply:?}"
        );
        answered += 1;
    }
    assert_eq!(answered, 2);
    let metrics = try_get_metrics(server.server.http_addr).await;
    let usage = |kind: &str| {
        metric_value(
            &metrics,
            &format!("clip_usage_total{{key=\"carol\",kind=\"{kind}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(usage("requests"), 1.0, "one stream is one request");
    assert!(
        usage("text_tokens") >= 8.0,
        "two texts of 4+ tokens each count for carol: {}",
        usage("text_tokens")
    );
}
