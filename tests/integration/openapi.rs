//! `GET /openapi.json`: open without a key, OpenAPI 3.1, and it documents exactly the routes the
//! router serves (each documented operation reaches a handler: no 405, no bare 404).

use std::collections::BTreeSet;

use crate::common::*;
use crate::http_clients::request;
use clip_serve::security::Secret;
use serde_json::Value;

/// Every route the HTTP router serves. A new route goes here and into src/http/openapi.rs.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("post", "/v1/embeddings"),
    ("get", "/v1/usage"),
    ("post", "/embeddings"),
    ("get", "/v1/models"),
    ("post", "/v1/classify"),
    ("post", "/v1/rerank"),
    ("post", "/v2/rerank"),
    ("post", "/rerank"),
    ("post", "/v1/embed"),
    ("post", "/v2/embed"),
    ("post", "/"),
    ("post", "/vectorize"),
    ("get", "/meta"),
    ("get", "/.well-known/ready"),
    ("get", "/.well-known/live"),
    ("post", "/predict"),
    ("get", "/ping"),
    ("post", "/v1/collections"),
    ("get", "/v1/collections"),
    ("get", "/v1/collections/{name}"),
    ("delete", "/v1/collections/{name}"),
    ("post", "/v1/collections/{name}/items"),
    ("post", "/v1/collections/{name}/items/get"),
    ("post", "/v1/collections/{name}/items/delete"),
    ("delete", "/v1/collections/{name}/items/{id}"),
    ("post", "/v1/collections/{name}/search"),
    ("post", "/v1/files"),
    ("get", "/v1/files"),
    ("get", "/v1/files/{file_id}"),
    ("delete", "/v1/files/{file_id}"),
    ("get", "/v1/files/{file_id}/content"),
    ("post", "/v1/batches"),
    ("get", "/v1/batches"),
    ("get", "/v1/batches/{batch_id}"),
    ("post", "/v1/batches/{batch_id}/cancel"),
    ("get", "/"),
    ("get", "/docs"),
];

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(Secret("k1".into()));
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let reply = request(http, "GET", "/openapi.json", None, None).await;
    assert_eq!(reply.status, 200, "open without a key: {}", reply.text);
    let doc: Value = serde_json::from_str(&reply.text).expect("valid JSON");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                documented.insert((method.to_string(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    // Each documented operation reaches a handler (an unrouted one is a bare 404 or a 405).
    for (method, path) in &documented {
        let concrete = path
            .replace("{name}", "none")
            .replace("{id}", "x")
            .replace("{file_id}", "file-x")
            .replace("{batch_id}", "batch_x");
        let body = (method == "post").then_some(("application/json", &b"{}"[..]));
        let reply = request(http, &method.to_uppercase(), &concrete, body, Some("k1")).await;
        assert_ne!(reply.status, 405, "{method} {path}");
        assert!(
            !(reply.status == 404 && reply.text.is_empty()),
            "{method} {path}: not routed"
        );
        assert!(
            reply.status < 500,
            "{method} {path}: {} {}",
            reply.status,
            reply.text
        );
    }
}
