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
    let photo = std::fs::read(fixtures().join("images/coffee_4000x3000.jpg")).expect("fixture");
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
