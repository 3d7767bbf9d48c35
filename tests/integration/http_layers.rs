//! Every API route sits behind the HTTP call layer: without a key it is refused in the shape its
//! clients read, with a request id, and counted under the name the route table gives it; with the
//! key its handler names the call the same way. The public pages answer without a key.

use clip_serve::{
    http::{
        call::{PUBLIC, ROUTES},
        error::Shape,
    },
    security::Secret,
};

use crate::common::*;

/// A raw HTTP/1.1 request with a small JSON (or, for Immich, multipart) body: the status code,
/// the head, and the body.
async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let authorization = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let (content_type, body) = match (method, path) {
        ("POST", "/predict") => ("multipart/form-data; boundary=b", "--b--\r\n"),
        ("POST", _) => ("application/json", "{}"),
        _ => ("application/json", ""),
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply).to_string();
    let head = text
        .split_once("\r\n\r\n")
        .map_or("", |(h, _)| h)
        .to_ascii_lowercase();
    let (code, body) = parse_http(&reply).unwrap_or((0, String::new()));
    (code, head, body)
}

/// All calls counted under `service`/`method` on the HTTP door, whatever their code.
fn counted(metrics: &str, service: &str, method: &str) -> f64 {
    let labels = format!(r#",interface="http",method="{method}",service="{service}"}}"#);
    metrics
        .lines()
        .filter(|l| l.starts_with("clip_requests_total{"))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.ends_with(&labels))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_is_keyed_named_and_shaped_as_the_route_table_says() {
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(Secret("k1".into()));
    // One refusal per route from one address: more than the default throttle lets through.
    cfg.auth_failures_per_minute = 1000;
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    for route in ROUTES {
        let path = route.path.replace("{name}", "nope").replace("{id}", "x");
        let what = format!("{} {path}", route.method);
        let before = counted(
            &http_get(http, "/metrics").await.1,
            route.service,
            route.name,
        );

        let (code, head, body) = send(http, route.method, &path, None).await;
        assert_eq!(code, 401, "{what}: {body}");
        assert!(head.contains("x-request-id: "), "{what}: {head}");
        let error = serde_json::from_str::<serde_json::Value>(&body)
            .unwrap_or_else(|e| panic!("{what}: {e}: {body}"))["error"]
            .clone();
        match route.shape {
            Shape::Plain => assert!(error.is_string(), "{what}: {body}"),
            Shape::OpenAi => assert!(error["message"].is_string(), "{what}: {body}"),
        }

        let (code, head, body) = send(http, route.method, &path, Some("k1")).await;
        assert_ne!(code, 401, "{what}: {body}");
        assert!(head.contains("x-request-id: "), "{what}: {head}");
        assert!(head.contains("server-timing: total;dur="), "{what}: {head}");

        // The refusal (named by the table) and the call (named by its handler) count alike.
        let after = counted(
            &http_get(http, "/metrics").await.1,
            route.service,
            route.name,
        );
        assert_eq!(after, before + 2.0, "{what}");
    }
    // A route asked with a method it does not serve keeps its 405 (no key asked).
    let (code, _, body) = send(http, "PUT", "/v1/embeddings", None).await;
    assert_eq!(code, 405, "{body}");
    for &(method, path) in PUBLIC {
        let (code, head, body) = send(http, method, path, None).await;
        assert!((200..300).contains(&code), "{method} {path}: {code} {body}");
        assert!(!head.contains("x-request-id"), "{method} {path}: {head}");
    }
}
