//! The browser pages served from the binary: `GET /` negotiates (the playground for browsers, a
//! JSON index for API clients; `POST /` stays Hugging Face's), `/docs` is Swagger UI, and every
//! page and asset carries the self-only Content-Security-Policy. (The pages run in headless
//! Chromium in scripts/browser_test.sh.)

use crate::{common::*, http_clients::*};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str, accept: &str) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    let head = text
        .split_once("\r\n\r\n")
        .map_or("", |(h, _)| h)
        .to_string();
    let (status, text) = parse_http(&got).expect("an HTTP response");
    Reply { status, head, text }
}

#[tokio::test]
async fn the_playground_and_docs_are_served_from_the_binary() {
    let server = serve(config(&tiny_model())).await;
    let http = server.server.http_addr;
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    let page = get(http, "/", browser).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text.contains("clip-serve playground"), "{}", page.text);
    for (path, kind) in [
        ("/playground/playground.js", "text/javascript"),
        ("/playground/playground.css", "text/css"),
        ("/docs", "text/html"),
        ("/docs/docs.js", "text/javascript"),
        ("/docs/swagger-ui-bundle.js", "text/javascript"),
        ("/docs/swagger-ui.css", "text/css"),
    ] {
        let r = get(http, path, "*/*").await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}: {}",
            r.head
        );
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
    }
    assert!(
        get(http, "/docs", browser)
            .await
            .text
            .contains("/docs/swagger-ui-bundle.js")
    );

    // API clients get JSON on GET /, and POST / is still the Hugging Face route.
    let index = get(http, "/", "application/json").await;
    assert_eq!(index.status, 200);
    assert_eq!(index.json()["docs"], "/docs");
    assert_eq!(get(http, "/", "*/*").await.json()["name"], "clip-serve");
    let cat = image(CAT);
    let reply = post_json(
        http,
        "/",
        &serde_json::json!({"inputs": b64(&cat), "parameters": {"candidate_labels": ["a cat", "a dog"]}}),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json().as_array().map(Vec::len), Some(2));
}
