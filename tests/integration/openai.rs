//! The OpenAI-compatible HTTP API against the gRPC one, API keys on both interfaces, and TLS / mTLS
//! handshakes with certificates made at test time. (The official `openai` Python SDK is exercised
//! against a running server by scripts/openai_sdk_test.py, from scripts/test.sh.)

use std::{net::SocketAddr, path::Path, sync::Arc};

use crate::common::*;
use base64::Engine as _;
use clip_serve::{grpc::pb, security::Secret};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, metadata::MetadataValue};

/// A POST with a JSON body over plain HTTP/1.1: status and parsed body.
async fn post_json(addr: SocketAddr, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let body = body.to_string();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> (u16, Value) {
    let (status, body) = parse_http(raw).expect("an HTTP response");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn vector(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(xs) => xs.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        other => panic!("not an embedding: {other}"),
    }
}

#[tokio::test]
async fn embeddings_over_http_equal_the_grpc_ones() {
    let server = serve(config(&tiny_model())).await;
    let http = server.server.http_addr;
    let texts = ["a photo of a cat", "a diagram of an engine", ""];
    let grpc = server
        .embed()
        .embed_texts(pb::EmbedTextsRequest {
            texts: texts.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    for format in ["float", "base64"] {
        let (status, body) = post_json(
            http,
            "/v1/embeddings",
            &json!({"model": "ViT-B-32-tiny-test", "input": texts, "encoding_format": format, "user": "u1"}),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "ViT-B-32-tiny-test");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        for (i, (d, g)) in data.iter().zip(&grpc.embeddings).enumerate() {
            assert_eq!(d["object"], "embedding");
            assert_eq!(d["index"], i);
            let v = vector(&d["embedding"]);
            assert_eq!(v, g.values, "{format} input {i}: bit-identical to gRPC");
        }
        let tokens: u64 = grpc
            .embeddings
            .iter()
            .map(|e| u64::from(e.token_count))
            .sum();
        assert_eq!(body["usage"]["prompt_tokens"], tokens);
        assert_eq!(body["usage"]["total_tokens"], tokens);
    }
    // A single string works too.
    let (status, body) = post_json(
        http,
        "/v1/embeddings",
        &json!({"input": "a photo of a cat"}),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        vector(&body["data"][0]["embedding"]),
        grpc.embeddings[0].values
    );

    // Images as data: URIs, equal to EmbedImages.
    let image = read_fixture("images/chelsea_baseline_420.jpg");
    let uri = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&image)
    );
    let (status, body) = post_json(
        http,
        "/v1/embeddings",
        &json!({"input": [uri], "modality": "image"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let grpc_image = server
        .embed()
        .embed_images(pb::EmbedImagesRequest {
            images: vec![image],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        vector(&body["data"][0]["embedding"]),
        grpc_image.embeddings[0].values
    );
    assert_eq!(body["usage"]["prompt_tokens"], 0);

    let (status, models) = http_get(http, "/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "ViT-B-32-tiny-test");
    assert_eq!(models["data"][0]["object"], "model");

    let metrics = http_get(http, "/metrics").await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"clip_requests_total{code="OK",interface="http",method="embeddings",service="OpenAI"}"#
        ),
        Some(4.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_http_requests_get_openai_shaped_errors() {
    let mut cfg = config(&tiny_model());
    cfg.embed.limits.max_message_bytes = 4096;
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"input": ["a"], "dimensions": 16}),
            400,
            "dimensions",
            "dimensions 16",
        ),
        (
            json!({"input": ["a"], "model": "gpt-4"}),
            404,
            "model",
            "not served here",
        ),
        (
            json!({"input": ["a"], "encoding_format": "hex"}),
            400,
            "encoding_format",
            "hex",
        ),
        (
            json!({"input": [[1, 2, 3]]}),
            400,
            "input",
            "input[0]: token ids",
        ),
        (json!({"input": []}), 400, "input", "empty request"),
        (
            json!({"input": ["https://example.com/cat.jpg"], "modality": "image"}),
            400,
            "input",
            "input[0]: image URL fetching is not enabled",
        ),
        (
            json!({"input": ["data:image/png;base64,bm90IGFuIGltYWdl"], "modality": "image"}),
            400,
            "input",
            "input[0]:",
        ),
        (
            json!({"input": ["a"], "modality": "audio"}),
            400,
            "modality",
            "audio",
        ),
        (
            json!({"nothing": true}),
            400,
            "",
            "not a valid embeddings request",
        ),
        (
            json!({"input": ["x".repeat(5000)]}),
            413,
            "",
            "--max-message-bytes",
        ),
    ];
    for (body, status, param, needle) in cases {
        let (got, reply) = post_json(http, "/v1/embeddings", &body, None).await;
        assert_eq!(got, status, "{body}: {reply}");
        let error = &reply["error"];
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{body}: {reply}"
        );
        assert!(
            error["type"].is_string() && error["code"].is_string(),
            "{reply}"
        );
        if !param.is_empty() {
            assert_eq!(error["param"], param, "{reply}");
        }
        assert_eq!(
            reply["detail"], error["message"],
            "Jina's clients read detail"
        );
    }
}

#[tokio::test]
async fn api_keys_guard_both_interfaces_but_not_health_or_metrics() {
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(Secret("s3cret-key".into()));
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let request = |key: Option<&str>| {
        let mut r = tonic::Request::new(pb::EmbedTextsRequest {
            texts: vec!["a".into()],
        });
        if let Some(k) = key {
            r.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {k}")).unwrap(),
            );
        }
        r
    };
    for key in [None, Some("wrong")] {
        let err = server.embed().embed_texts(request(key)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{key:?}");
    }
    assert!(
        server
            .embed()
            .embed_texts(request(Some("s3cret-key")))
            .await
            .is_ok()
    );
    // Health checks need no key; reflection does (no --public-reflection).
    let health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert!(health.is_ok());
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            server.channel.clone(),
        );
    let listed = reflection
        .server_reflection_info(tokio_stream::iter([
            tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await;
    assert_eq!(listed.unwrap_err().code(), Code::Unauthenticated);

    for key in [None, Some("wrong")] {
        let (status, body) = post_json(http, "/v1/embeddings", &json!({"input": "a"}), key).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    let (status, _) = post_json(
        http,
        "/v1/embeddings",
        &json!({"input": "a"}),
        Some("s3cret-key"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    assert_eq!(http_get(http, "/metrics").await.0, 200);
    assert_eq!(http_get(http, "/v1/models").await.0, 401);
}

/// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

fn make_pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "clip-serve test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client_cert = rcgen::CertificateParams::new(vec!["client".into()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    Pki {
        dir,
        ca_pem: ca.pem(),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

async fn tls_grpc(
    addr: SocketAddr,
    pki: &Pki,
    client_cert: bool,
) -> Result<pb::EmbedResponse, String> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem));
    if client_cert {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &pki.client_cert_pem,
            &pki.client_key_pem,
        ));
    }
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    pb::embed_client::EmbedClient::new(channel)
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["a".into()],
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("call: {e:?}"))
}

async fn https_get(
    addr: SocketAddr,
    pki: &Pki,
    client_cert: bool,
    path: &str,
) -> Result<u16, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if client_cert {
        builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(pki.client_cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes()).unwrap(),
            )
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

fn tls_config(pki_dir: &Path, mtls: bool) -> clip_serve::Config {
    let mut cfg = config(&tiny_model());
    cfg.tls.cert = Some(pki_dir.join("server.pem"));
    cfg.tls.key = Some(pki_dir.join("server.key"));
    if mtls {
        cfg.tls.client_ca = Some(pki_dir.join("ca.pem"));
    }
    cfg
}

async fn start_tls(cfg: clip_serve::Config) -> clip_serve::server::RunningServer {
    let mut server = clip_serve::server::start(cfg, Default::default())
        .await
        .expect("starts with TLS");
    server.wait_ready().await.expect("loads");
    server
}

#[tokio::test]
async fn tls_serves_both_listeners() {
    let pki = make_pki();
    let server = start_tls(tls_config(pki.dir.path(), false)).await;
    let reply = tls_grpc(server.grpc_addr, &pki, false)
        .await
        .expect("TLS gRPC call");
    assert_eq!(reply.embeddings.len(), 1);
    assert_eq!(
        https_get(server.http_addr, &pki, false, "/healthz").await,
        Ok(200)
    );
    // Plaintext clients get nowhere.
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await;
    let plain_call = match plain {
        Ok(channel) => pb::embed_client::EmbedClient::new(channel)
            .embed_texts(pb::EmbedTextsRequest {
                texts: vec!["a".into()],
            })
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(
        !plain_call,
        "a plaintext call must fail against a TLS listener"
    );
    server.shutdown().await.unwrap();
}

/// HTTPS connections count against `--max-connections` like plain ones: with the one place taken
/// by an idle connection, a TLS request is closed on accept; once the place frees, it is served.
#[tokio::test]
async fn https_connections_count_against_the_connection_limit() {
    let pki = make_pki();
    let mut cfg = tls_config(pki.dir.path(), false);
    cfg.doors.max_connections = 1;
    let server = start_tls(cfg).await;
    let idle = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let refused = https_get(server.http_addr, &pki, false, "/healthz").await;
    assert!(
        refused.is_err(),
        "a second connection was served: {refused:?}"
    );
    drop(idle);
    let mut served = Err(String::new());
    for _ in 0..50 {
        served = https_get(server.http_addr, &pki, false, "/healthz").await;
        if served.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(served, Ok(200));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = make_pki();
    let server = start_tls(tls_config(pki.dir.path(), true)).await;
    assert!(tls_grpc(server.grpc_addr, &pki, true).await.is_ok());
    let refused = tls_grpc(server.grpc_addr, &pki, false).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    assert_eq!(
        https_get(server.http_addr, &pki, true, "/healthz").await,
        Ok(200)
    );
    assert!(
        https_get(server.http_addr, &pki, false, "/healthz")
            .await
            .is_err()
    );
    server.shutdown().await.unwrap();
}

/// With mTLS on both listeners, `--probe-addr` serves probes and metrics in plain HTTP without a
/// client certificate (kubelet probes and Prometheus cannot present one), and nothing else.
#[tokio::test]
async fn probes_and_metrics_need_no_client_certificate_on_the_probe_listener() {
    let pki = make_pki();
    let mut cfg = tls_config(pki.dir.path(), true);
    cfg.probe_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let server = start_tls(cfg).await;
    let probes = server.probe_addr.expect("a probe listener");
    assert_eq!(http_get(probes, "/healthz").await.0, 200);
    assert_eq!(http_get(probes, "/readyz").await.0, 200);
    let (status, metrics) = http_get(probes, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("clip_model_info{"), "{metrics}");
    // The API stays behind TLS: the probe listener does not serve it.
    assert_eq!(http_get(probes, "/v1/models").await.0, 404);
    server.shutdown().await.unwrap();
}

#[test]
fn incomplete_tls_flags_are_start_up_errors() {
    let paths = clip_serve::security::TlsPaths {
        cert: Some("/nonexistent/cert.pem".into()),
        key: None,
        client_ca: None,
    };
    assert!(paths.load().unwrap_err().contains("go together"));
    let paths = clip_serve::security::TlsPaths {
        cert: Some("/nonexistent/cert.pem".into()),
        key: Some("/nonexistent/key.pem".into()),
        client_ca: None,
    };
    assert!(paths.load().unwrap_err().contains("/nonexistent/cert.pem"));
}
