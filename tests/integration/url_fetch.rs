//! Image URLs (`--fetch-image-urls`): a tiny HTTP server on 127.0.0.1 serves a fixture photo; with
//! `--fetch-allow-hosts 127.0.0.1` its URL embeds as its base64 does, and the refusals name the
//! input and say why (loopback, a redirect to a disallowed host, over the size, too slow).

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use crate::{common::*, http_clients::*};
use clip_serve::{
    admission::bytes::ByteBudget,
    embed::fetch::{CHARGE_STEP, FetchConfig, FetchError, Fetcher},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const MAX_BYTES: usize = 200_000;

/// Serves `/cat.jpg` (labelled text/plain: the format comes from the content), `/moved` (302 to
/// `/cat.jpg`), `/to-localhost` (302 to https://localhost, not allowed), `/big` (chunked, over
/// the limit, no Content-Length), `/slow` (answers after 5 s), `/stall` (declares 190,000 bytes,
/// sends 70 KiB and stalls for 5 s) and `/hold` (the photo after 150 ms, counting in [`HOLDING`]
/// and [`MOST_HELD`]). One request per connection.
async fn image_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cat = image(CAT);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let cat = cat.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let port = addr.port();
                let redirect = |to: String| {
                    format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .into_bytes()
                };
                let reply = match path.as_str() {
                    "/cat.jpg" => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            cat.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&cat);
                        r
                    }
                    "/moved" => redirect("/cat.jpg".into()),
                    "/to-localhost" => redirect(format!("https://localhost:{port}/cat.jpg")),
                    "/loop" => redirect("/loop".into()),
                    "/big" => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                            .await;
                        let chunk = vec![0xffu8; 64 * 1024];
                        // Far past the limit: the fetcher must stop reading long before the end.
                        for _ in 0..200 {
                            let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
                            c.extend_from_slice(&chunk);
                            c.extend_from_slice(b"\r\n");
                            if stream.write_all(&c).await.is_err() {
                                return;
                            }
                        }
                        b"0\r\n\r\n".to_vec()
                    }
                    "/stall" => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 190000\r\nConnection: close\r\n\r\n")
                            .await;
                        let _ = stream.write_all(&vec![0xffu8; 70 * 1024]).await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        return;
                    }
                    "/hold" => {
                        let now = HOLDING.fetch_add(1, Ordering::SeqCst) + 1;
                        MOST_HELD.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        HOLDING.fetch_sub(1, Ordering::SeqCst);
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            cat.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&cat);
                        r
                    }
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec()
                    }
                    _ => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// `/hold` requests being answered now, and the most at once (only one test uses `/hold`).
static HOLDING: AtomicUsize = AtomicUsize::new(0);
static MOST_HELD: AtomicUsize = AtomicUsize::new(0);

fn fetch_config(allow: &[&str]) -> FetchConfig {
    FetchConfig {
        allow_hosts: allow.iter().map(|p| p.parse().unwrap()).collect(),
        max_bytes: MAX_BYTES,
        timeout: Duration::from_secs(1),
        max_redirects: 2,
        concurrency: 4,
        per_request: 2,
    }
}

fn message(reply: &Reply) -> String {
    reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn embeddings(http: SocketAddr, input: Value) -> Reply {
    post_json(http, "/v1/embeddings", &json!({"input": input}), None).await
}

#[tokio::test]
async fn allowed_urls_embed_like_their_bytes_and_bad_ones_are_refused_by_name() {
    let images = image_server().await;
    let mut cfg = config(&tiny_model());
    cfg.fetch = Some(fetch_config(&["127.0.0.1"]));
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let url = |path: &str| format!("http://{images}{path}");

    let cat = image(CAT);
    let reply = embeddings(
        http,
        json!([{"image": b64(&cat)}, {"image": url("/cat.jpg")}, {"url": url("/moved")}]),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let data = reply.json()["data"].clone();
    let want = floats(&data[0]["embedding"]);
    for i in 1..3 {
        assert_same(
            &floats(&data[i]["embedding"]),
            &want,
            &format!("input[{i}]"),
        );
    }
    // Classify takes URLs too.
    let reply = post_json(
        http,
        "/v1/classify",
        &json!({"input": [{"image": url("/cat.jpg")}], "labels": ["a cat", "a dog"]}),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // vLLM's image_url parts and Cohere's images go through the same fetcher and its refusals.
    let part = |u: String| json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}}]}]);
    let reply = post_json(
        http,
        "/v1/embeddings",
        &json!({"messages": part(url("/cat.jpg"))}),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_same(
        &floats(&reply.json()["data"][0]["embedding"]),
        &want,
        "messages",
    );
    let reply = post_json(http, "/v2/embed", &json!({"images": [url("/moved")]}), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_same(
        &floats(&reply.json()["embeddings"]["float"][0]),
        &want,
        "cohere images",
    );
    let reply = post_json(
        http,
        "/v1/embeddings",
        &json!({"messages": [part(url("/cat.jpg")), part(url("/big"))]}),
        None,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert!(
        message(&reply).starts_with("messages[1]: the image URL: the image is over 200000 bytes"),
        "{}",
        reply.text
    );

    for (input, want) in [
        (
            json!(["a", {"image": url("/to-localhost")}]),
            "input[1]: the image URL was refused: localhost resolves to a non-public address;",
        ),
        (
            json!([{"image": url("/big")}]),
            "input[0]: the image URL: the image is over 200000 bytes",
        ),
        (
            json!([{"url": url("/slow")}]),
            "input[0]: the image URL: the fetch took longer than 1s",
        ),
        (
            json!([{"url": url("/loop")}]),
            "input[0]: the image URL was refused: more than 2 redirects",
        ),
        (
            json!([{"url": url("/missing.jpg")}]),
            "input[0]: fetching the image URL failed:",
        ),
        (
            json!([{"url": "https://10.1.2.3/cat.jpg"}]),
            "input[0]: the image URL was refused: 10.1.2.3 is a private address",
        ),
        (
            json!([{"url": "ftp://example.com/cat.jpg"}]),
            "input[0]: `url` must be an http(s) URL",
        ),
    ] {
        let reply = embeddings(http, input.clone()).await;
        assert_eq!(reply.status, 400, "{input}: {}", reply.text);
        assert!(message(&reply).starts_with(want), "{input}: {}", reply.text);
    }

    let (_, metrics) = http_get(http, "/metrics").await;
    for (outcome, at_least) in [
        ("ok", 3.0),
        ("refused", 3.0),
        ("too_large", 1.0),
        ("timeout", 1.0),
        ("error", 1.0),
    ] {
        let series = format!("clip_image_fetches_total{{outcome=\"{outcome}\"}}");
        let got = metric_value(&metrics, &series).unwrap_or(0.0);
        assert!(got >= at_least, "{series} = {got}\n{metrics}");
    }
}

#[tokio::test]
async fn loopback_needs_an_allow_and_urls_need_the_flag() {
    let images = image_server().await;
    let url = format!("http://{images}/cat.jpg");
    let https = format!("https://{images}/cat.jpg");

    let mut cfg = config(&tiny_model());
    cfg.fetch = Some(fetch_config(&[]));
    let server = serve(cfg).await;
    for u in [&url, &https] {
        let reply = embeddings(server.server.http_addr, json!(["a", {"image": u}])).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        let m = message(&reply);
        assert!(
            m.starts_with("input[1]: the image URL was refused: 127.0.0.1 is a loopback address"),
            "{m}"
        );
    }
    // Another port of an allowed host is not allowed.
    let mut cfg = config(&tiny_model());
    cfg.fetch = Some(fetch_config(&["127.0.0.1:1"]));
    let other = serve(cfg).await;
    let reply = embeddings(other.server.http_addr, json!([{"image": url}])).await;
    assert!(
        message(&reply).contains("only on other ports"),
        "{}",
        reply.text
    );

    // Off by default: today's message.
    let plain = serve(config(&tiny_model())).await;
    let reply = embeddings(plain.server.http_addr, json!([{"image": url}])).await;
    assert_eq!(reply.status, 400);
    assert!(
        message(&reply).starts_with("input[0]: image URL fetching is not enabled"),
        "{}",
        reply.text
    );
}

fn charged_fetcher(budget: &ByteBudget) -> Fetcher {
    let counter =
        prometheus::IntCounterVec::new(prometheus::Opts::new("f", "f"), &["outcome"]).unwrap();
    Fetcher::new(fetch_config(&["127.0.0.1"]), counter, Some(budget.clone())).unwrap()
}

#[tokio::test]
async fn fetched_bodies_are_charged_to_the_byte_budget_as_they_arrive() {
    let images = image_server().await;
    let gauge = prometheus::IntGauge::new("bytes", "b").unwrap();
    let budget = ByteBudget::new(1 << 20, gauge.clone());
    let fetcher = charged_fetcher(&budget);

    // 190,000 bytes declared, 70 KiB sent, then nothing: what arrived is charged (in 64 KiB
    // steps), never the declared length, and all of it comes back when the fetch gives up.
    let stalled = {
        let (fetcher, url) = (fetcher.clone(), format!("http://{images}/stall"));
        tokio::spawn(async move { fetcher.fetch(&url).await })
    };
    let mut held = 0;
    for _ in 0..400 {
        held = gauge.get();
        if held >= 70 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(held, 2 * CHARGE_STEP as i64, "70 KiB arrived: two steps");
    let e = stalled.await.unwrap().unwrap_err();
    assert_eq!(e.outcome(), "timeout", "{e}");
    assert_eq!(gauge.get(), 0, "a failed fetch gives its bytes back");

    // A fetched image holds its charge until the last copy of its bytes is dropped.
    let cat = fetcher
        .fetch(&format!("http://{images}/cat.jpg"))
        .await
        .unwrap();
    assert_eq!(cat.len(), image(CAT).len());
    assert_eq!(gauge.get(), CHARGE_STEP as i64);
    let copy = cat.clone();
    drop(cat);
    assert_eq!(gauge.get(), CHARGE_STEP as i64);
    drop(copy);
    assert_eq!(gauge.get(), 0);

    // A budget that cannot take the body refuses the fetch at once (429 at the door), long before
    // --fetch-timeout.
    let small = ByteBudget::new(CHARGE_STEP as u64, gauge.clone());
    let started = std::time::Instant::now();
    let e = charged_fetcher(&small)
        .fetch(&format!("http://{images}/stall"))
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Busy(_)), "{e}");
    assert!(e.to_string().contains("--max-inflight-bytes"), "{e}");
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(gauge.get(), 0);
}

#[tokio::test]
async fn one_request_takes_its_share_of_the_fetch_slots_and_429s_on_a_full_budget() {
    let images = image_server().await;
    let mut cfg = config(&tiny_model());
    // 4 slots in all, 2 per request.
    cfg.fetch = Some(fetch_config(&["127.0.0.1"]));
    let server = serve(cfg).await;
    let urls: Vec<Value> = (0..6)
        .map(|_| json!({"url": format!("http://{images}/hold")}))
        .collect();
    let reply = embeddings(server.server.http_addr, Value::Array(urls)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["data"].as_array().map(Vec::len), Some(6));
    assert_eq!(
        MOST_HELD.load(Ordering::SeqCst),
        2,
        "--fetch-concurrency-per-request 2 of --fetch-concurrency 4"
    );

    // The fetched body is charged to --max-inflight-bytes: with less than a step free, a body
    // that arrives gets a quick 429, not a 400 after --fetch-timeout.
    let mut cfg = config(&tiny_model());
    cfg.fetch = Some(fetch_config(&["127.0.0.1"]));
    cfg.max_inflight_bytes = CHARGE_STEP as u64;
    let tight = serve(cfg).await;
    let reply = embeddings(
        tight.server.http_addr,
        json!([{"url": format!("http://{images}/stall")}]),
    )
    .await;
    assert_eq!(reply.status, 429, "{}", reply.text);
    assert!(
        message(&reply)
            .starts_with("input[0]: the image URL: the server holds as many request bytes"),
        "{}",
        reply.text
    );
}
