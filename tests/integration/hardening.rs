//! Defects found in review (issue "Hardening"), each pinned by a test that failed before its fix.

use std::time::Duration;

use crate::common::*;
use clip_serve::grpc::pb;

fn image_rows_computed(metrics: &str) -> f64 {
    metric_value(metrics, r#"clip_rows_computed_total{modality="image"}"#).unwrap_or(0.0)
}

/// Stream items whose client went away are cancelled before they reach the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_items_of_a_client_that_left_are_not_computed() {
    let server = serve(config(&tiny_model())).await;
    let photo = read_fixture("images/coffee_4000x3000.jpg");
    const ITEMS: usize = 16;
    let (tx, rx) = tokio::sync::mpsc::channel(ITEMS);
    for i in 0..ITEMS {
        tx.send(pb::EmbedStreamRequest {
            id: format!("big-{i}"),
            item: Some(pb::embed_stream_request::Item::Image(photo.clone())),
        })
        .await
        .unwrap();
    }
    let mut replies = server
        .embed()
        .embed_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    // Every item is read (the server's in-flight window is 16) once the first reply is back: large
    // photos take long to decode, so most are still being preprocessed when the client leaves.
    let first = replies.message().await.expect("a reply").expect("one item");
    assert!(first.id.starts_with("big-"));
    drop(replies);
    drop(tx);
    // Wait until no item holds a request permit any more: cancelled items release theirs at once,
    // items still being computed only when they are done.
    let mut metrics = String::new();
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = http_get(server.server.http_addr, "/metrics").await.1;
        if metric_value(&metrics, "clip_requests_in_flight") == Some(0.0) {
            break;
        }
    }
    assert_eq!(metric_value(&metrics, "clip_requests_in_flight"), Some(0.0));
    let computed = image_rows_computed(&metrics);
    assert!(
        computed < ITEMS as f64 / 2.0,
        "{computed} of {ITEMS} items computed after the client left"
    );
}

/// After shutdown begins, collection administration, deletes and reads of stored items are
/// refused like every other call (and those admitted before it are drained: `admission` tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_calls_are_refused_once_shutdown_begins() {
    use pb::retrieve_client::RetrieveClient;
    let server = serve(config(&tiny_model())).await;
    let mut retrieve = RetrieveClient::new(server.channel.clone());
    retrieve
        .create_collection(pb::CreateCollectionRequest {
            name: "c".into(),
            ..Default::default()
        })
        .await
        .expect("created");
    server.server.service.begin_shutdown();
    let unavailable = |r: Result<(), tonic::Status>, what: &str| {
        let code = r.map_err(|e| e.code()).err();
        assert_eq!(code, Some(tonic::Code::Unavailable), "{what}");
    };
    unavailable(
        retrieve
            .delete(pb::DeleteRequest {
                collection: "c".into(),
                ids: vec!["a".into()],
            })
            .await
            .map(|_| ()),
        "Delete",
    );
    unavailable(
        retrieve
            .get_items(pb::GetItemsRequest {
                collection: "c".into(),
                ids: vec!["a".into()],
            })
            .await
            .map(|_| ()),
        "GetItems",
    );
    unavailable(
        retrieve
            .list_collections(pb::ListCollectionsRequest {})
            .await
            .map(|_| ()),
        "ListCollections",
    );
    unavailable(
        retrieve
            .delete_collection(pb::DeleteCollectionRequest { name: "c".into() })
            .await
            .map(|_| ()),
        "DeleteCollection",
    );
    unavailable(
        retrieve
            .create_collection(pb::CreateCollectionRequest {
                name: "d".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "CreateCollection",
    );
}

/// Listeners and health answer while the collections are still being read: Embed serves,
/// Retrieve (and the server as a whole) says NOT_SERVING and its calls UNAVAILABLE, until loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_collections_load_and_retrieve_waits_for_them() {
    use clip_serve::server::{StartOptions, start};
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let (release, hold) = tokio::sync::oneshot::channel();
    let mut server = start(
        config(&tiny_model()),
        StartOptions {
            hold_collections_load: Some(hold),
            ..Default::default()
        },
    )
    .await
    .expect("starts");
    let channel = connect(&server).await;
    let mut health = HealthClient::new(channel.clone());
    let status = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    // The model comes up; the collections are still held back.
    let embed_serving = loop {
        let s = health
            .check(status("clip.v1.Embed"))
            .await
            .unwrap()
            .into_inner();
        if s.status == ServingStatus::Serving as i32 {
            break true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(embed_serving);
    for service in ["clip.v1.Retrieve", ""] {
        let s = health.check(status(service)).await.unwrap().into_inner();
        assert_eq!(s.status, ServingStatus::NotServing as i32, "{service:?}");
    }
    let mut retrieve = pb::retrieve_client::RetrieveClient::new(channel.clone());
    let e = retrieve
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("loading"), "{}", e.message());
    let (code, body) = http_get(server.http_addr, "/readyz").await;
    assert_eq!(
        (code, body.trim()),
        (503, "not ready: the collections are loading")
    );
    // Embedding works meanwhile.
    let mut embed = pb::embed_client::EmbedClient::new(channel.clone());
    embed
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["a cat".into()],
        })
        .await
        .expect("Embed serves while collections load");

    release.send(()).unwrap();
    server.wait_ready().await.expect("ready");
    for service in ["clip.v1.Retrieve", ""] {
        let s = health.check(status(service)).await.unwrap().into_inner();
        assert_eq!(s.status, ServingStatus::Serving as i32, "{service:?}");
    }
    retrieve
        .list_collections(pb::ListCollectionsRequest {})
        .await
        .expect("Retrieve serves once loaded");
    assert_eq!(http_get(server.http_addr, "/readyz").await.0, 200);
    server.shutdown().await.unwrap();
}

/// Concurrent image upserts while the collection is deleted and created again, 25 times: every
/// acknowledged item that the collection holds on disk is also found by Search, and an ABORTED
/// write left nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_under_concurrent_upserts_loses_no_acknowledged_item() {
    use pb::retrieve_client::RetrieveClient;
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    };
    let server = serve(config(&tiny_model())).await;
    let mut admin = RetrieveClient::new(server.channel.clone());
    let create = pb::CreateCollectionRequest {
        name: "c".into(),
        ..Default::default()
    };
    admin
        .create_collection(create.clone())
        .await
        .expect("created");
    let image = read_fixture("images/chelsea_tiny_13x9.png");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let aborted = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (stop, acked, aborted, image) = (
            Arc::clone(&stop),
            Arc::clone(&acked),
            Arc::clone(&aborted),
            image.clone(),
        );
        let mut client = RetrieveClient::new(server.channel.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("w{w}-{n}");
                let result = client
                    .upsert(pb::UpsertRequest {
                        collection: "c".into(),
                        items: vec![pb::Item {
                            id: id.clone(),
                            content: Some(pb::item::Content::Image(image.clone())),
                            metadata: Default::default(),
                        }],
                        model: String::new(),
                    })
                    .await;
                match result {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(e) if e.code() == tonic::Code::Aborted => aborted.lock().unwrap().push(id),
                    Err(e) if e.code() == tonic::Code::NotFound => {}
                    Err(e) => panic!("upsert {id}: {e:?}"),
                }
            }
        }));
    }
    for _ in 0..25 {
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        admin
            .delete_collection(pb::DeleteCollectionRequest { name: "c".into() })
            .await
            .expect("deleted");
        admin
            .create_collection(create.clone())
            .await
            .expect("re-created");
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let aborted = aborted.lock().unwrap().clone();
    let on_disk: Vec<String> = admin
        .get_items(pb::GetItemsRequest {
            collection: "c".into(),
            ids: acked.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|i| i.id)
        .collect();
    let count = admin
        .get_collection(pb::GetCollectionRequest { name: "c".into() })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert!(
        count <= 1000,
        "{count} items: more than one search can list"
    );
    let dim = server
        .info()
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .embedding_dim;
    let found: std::collections::HashSet<String> = admin
        .search(pb::SearchRequest {
            exact: false,
            collection: "c".into(),
            query: Some(pb::Query {
                query: Some(pb::query::Query::Vector(pb::Vector {
                    values: vec![1.0; dim as usize],
                })),
            }),
            top_k: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits
        .into_iter()
        .map(|h| h.id)
        .collect();
    let invisible: Vec<&String> = on_disk.iter().filter(|id| !found.contains(*id)).collect();
    assert!(
        invisible.is_empty(),
        "{} acknowledged items on disk but never found by Search: {invisible:?}",
        invisible.len()
    );
    assert_eq!(found.len() as u64, count, "index and count agree");
    let leftovers = admin
        .get_items(pb::GetItemsRequest {
            collection: "c".into(),
            ids: aborted.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(leftovers.is_empty(), "ABORTED writes left {leftovers:?}");
    eprintln!(
        "{} upserts acknowledged, {} aborted, {} in the last incarnation",
        acked.len(),
        aborted.len(),
        on_disk.len()
    );
}

/// The API key is checked before the body is read: a client without the key cannot make the
/// server wait for (or buffer) a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_before_the_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(clip_serve::security::Secret("right".into()));
    let server = serve(cfg).await;
    let mut conn = tokio::net::TcpStream::connect(server.server.http_addr)
        .await
        .unwrap();
    // A head that announces 30 000 body bytes, and no body.
    conn.write_all(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\nContent-Length: 30000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reply = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut reply))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    let head = String::from_utf8_lossy(&reply[..n]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}

/// Item lists are counted while the body is parsed: past the limit the request is refused even
/// though the rest of the body is not even valid JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_over_the_limit_are_refused_while_parsing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = config(&tiny_model());
    cfg.embed.limits.max_items_per_request = 4;
    let server = serve(cfg).await;
    let body = format!("{{\"input\": [{}\"x\", !!!", "\"a\", ".repeat(10));
    let mut conn = tokio::net::TcpStream::connect(server.server.http_addr)
        .await
        .unwrap();
    conn.write_all(
        format!(
            "POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(
        reply.contains("more than 4 items") && reply.contains("--max-items-per-request"),
        "{reply}"
    );
}

/// An inline Classify is admitted for the work it brings: its uncached prompts count as the
/// requests they would be, so a few such calls cannot run the text tower for minutes under one
/// permit each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_classify_costs_the_requests_its_prompts_are_worth() {
    let mut cfg = config(&tiny_model());
    cfg.embed.limits.max_concurrent_requests = 4;
    cfg.embed.limits.max_items_per_request = 4;
    cfg.embed.batch.max_queue_rows = 64;
    cfg.classify.text_cache_bytes = 0;
    let server = serve(cfg).await;
    let mut classify = pb::classify_client::ClassifyClient::new(server.channel.clone());
    let image = read_fixture("images/chelsea_tiny_13x9.png");
    let request = |labels: usize| pb::ClassifyRequest {
        images: vec![image.clone()],
        labels: (0..labels).map(|i| format!("label {i}")).collect(),
        ..Default::default()
    };
    // 13 prompts = 4 requests' worth: exactly what the server has.
    classify.classify(request(13)).await.expect("fits");
    // 17 prompts = 5 requests' worth: more than the server could ever admit.
    let e = classify.classify(request(17)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("--max-concurrent-requests"),
        "{}",
        e.message()
    );
}

/// The prompts of all created label sets together are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_label_set_prompts_are_bounded_together() {
    let mut cfg = config(&tiny_model());
    cfg.classify.max_label_set_prompts = 10;
    let server = serve(cfg).await;
    let mut classify = pb::classify_client::ClassifyClient::new(server.channel.clone());
    let set = |name: &str| pb::CreateLabelSetRequest {
        name: name.into(),
        labels: vec!["cat".into(), "dog".into(), "bird".into()],
        templates: vec!["a photo of a {}.".into(), "a drawing of a {}.".into()],
    };
    classify
        .create_label_set(set("first"))
        .await
        .expect("6 prompts fit");
    let e = classify.create_label_set(set("second")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("--max-label-set-prompts"),
        "{}",
        e.message()
    );
}

/// Open connections are bounded across both listeners: one over `--max-connections` is closed as
/// soon as it is accepted, and its place comes back when a connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_on_accept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = config(&tiny_model());
    cfg.doors.max_connections = 2;
    let server = serve(cfg).await;
    // The test's own gRPC channel holds one place; one more idle HTTP connection takes the other.
    let idle = tokio::net::TcpStream::connect(server.server.http_addr)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let try_get = || async {
        let mut conn = tokio::net::TcpStream::connect(server.server.http_addr)
            .await
            .unwrap();
        let _ = conn
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await;
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply).await;
        String::from_utf8_lossy(&reply).to_string()
    };
    let refused = try_get().await;
    assert!(
        refused.is_empty(),
        "a third connection was served: {refused}"
    );
    drop(idle);
    let mut served = String::new();
    for _ in 0..50 {
        served = try_get().await;
        if !served.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    let mut probe = server.embed();
    probe
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["still serving".into()],
        })
        .await
        .expect("the gRPC connection kept its place");
    let (_, metrics) = {
        // The metrics request needs a place of its own too: it is the second connection now.
        let mut out = (0, String::new());
        for _ in 0..50 {
            let body = try_get_metrics(server.server.http_addr).await;
            if !body.is_empty() {
                out = (200, body);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        out
    };
    assert!(
        metric_value(&metrics, "clip_connections_refused_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
}

pub(crate) async fn try_get_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = conn
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply).await;
    parse_http(&reply).map(|(_, body)| body).unwrap_or_default()
}

/// Request payloads in flight are held against one byte budget across both doors: with the budget
/// spent, a unary gRPC call gets RESOURCE_EXHAUSTED and an HTTP body 429, until bytes come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_admitted_against_one_byte_budget_for_both_doors() {
    let mut cfg = config(&tiny_model());
    cfg.max_inflight_bytes = 64 * 1024;
    let server = serve(cfg).await;
    let budget = server.server.service.gate().bytes().clone();
    let spent = budget.try_take(60 * 1024).expect("the budget is free");
    let request = || pb::EmbedTextsRequest {
        texts: vec!["x".repeat(8 * 1024)],
    };
    let e = server.embed().embed_texts(request()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("--max-inflight-bytes"),
        "{}",
        e.message()
    );
    let body = serde_json::json!({"input": ["x".repeat(8 * 1024)]}).to_string();
    let (status, reply) = post_raw(server.server.http_addr, "/v1/embeddings", &body).await;
    assert_eq!(status, 429, "{reply}");
    drop(spent);
    server
        .embed()
        .embed_texts(request())
        .await
        .expect("fits again");
    let (status, reply) = post_raw(server.server.http_addr, "/v1/embeddings", &body).await;
    assert_eq!(status, 200, "{reply}");
}

async fn post_raw(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).await.unwrap();
    parse_http(&reply).unwrap_or_default()
}

/// Idle streams cannot hold every reading turn (`--max-stream-readers`): a stream with nothing to
/// read gives its turn away, so an active stream is served while many idle ones stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_do_not_starve_an_active_one() {
    let mut cfg = config(&tiny_model());
    cfg.max_stream_readers = 2;
    let server = serve(cfg).await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        let (keep_open, requests) = tokio::sync::mpsc::channel::<pb::EmbedStreamRequest>(1);
        let stream = server
            .embed()
            .embed_stream(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .expect("an idle stream opens");
        idle.push((keep_open, stream));
    }
    let request = pb::EmbedStreamRequest {
        id: "active".into(),
        item: Some(pb::embed_stream_request::Item::Text(
            "a photo of a cat".into(),
        )),
    };
    let mut replies = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        server
            .embed()
            .embed_stream(tokio_stream::iter(vec![request])),
    )
    .await
    .expect("the active stream opens in time")
    .expect("opens")
    .into_inner();
    // 8 idle streams, 2 reading turns of 2 s each: served within ~8 s at worst.
    let reply = tokio::time::timeout(std::time::Duration::from_secs(30), replies.message())
        .await
        .expect("the active stream is served while 8 idle ones hold readers in turn")
        .expect("a reply")
        .expect("an item");
    assert_eq!(reply.id, "active");
    drop(idle);
}
