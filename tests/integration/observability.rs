//! The HTTP side (/healthz, /readyz, /metrics), request ids and per-response timings.

use crate::common::*;
use clip_serve::{
    grpc::pb,
    server::{StartOptions, start},
};
use tokio_stream::StreamExt;
use tonic::{Code, metadata::MetadataValue};

#[tokio::test]
async fn readiness_follows_loading_and_shutdown_while_liveness_stays_up() {
    let (release, hold) = tokio::sync::oneshot::channel();
    let mut server = start(
        config(&tiny_model()),
        StartOptions {
            hold_model_load: Some(hold),
            ..Default::default()
        },
    )
    .await
    .expect("server starts");
    let http = server.http_addr;
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    let (code, body) = http_get(http, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("loading"), "{body}");
    // Metrics answer before the model is there (no model info yet).
    let (code, body) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    assert!(!body.contains("clip_model_info{"), "{body}");

    release.send(()).expect("release the loader");
    server.wait_ready().await.expect("loads");
    assert_eq!(
        http_get(http, "/readyz").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(http_get(http, "/nope").await.0, 404);

    server.service.begin_shutdown();
    let (code, body) = http_get(http, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(
        http_get(http, "/healthz").await.0,
        200,
        "alive while draining"
    );
    server.shutdown().await.expect("clean shutdown");
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "the HTTP listener closes with the server"
    );
}

#[tokio::test]
async fn calls_carry_request_ids_and_timings_and_are_counted_by_code() {
    let server = serve(config(&tiny_model())).await;
    let http = server.server.http_addr;

    // A request id chosen by the client comes back, with the timings of the call.
    let mut request = tonic::Request::new(pb::EmbedTextsRequest {
        texts: vec!["a dog".into(), "a cat".into()],
    });
    request.metadata_mut().insert(
        "x-request-id",
        MetadataValue::from_static("client-chosen-42"),
    );
    let response = server.embed().embed_texts(request).await.expect("embeds");
    let md = response.metadata();
    assert_eq!(md.get("x-request-id").unwrap(), "client-chosen-42");
    let timing = md.get("server-timing").expect("timings").to_str().unwrap();
    for part in ["preprocess;dur=", "queue;dur=", "inference;dur="] {
        assert!(timing.contains(part), "{timing}");
    }
    let inference_ms: f64 = timing
        .rsplit_once("inference;dur=")
        .and_then(|(_, v)| v.parse().ok())
        .expect("a number");
    assert!(inference_ms > 0.0, "{timing}");

    // Without one, the server makes one up and returns it, on errors too.
    let err = server
        .embed()
        .embed_images(pb::EmbedImagesRequest { images: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let generated = err
        .metadata()
        .get("x-request-id")
        .expect("an id")
        .to_str()
        .unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    // A stream counts once, when it ends.
    let items = vec![
        pb::EmbedStreamRequest {
            id: "a".into(),
            item: Some(pb::embed_stream_request::Item::Text("x".into())),
        },
        pb::EmbedStreamRequest {
            id: "b".into(),
            item: Some(pb::embed_stream_request::Item::Text("y".into())),
        },
    ];
    let replies: Vec<_> = server
        .embed()
        .embed_stream(tokio_stream::iter(items))
        .await
        .expect("stream")
        .into_inner()
        .collect()
        .await;
    assert_eq!(replies.len(), 2);

    let (code, metrics) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    let value = |series: &str| {
        metric_value(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(
        value(
            r#"clip_requests_total{code="OK",interface="grpc",method="EmbedTexts",service="Embed"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            r#"clip_requests_total{code="INVALID_ARGUMENT",interface="grpc",method="EmbedImages",service="Embed"}"#
        ),
        1.0
    );
    // The stream may finish its accounting just after the client saw its last reply.
    let mut stream_ok = metric_value(
        &metrics,
        r#"clip_requests_total{code="OK",interface="grpc",method="EmbedStream",service="Embed"}"#,
    );
    for _ in 0..100 {
        if stream_ok == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        stream_ok = metric_value(
            &http_get(http, "/metrics").await.1,
            r#"clip_requests_total{code="OK",interface="grpc",method="EmbedStream",service="Embed"}"#,
        );
    }
    assert_eq!(stream_ok, Some(1.0));
    assert_eq!(value(r#"clip_rows_computed_total{modality="text"}"#), 4.0);
    assert_eq!(
        value(r#"clip_preprocess_duration_seconds_count{modality="text"}"#),
        4.0
    );
    assert!(value(r#"clip_batch_size_rows_count{modality="text"}"#) >= 1.0);
    assert_eq!(value(r#"clip_queue_depth_rows{modality="text"}"#), 0.0);
    assert_eq!(value("clip_requests_in_flight"), 0.0);
    assert!(
        metrics.contains(r#"clip_model_info{model="ViT-B-32-tiny-test"#)
            && metrics.contains(r#"provider="cpu""#)
            && metrics.contains(r#"weights="test""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn rows_refused_by_a_full_queue_are_counted_as_rejected() {
    let mut cfg = config(&tiny_model());
    // A queue of 4 rows and a long batch delay: the first request's 4 rows sit in the queue while
    // the second one arrives.
    cfg.embed.limits.max_items_per_request = 4;
    cfg.embed.batch.max_queue_rows = 4;
    cfg.embed.batch.max_batch_size = 64;
    cfg.embed.batch.max_batch_delay = std::time::Duration::from_millis(500);
    let server = serve(cfg).await;
    let first = {
        let mut client = server.embed();
        tokio::spawn(async move {
            client
                .embed_texts(pb::EmbedTextsRequest {
                    texts: vec!["a".into(); 4],
                })
                .await
        })
    };
    let http = server.server.http_addr;
    for _ in 0..200 {
        let depth = metric_value(
            &http_get(http, "/metrics").await.1,
            r#"clip_queue_depth_rows{modality="text"}"#,
        );
        if depth == Some(4.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let err = server
        .embed()
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["b".into(); 2],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("--max-queue-rows"),
        "{}",
        err.message()
    );
    assert_eq!(
        first
            .await
            .unwrap()
            .expect("the first call completes")
            .into_inner()
            .embeddings
            .len(),
        4
    );
    let metrics = http_get(http, "/metrics").await.1;
    assert_eq!(
        metric_value(
            &metrics,
            r#"clip_rows_dropped_total{modality="text",reason="rejected"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
}
