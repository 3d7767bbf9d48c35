//! The HTTP routes that drop-in client libraries call (src/http/CLIENTS.md has their wire formats):
//! Jina's embeddings inputs, `/v1/classify` and rerank, plus the helpers `http_dropins` shares
//! (Hugging Face, Weaviate, Immich). Values are compared with the gRPC answers for the same inputs. (The real Python clients run against a
//! started server in scripts/clients_test.sh.)

use std::net::SocketAddr;

use crate::common::*;
use base64::Engine as _;
use clip_serve::{grpc::pb, security::Secret};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Reply {
    pub status: u16,
    pub head: String,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request: `body` with `content_type` (none: no body).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    key: Option<&str>,
) -> Reply {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let mut raw = match body {
        Some((content_type, body)) => format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\n{auth}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        None => {
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n")
                .into_bytes()
        }
    };
    if let Some((_, body)) = body {
        raw.extend_from_slice(body);
    }
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&raw).await.expect("send");
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.expect("read");
    let text = String::from_utf8_lossy(&got);
    let head = text
        .split_once("\r\n\r\n")
        .map_or("", |(h, _)| h)
        .to_string();
    let (status, text) = parse_http(&got).expect("an HTTP response");
    Reply { status, head, text }
}

pub async fn post_json(addr: SocketAddr, path: &str, body: &Value, key: Option<&str>) -> Reply {
    let body = body.to_string();
    request(
        addr,
        "POST",
        path,
        Some(("application/json", body.as_bytes())),
        key,
    )
    .await
}

pub fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(xs) => xs.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        other => panic!("not a vector: {other}"),
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

pub const CAT: &str = "chelsea_baseline_420.jpg";
pub const ASTRONAUT: &str = "astronaut_444.jpg";

pub async fn grpc_texts(server: &TestServer, texts: &[&str]) -> Vec<Vec<f32>> {
    server
        .embed()
        .embed_texts(keyed(pb::EmbedTextsRequest {
            texts: texts.iter().map(|s| s.to_string()).collect(),
        }))
        .await
        .unwrap()
        .into_inner()
        .embeddings
        .into_iter()
        .map(|e| e.values)
        .collect()
}

pub async fn grpc_images(server: &TestServer, images: &[Vec<u8>]) -> Vec<Vec<f32>> {
    server
        .embed()
        .embed_images(keyed(pb::EmbedImagesRequest {
            images: images.iter().cloned().map(Into::into).collect(),
        }))
        .await
        .unwrap()
        .into_inner()
        .embeddings
        .into_iter()
        .map(|e| e.values)
        .collect()
}

/// A gRPC request with the key the key tests use (ignored where no key is configured).
pub fn keyed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", "Bearer k1".parse().unwrap());
    request
}

pub fn assert_same(a: &[f32], b: &[f32], what: &str) {
    let c = cosine(a, b);
    assert!(c >= 0.99999, "{what}: cosine {c}");
}

#[tokio::test]
async fn jina_embedding_inputs_equal_the_grpc_vectors() {
    let mut cfg = config(&tiny_model());
    cfg.model_aliases = vec!["jina-clip-v2".into()];
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let (cat, astronaut) = (image(CAT), image(ASTRONAUT));
    let texts = grpc_texts(&server, &["a photo of a cat", "an astronaut"]).await;
    let images = grpc_images(&server, &[cat.clone(), astronaut.clone()]).await;
    // Every shape in one request, as LangChain, LlamaIndex, Haystack and LiteLLM send them.
    let input = json!([
        "a photo of a cat",
        {"text": "an astronaut"},
        {"image": b64(&cat)},
        {"image": format!("data:image/jpeg;base64,{}", b64(&astronaut))},
        {"bytes": b64(&cat)},
        {"url": format!("data:image/jpeg;base64,{}", b64(&astronaut))},
        format!("data:image/jpeg;base64,{}", b64(&cat)),
    ]);
    let want = [
        &texts[0], &texts[1], &images[0], &images[1], &images[0], &images[1], &images[0],
    ];
    for (path, extra) in [
        ("/v1/embeddings", json!({})),
        ("/embeddings", json!({"embedding_type": "base64"})),
        (
            "/v1/embeddings",
            json!({"encoding_type": "float", "task": "retrieval.query", "normalized": true, "dimensions": 32, "late_chunking": false}),
        ),
    ] {
        let mut body = json!({"model": "jina-clip-v2", "input": input});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let reply = post_json(http, path, &body, None).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert!(reply.header("x-request-id").is_some());
        assert!(
            reply
                .header("server-timing")
                .is_some_and(|t| t.starts_with("total;dur=")),
            "{}",
            reply.head
        );
        let json = reply.json();
        assert_eq!(json["object"], "list");
        assert_eq!(json["model"], "ViT-B-32-tiny-test");
        assert!(json["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            json["usage"]["prompt_tokens"],
            json["usage"]["total_tokens"]
        );
        let data = json["data"].as_array().unwrap();
        assert_eq!(data.len(), want.len());
        for (i, (d, w)) in data.iter().zip(want).enumerate() {
            assert_eq!(d["index"], i);
            assert_eq!(d["object"], "embedding");
            if extra.get("embedding_type").is_some() {
                assert!(d["embedding"].is_string());
            }
            assert_same(&floats(&d["embedding"]), w, &format!("{path} input[{i}]"));
        }
    }
}

#[tokio::test]
async fn jina_embedding_errors_name_the_item_and_carry_detail() {
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(Secret("k1".into()));
    cfg.model_aliases = vec!["jina-clip-v2".into(), "rerank-v3.5".into()];
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"input": ["a", {"image": "https://example.com/cat.jpg"}]}),
            400,
            "input[1]: image URL fetching is not enabled",
        ),
        (
            json!({"input": ["a", "b", {"url": "https://example.com/cat.jpg"}]}),
            400,
            "input[2]: image URL fetching is not enabled",
        ),
        (
            json!({"input": ["a", {"image": b64(b"not an image")}]}),
            400,
            "input[1]:",
        ),
        (
            json!({"input": [{"audio": "x"}]}),
            400,
            "input[0]: expected an object with `text`, `image`",
        ),
        (
            json!({"input": ["a"], "embedding_type": "binary"}),
            400,
            "embedding_type \"binary\"",
        ),
        (
            json!({"input": ["a"], "normalized": false}),
            400,
            "normalized false",
        ),
        (
            json!({"input": ["a"], "model": "jina-embeddings-v3"}),
            404,
            "`jina-embeddings-v3` is not served here; accepted names: `ViT-B-32-tiny-test`, `jina-clip-v2`, `rerank-v3.5`",
        ),
    ];
    for (body, status, needle) in cases {
        let reply = post_json(http, "/v1/embeddings", &body, Some("k1")).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        let json = reply.json();
        let detail = json["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{body}: {json}");
        assert_eq!(json["error"]["message"], detail, "{json}");
    }
    let reply = post_json(http, "/v1/embeddings", &json!({"input": ["a"]}), Some("k2")).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert!(reply.json()["detail"].is_string());
    let reply = post_json(
        http,
        "/v1/embeddings",
        &json!({"input": ["a"], "model": "rerank-v3.5"}),
        Some("k1"),
    )
    .await;
    assert_eq!(reply.status, 200, "an alias is accepted: {}", reply.text);
}

pub async fn grpc_classify(
    server: &TestServer,
    request: pb::ClassifyRequest,
) -> pb::ClassifyResponse {
    pb::classify_client::ClassifyClient::new(server.channel.clone())
        .classify(keyed(request))
        .await
        .unwrap()
        .into_inner()
}

/// One image's gRPC scores, by label.
fn by_label(result: &pb::ClassifyResult) -> std::collections::HashMap<String, f32> {
    result
        .scores
        .iter()
        .map(|s| (s.label.clone(), s.probability))
        .collect()
}

#[tokio::test]
async fn jina_classify_equals_grpc_classify() {
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(Secret("k1".into()));
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let images = [image(CAT), image(ASTRONAUT)];
    let labels = ["a cat", "an astronaut", "a car"];
    let templates = ["a photo of {}."];
    let grpc = grpc_classify(
        &server,
        pb::ClassifyRequest {
            images: images.iter().cloned().map(Into::into).collect(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            templates: templates.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .await;
    let body = json!({
        "model": "ViT-B-32-tiny-test",
        "input": [{"image": b64(&images[0])}, format!("data:image/jpeg;base64,{}", b64(&images[1]))],
        "labels": labels,
        "templates": templates,
    });
    let reply = post_json(http, "/v1/classify", &body, Some("k1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let json = reply.json();
    assert!(json["usage"]["total_tokens"].is_u64());
    let data = json["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, (d, g)) in data.iter().zip(&grpc.results).enumerate() {
        assert_eq!(d["object"], "classification");
        assert_eq!(d["index"], i);
        let want = by_label(g);
        let predictions = d["predictions"].as_array().unwrap();
        let got: Vec<&str> = predictions
            .iter()
            .map(|p| p["label"].as_str().unwrap())
            .collect();
        assert_eq!(got, labels, "label order");
        let total: f64 = predictions
            .iter()
            .map(|p| p["score"].as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-4, "softmax sums to 1: {total}");
        for p in predictions {
            let w = want[p["label"].as_str().unwrap()];
            assert!(
                (p["score"].as_f64().unwrap() as f32 - w).abs() < 1e-5,
                "{p} vs {w}"
            );
        }
        assert_eq!(d["prediction"], g.scores[0].label.as_str());
        assert!((d["score"].as_f64().unwrap() as f32 - g.scores[0].probability).abs() < 1e-5);
    }

    // A label set, with top_k.
    let grpc = grpc_classify(
        &server,
        pb::ClassifyRequest {
            images: images.iter().cloned().map(Into::into).collect(),
            label_set: "cifar-10".into(),
            top_k: 3,
            ..Default::default()
        },
    )
    .await;
    let body = json!({"input": [{"image": b64(&images[0])}, {"image": b64(&images[1])}], "label_set": "cifar-10", "top_k": 3});
    let reply = post_json(http, "/v1/classify", &body, Some("k1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let json = reply.json();
    for (d, g) in json["data"].as_array().unwrap().iter().zip(&grpc.results) {
        let predictions = d["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 3);
        for (p, s) in predictions.iter().zip(&g.scores) {
            assert_eq!(p["label"], s.label.as_str());
            assert!((p["score"].as_f64().unwrap() as f32 - s.probability).abs() < 1e-5);
        }
    }

    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"input": [{"image": b64(&images[0])}, "a cat"], "labels": ["a", "b"]}),
            400,
            "input[1]: a text",
        ),
        (
            json!({"input": [{"image": b64(&images[0])}, {"image": b64(b"junk")}], "labels": ["a", "b"]}),
            400,
            "input[1]:",
        ),
        (
            json!({"input": [{"image": b64(&images[0])}], "labels": ["a", ""]}),
            400,
            "labels[1]",
        ),
        (
            json!({"input": [{"image": b64(&images[0])}], "label_set": "nope"}),
            404,
            "nope",
        ),
        (
            json!({"input": [{"image": b64(&images[0])}], "labels": ["a"], "model": "jina-clip-v2"}),
            404,
            "jina-clip-v2",
        ),
    ];
    for (body, status, needle) in cases {
        let reply = post_json(http, "/v1/classify", &body, Some("k1")).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        let json = reply.json();
        assert!(
            json["detail"].as_str().unwrap_or_default().contains(needle),
            "{json}"
        );
    }
    let reply = post_json(
        http,
        "/v1/classify",
        &json!({"input": [], "labels": ["a"]}),
        None,
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text);
}

async fn grpc_rank(
    server: &TestServer,
    query: pb::Query,
    candidates: Vec<pb::Query>,
) -> Vec<(u32, f32)> {
    pb::retrieve_client::RetrieveClient::new(server.channel.clone())
        .rank(keyed(pb::RankRequest {
            query: Some(query),
            candidates,
            top_k: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| (r.index, r.score))
        .collect()
}

fn text_query(t: &str) -> pb::Query {
    pb::Query {
        query: Some(pb::query::Query::Text(t.into())),
    }
}

fn image_query(b: &[u8]) -> pb::Query {
    pb::Query {
        query: Some(pb::query::Query::Image(b.to_vec().into())),
    }
}

fn ranked(json: &Value) -> Vec<(u32, f32)> {
    json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap() as u32,
                r["relevance_score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

fn assert_same_ranking(got: &[(u32, f32)], want: &[(u32, f32)]) {
    let order = |v: &[(u32, f32)]| v.iter().map(|r| r.0).collect::<Vec<_>>();
    assert_eq!(order(got), order(want), "rerank order");
    for (g, w) in got.iter().zip(want) {
        assert!((g.1 - w.1).abs() < 1e-5, "{g:?} vs {w:?}");
    }
}

#[tokio::test]
async fn rerank_equals_grpc_rank_on_every_path() {
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(Secret("k1".into()));
    cfg.model_aliases = vec!["rerank-v3.5".into()];
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let docs = [
        "a photo of a cat",
        "an astronaut in space",
        "a red car",
        "a bowl of soup",
    ];
    let want = grpc_rank(
        &server,
        text_query("a cat"),
        docs.iter().map(|d| text_query(d)).collect(),
    )
    .await;
    for path in ["/v1/rerank", "/v2/rerank", "/rerank"] {
        let body =
            json!({"model": "rerank-v3.5", "query": "a cat", "documents": docs, "top_n": null});
        let reply = post_json(http, path, &body, Some("k1")).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        let json = reply.json();
        assert!(json["id"].is_string() && json["model"].is_string() && json["usage"].is_object());
        assert_eq!(json["meta"]["billed_units"]["search_units"], 1);
        assert_same_ranking(&ranked(&json), &want);
        assert!(
            json["results"][0].get("document").is_none(),
            "no documents unless asked"
        );
    }
    // Cohere v1 with return_documents and top_n; {"text"} documents.
    let body = json!({"query": {"text": "a cat"}, "documents": docs.iter().map(|d| json!({"text": d})).collect::<Vec<_>>(), "top_n": 2, "return_documents": true});
    let json = post_json(http, "/v1/rerank", &body, Some("k1"))
        .await
        .json();
    assert_same_ranking(&ranked(&json), &want[..2]);
    for r in json["results"].as_array().unwrap() {
        let i = r["index"].as_u64().unwrap() as usize;
        assert_eq!(r["document"]["text"], docs[i], "{r}");
    }
    // Images ranked by a text, and texts by an image.
    let images = [image(CAT), image(ASTRONAUT)];
    let want = grpc_rank(
        &server,
        text_query("a cat"),
        images.iter().map(|b| image_query(b)).collect(),
    )
    .await;
    let body = json!({"query": "a cat", "documents": [{"image": b64(&images[0])}, format!("data:image/jpeg;base64,{}", b64(&images[1]))]});
    let json = post_json(http, "/rerank", &body, Some("k1")).await.json();
    assert_same_ranking(&ranked(&json), &want);
    let want = grpc_rank(
        &server,
        image_query(&images[1]),
        docs.iter().map(|d| text_query(d)).collect(),
    )
    .await;
    let body = json!({"query": {"image": b64(&images[1])}, "documents": docs});
    let json = post_json(http, "/v2/rerank", &body, Some("k1"))
        .await
        .json();
    assert_same_ranking(&ranked(&json), &want);

    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"query": "a", "documents": ["x", {"image": b64(b"junk")}]}),
            400,
            "documents[1]",
        ),
        (
            json!({"query": "a", "documents": ["x", "y", {"url": "https://e.com/a.jpg"}]}),
            400,
            "documents[2]: image URL fetching is not enabled",
        ),
        (
            json!({"query": {"image": b64(b"junk")}, "documents": ["x"]}),
            400,
            "query",
        ),
        (json!({"query": "a", "documents": []}), 400, "documents"),
        (
            json!({"query": "a", "documents": ["x"], "model": "rerank-english-v2.0"}),
            404,
            "rerank-v3.5",
        ),
        (json!({"documents": ["x"]}), 400, "query"),
    ];
    for (body, status, needle) in cases {
        let reply = post_json(http, "/v1/rerank", &body, Some("k1")).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        let json = reply.json();
        assert!(
            json["detail"].as_str().unwrap_or_default().contains(needle),
            "{needle}: {json}"
        );
    }
    let reply = post_json(
        http,
        "/v2/rerank",
        &json!({"query": "a", "documents": ["x"]}),
        Some("nope"),
    )
    .await;
    assert_eq!(reply.status, 401);
}
