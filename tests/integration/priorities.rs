//! Request priorities through both doors: vLLM's `priority` in an HTTP body, the `x-priority`
//! header and gRPC metadata, a key's `priority=` pinning its class, clear errors for bad values,
//! and `clip_queue_wait_seconds` counted by class.

use std::time::{Duration, Instant};

use clip_serve::grpc::pb::{self, embed_client::EmbedClient};
use serde_json::json;
use tonic::{Code, metadata::MetadataValue};

use crate::common::*;

const WAIT: &str = "clip_queue_wait_seconds_count";

fn waits(metrics: &str, class: &str) -> f64 {
    metric_value(
        metrics,
        &format!(r#"{WAIT}{{modality="text",priority="{class}"}}"#),
    )
    .unwrap_or(0.0)
}

/// The text rows counted in each class: high, normal, low.
async fn by_class(http: std::net::SocketAddr) -> [f64; 3] {
    let metrics = http_get(http, "/metrics").await.1;
    ["high", "normal", "low"].map(|c| waits(&metrics, c))
}

async fn embed_http(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    body: serde_json::Value,
    header: Option<&str>,
) -> (u16, String) {
    let mut request = client
        .post(format!("{base}/v1/embeddings"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(h) = header {
        request = request.header("x-priority", h);
    }
    let reply = request.send().await.unwrap();
    (reply.status().as_u16(), reply.text().await.unwrap())
}

/// Waits until the counts reach `want` (the metrics of a call land as its rows are batched).
async fn expect_counts(http: std::net::SocketAddr, want: [f64; 3]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = by_class(http).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rows by class {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn calls_run_in_the_class_they_ask_for_as_far_as_their_key_allows() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "open:sk-open\nfree:sk-free priority=low\n").unwrap();
    let mut cfg = config(&tiny_model());
    cfg.api_key_file = Some(keys);
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let base = format!("http://{http}");
    let client = reqwest::Client::new();
    let model = {
        let reply = client
            .get(format!("{base}/v1/models"))
            .header("authorization", "Bearer sk-open")
            .send()
            .await
            .unwrap();
        let models: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
        models["data"][0]["id"].as_str().unwrap().to_owned()
    };
    let body = |priority: Option<i64>| {
        let mut b = json!({"model": model, "input": ["a cat"]});
        if let Some(p) = priority {
            b["priority"] = json!(p);
        }
        b
    };

    // vLLM's body field: below 0 is high.
    let (code, text) = embed_http(&client, &base, "sk-open", body(Some(-1)), None).await;
    assert_eq!(code, 200, "{text}");
    expect_counts(http, [1.0, 0.0, 0.0]).await;
    // No priority: normal. A header asks for low.
    assert_eq!(
        embed_http(&client, &base, "sk-open", body(None), None)
            .await
            .0,
        200
    );
    expect_counts(http, [1.0, 1.0, 0.0]).await;
    assert_eq!(
        embed_http(&client, &base, "sk-open", body(None), Some("low"))
            .await
            .0,
        200
    );
    expect_counts(http, [1.0, 1.0, 1.0]).await;
    // A key pinned to low gets low, whatever it asks for.
    assert_eq!(
        embed_http(&client, &base, "sk-free", body(Some(-5)), Some("high"))
            .await
            .0,
        200
    );
    expect_counts(http, [1.0, 1.0, 2.0]).await;

    // A bad header is refused, naming it; so is a body priority that is not an integer.
    let (code, text) = embed_http(&client, &base, "sk-open", body(None), Some("urgent")).await;
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("x-priority") && text.contains("not a priority"),
        "{text}"
    );
    let mut bad = body(None);
    bad["priority"] = json!("soon");
    let (code, text) = embed_http(&client, &base, "sk-open", bad, None).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("priority"), "{text}");

    // gRPC: the x-priority metadata.
    let mut embed = EmbedClient::new(server.channel.clone());
    let call = |key: &str, priority: &str| {
        let mut request = tonic::Request::new(pb::EmbedTextsRequest {
            texts: vec!["a dog".into()],
        });
        let metadata = request.metadata_mut();
        metadata.insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {key}")).unwrap(),
        );
        metadata.insert("x-priority", MetadataValue::try_from(priority).unwrap());
        request
    };
    embed.embed_texts(call("sk-open", "high")).await.unwrap();
    expect_counts(http, [2.0, 1.0, 2.0]).await;
    embed.embed_texts(call("sk-free", "high")).await.unwrap();
    expect_counts(http, [2.0, 1.0, 3.0]).await;
    let refused = embed
        .embed_texts(call("sk-open", "asap"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("x-priority"),
        "{}",
        refused.message()
    );
}
