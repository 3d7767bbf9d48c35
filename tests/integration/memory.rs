//! Memory bounds whatever clients send: the decode byte budget, half-sent stream messages.

use std::time::Duration;

use crate::{common::*, hardening::try_get_metrics};
use clip_serve::grpc::pb;

/// Concurrent decodes share `--max-decode-bytes`: an image whose header says it needs more than
/// the whole budget is refused, naming the item and the flag, before any pixel is decoded;
/// images that fit are served, and nothing stays reserved afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decodes_are_bounded_by_the_decode_byte_budget() {
    let mut cfg = config(&tiny_model());
    cfg.embed.limits.max_image_bytes = 8 << 20;
    cfg.embed.limits.max_message_bytes = 16 << 20;
    cfg.embed.max_decode_bytes = 16 << 20;
    let server = serve(cfg).await;
    let mut client = server.embed();
    let small = read_fixture("images/chelsea_tiny_13x9.png");
    // 4000 x 3000 JPEG: ~144 MB of decode working memory, far over 16 MiB.
    let large = read_fixture("images/coffee_4000x3000.jpg");
    let e = client
        .embed_images(pb::EmbedImagesRequest {
            images: vec![small.clone(), large],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("images[1]") && e.message().contains("--max-decode-bytes"),
        "{}",
        e.message()
    );
    let ok = client
        .embed_images(pb::EmbedImagesRequest {
            images: vec![small.clone(), small],
        })
        .await
        .expect("small images fit the budget")
        .into_inner();
    assert_eq!(ok.embeddings.len(), 2);
    // The refused request's small image may still be decoding on the blocking pool (work that
    // outlives its call keeps its reservation until it ends): wait for it, boundedly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = try_get_metrics(server.server.http_addr).await;
        let reserved = metric_value(&metrics, "clip_decode_reserved_bytes");
        if reserved == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing stays reserved: {reserved:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stream whose client stalls in the middle of a message: the part that arrived sits in the
/// server's receive buffer, so it is held against `--max-inflight-bytes` (visible on the gauge);
/// a second stalled stream that no longer fits is ended with RESOURCE_EXHAUSTED, and everything
/// is released when the client goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_stream_messages_are_held_against_the_byte_budget() {
    let mut cfg = config(&tiny_model());
    cfg.max_inflight_bytes = 1 << 20;
    cfg.embed.limits.max_message_bytes = 4 << 20;
    let server = serve(cfg).await;
    let addr = server.server.grpc_addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut stall = |bytes: usize| {
        let request = http::Request::post(format!("http://{addr}/clip.v1.Embed/EmbedStream"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        // A frame header announcing 2 MiB, then only `bytes` of it.
        let mut data = vec![0u8];
        data.extend((2u32 << 20).to_be_bytes());
        data.extend(vec![0x0a; bytes]);
        send.send_data(data.into(), false).unwrap();
        (response, send)
    };
    let held = || async {
        metric_value(
            &try_get_metrics(server.server.http_addr).await,
            "clip_inflight_request_bytes",
        )
        .unwrap_or(0.0)
    };
    let (_first, _first_send) = stall(700 << 10);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while held().await < (700 << 10) as f64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the half-sent bytes are never held: {}",
            held().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (second, _second_send) = stall(700 << 10);
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        let mut body = second.await.unwrap().into_body();
        while let Some(chunk) = body.data().await {
            chunk.unwrap();
        }
        let trailers = body.trailers().await.unwrap().unwrap_or_default();
        (
            trailers
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string()),
            trailers
                .get("grpc-message")
                .map(|v| v.to_str().unwrap().to_string()),
        )
    })
    .await
    .expect("the second stalled stream is ended");
    assert_eq!(
        status.0.as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED: {status:?}"
    );
    assert!(
        status.1.unwrap_or_default().contains("max-inflight-bytes"),
        "the message names the budget"
    );
    drop((_first, _first_send, client));
    connection.abort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while held().await > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bytes stay held after the client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
