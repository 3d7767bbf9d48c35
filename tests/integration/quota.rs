//! Per-key quotas (items per UTC day or month) enforced through the store, OpenAI's
//! `x-ratelimit-*` headers, and the admin-only `GET /v1/usage`; with PostgreSQL, two store handles
//! (two pools, as two replicas) charging one key at once never pass its quota by a call's worth.

use std::sync::Arc;

use clip_serve::{
    grpc::pb,
    postgres::usage::PgUsage,
    security::quota::{Charge, Charged, UsageStore},
};
use tonic::{Code, metadata::MetadataValue};
use tonic_types::StatusExt;

use crate::{
    common::*,
    postgres::{pg, test_database},
};

/// A raw HTTP/1.1 call; returns the status code, the head (lowercased) and the body.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    key: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

const TWO_TEXTS: &str = r#"{"input": ["a photo of a cat", "a dog"]}"#;

fn usage_of(body: &str, key: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .map(|r| r["items"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_quota_refuses_on_both_doors_until_reset_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(
        &file,
        "alice:sk-alice quota=5/day rate=100:100\nbilling:sk-admin role=admin\nbob:sk-bob\n",
    )
    .unwrap();
    let mut cfg = config(&tiny_model());
    cfg.api_key_file = Some(file);
    let server = serve(cfg.clone()).await;
    let http = server.server.http_addr;

    // 2 items a call against 5 a day: 2, 4, then 6 (admitted while below: one call's worth over).
    for remaining in ["3", "1", "0"] {
        let (code, head, body) = call(http, "POST", "/v1/embeddings", TWO_TEXTS, "sk-alice").await;
        assert_eq!(code, 200, "{head}{body}");
        assert_eq!(
            header(&head, "x-ratelimit-limit-tokens"),
            Some("5"),
            "{head}"
        );
        assert_eq!(
            header(&head, "x-ratelimit-remaining-tokens"),
            Some(remaining)
        );
        assert!(
            header(&head, "x-ratelimit-reset-tokens").is_some(),
            "{head}"
        );
        assert_eq!(header(&head, "x-ratelimit-limit-requests"), Some("100"));
        let left: u32 = header(&head, "x-ratelimit-remaining-requests")
            .unwrap()
            .parse()
            .unwrap();
        assert!(left < 100, "{head}");
    }
    let (code, head, body) = call(http, "POST", "/v1/embeddings", TWO_TEXTS, "sk-alice").await;
    assert_eq!(code, 429, "{head}{body}");
    assert!(body.contains("insufficient_quota"), "{body}");
    assert!(body.contains("quota of 5 items per day"), "{body}");
    let retry: u64 = header(&head, "retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{head}");
    assert_eq!(header(&head, "x-ratelimit-remaining-tokens"), Some("0"));

    let mut request = tonic::Request::new(pb::EmbedTextsRequest {
        texts: vec!["a".into()],
    });
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from("Bearer sk-alice").unwrap(),
    );
    let refused = server.embed().embed_texts(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("resets in"), "{refused:?}");
    assert!(refused.get_details_retry_info().is_some());

    // A key without a quota: served, counted, no quota headers.
    let (code, head, _) = call(http, "POST", "/v1/embeddings", TWO_TEXTS, "sk-bob").await;
    assert_eq!(code, 200);
    assert_eq!(header(&head, "x-ratelimit-limit-tokens"), None, "{head}");

    // Usage: admin keys only.
    let (code, _, body) = call(http, "GET", "/v1/usage", "", "sk-alice").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("admin"), "{body}");
    let (code, _, body) = call(http, "GET", "/v1/usage", "", "sk-admin").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(usage_of(&body, "alice"), Some(6), "{body}");
    assert_eq!(usage_of(&body, "bob"), Some(2), "{body}");
    let (code, _, body) = call(http, "GET", "/v1/usage?key=bob", "", "sk-admin").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(usage_of(&body, "alice"), None, "{body}");
    for bad in [
        "/v1/usage?start=2026-13-01",
        "/v1/usage?start=2026-12-02&end=2026-12-01",
        "/v1/usage?start=2020-01-01&end=2026-01-01",
        "/v1/usage?user=x",
    ] {
        let (code, _, body) = call(http, "GET", bad, "", "sk-admin").await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    // Bob has no quota: his next call is counted in memory (--usage-flush-interval), and the
    // shutdown writes it.
    let (code, _, _) = call(http, "POST", "/v1/embeddings", TWO_TEXTS, "sk-bob").await;
    assert_eq!(code, 200);
    server.server.shutdown().await.unwrap();

    // A restart keeps the count: still refused, and the usage is still there, Bob's last call
    // included.
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let (code, _, body) = call(http, "POST", "/v1/embeddings", TWO_TEXTS, "sk-alice").await;
    assert_eq!(code, 429, "{body}");
    let (_, _, body) = call(http, "GET", "/v1/usage", "", "sk-admin").await;
    assert_eq!(usage_of(&body, "alice"), Some(6), "{body}");
    assert_eq!(usage_of(&body, "bob"), Some(4), "{body}");
}

/// `tasks` concurrent charges of `items` each, half through each handle; returns how many were
/// admitted.
async fn hammer(
    stores: [Arc<PgUsage>; 2],
    key: &str,
    quota: (&str, u64),
    tasks: usize,
    items: u64,
) -> u64 {
    let mut handles = Vec::new();
    for i in 0..tasks {
        let store = Arc::clone(&stores[i % 2]);
        let charge = Charge {
            key: key.into(),
            day: "2026-12-06".into(),
            items,
            quota: Some((quota.0.into(), quota.1)),
        };
        handles.push(tokio::spawn(async move { store.charge(charge).await }));
    }
    let mut admitted = 0;
    for h in handles {
        if let Charged::Admitted { .. } = h.await.unwrap().unwrap() {
            admitted += 1;
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_never_pass_a_quota_by_a_call() {
    let Some(url) = test_database().await else {
        return;
    };
    let replica = || Arc::new(PgUsage::new(clip_serve::postgres::pool(&pg(&url)).unwrap()));
    let stores = [replica(), replica()];
    // A daily quota (one row) and a monthly one (the month's row, then the day's).
    for (key, period) in [("daily", "2026-12-06"), ("monthly", "2026-12")] {
        let admitted = hammer(stores.clone(), key, (period, 100), 120, 3).await;
        // 34 calls of 3 reach 102; every later one is refused.
        assert_eq!(admitted, 34, "{key}");
        let rows = stores[0]
            .usage("2026-12-06", "2026-12-06", Some(key))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            rows[0].items,
            admitted * 3,
            "{key}: the day counts what was admitted"
        );
        assert!(rows[0].items < 100 + 3, "{key}: {rows:?}");
    }
}
