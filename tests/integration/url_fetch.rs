//! Image URLs (`--fetch-image-urls`): a tiny HTTP server on 127.0.0.1 serves a fixture photo; with
//! `--fetch-allow-hosts 127.0.0.1` its URL embeds as its base64 does, and the refusals name the
//! input and say why (loopback, a redirect to a disallowed host, over the size, too slow).

use std::{net::SocketAddr, time::Duration};

use crate::{common::*, http_clients::*};
use clip_serve::embed::fetch::FetchConfig;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const MAX_BYTES: usize = 200_000;

/// Serves `/cat.jpg` (labelled text/plain: the format comes from the content), `/moved` (302 to
/// `/cat.jpg`), `/to-localhost` (302 to https://localhost, not allowed), `/big` (chunked, over
/// the limit, no Content-Length) and `/slow` (answers after 5 s). One request per connection.
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

fn fetch_config(allow: &[&str]) -> FetchConfig {
    FetchConfig {
        allow_hosts: allow.iter().map(|p| p.parse().unwrap()).collect(),
        max_bytes: MAX_BYTES,
        timeout: Duration::from_secs(1),
        max_redirects: 2,
        concurrency: 4,
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

    for (input, want) in [
        (
            json!(["a", {"image": url("/to-localhost")}]),
            "input[1]: the image URL was refused: localhost resolves to a loopback address",
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
