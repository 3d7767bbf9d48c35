//! The server as clients see it: health, reflection, Info, the bad-input table, streams, one-tower
//! models and start-up errors.

use crate::common::*;
use clip_serve::{
    grpc::pb,
    server::{StartOptions, start},
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn some_image() -> bytes::Bytes {
    let reference = reference();
    read_fixture(&reference.images[0].file)
}

async fn health(channel: &tonic::transport::Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("health check")
        .into_inner();
    ServingStatus::try_from(response.status).expect("known status")
}

#[tokio::test]
async fn health_goes_from_not_serving_to_serving() {
    let (release, hold) = tokio::sync::oneshot::channel();
    let mut cfg = config(&tiny_model());
    cfg.shutdown_grace = std::time::Duration::from_millis(300);
    let mut server = start(
        cfg,
        StartOptions {
            hold_model_load: Some(hold),
            ..Default::default()
        },
    )
    .await
    .expect("server starts");
    let channel = connect(&server).await;
    for service in ["", "clip.v1.Embed", "clip.v1.Info"] {
        assert_eq!(
            health(&channel, service).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    // Calls during loading are UNAVAILABLE, not errors of the request.
    let err = pb::embed_client::EmbedClient::new(channel.clone())
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["a".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("first status").expect("ok");
    assert_eq!(first.status, ServingStatus::NotServing as i32);
    release.send(()).expect("release the loader");
    server.wait_ready().await.expect("loads");
    let next = watch.next().await.expect("second status").expect("ok");
    assert_eq!(next.status, ServingStatus::Serving as i32);
    for service in ["", "clip.v1.Embed", "clip.v1.Info"] {
        assert_eq!(
            health(&channel, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    // Shutdown reports NOT_SERVING to watchers, and an open Watch stream does not hold the server
    // past its grace period.
    let shutdown = tokio::spawn(server.shutdown());
    let last = watch.next().await.expect("status on shutdown").expect("ok");
    assert_eq!(last.status, ServingStatus::NotServing as i32);
    shutdown.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn reflection_lists_the_services_in_both_versions() {
    let server = serve(config(&tiny_model())).await;
    use tonic_reflection::pb::{v1, v1alpha};

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1")
        .into_inner();
    let reply = replies.next().await.expect("a reply").expect("ok");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["clip.v1.Embed", "clip.v1.Info", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "clip.v1.Embed".into(),
            ),
        ),
    };
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha")
        .into_inner();
    let reply = replies.next().await.expect("a reply").expect("ok");
    assert!(
        matches!(
            reply.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn info_describes_the_served_model() {
    let server = serve(config(&tiny_model())).await;
    let info = server
        .info()
        .get_info(pb::GetInfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    let reference = reference();
    assert_eq!(
        info.weights,
        pb::WeightsKind::Test as i32,
        "the fixture is a test model"
    );
    assert_eq!(info.embedding_dim as usize, reference.embed_dim);
    assert_eq!(info.context_length, 77);
    assert_eq!(info.image_size, 224);
    assert_eq!(info.execution_provider, "cpu");
    assert!(
        info.onnxruntime_version.starts_with("1."),
        "{}",
        info.onnxruntime_version
    );
    assert_eq!(info.server_version, env!("CARGO_PKG_VERSION"));
    let image = info.image.expect("image tower");
    assert!(
        image.loaded && image.dynamic_batch && image.input.contains("float32"),
        "{image:?}"
    );
    let text = info.text.expect("text tower");
    assert!(text.loaded && text.input.contains("int64"), "{text:?}");
    let limits = info.limits.expect("limits");
    assert_eq!(limits.max_items_per_request, 64);
    assert!(!info.apply_exif_orientation);
}

/// A PNG whose header claims `width` x `height` RGB pixels and that has no pixel data.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    png
}

#[tokio::test]
async fn bad_inputs_get_clear_errors_and_the_server_keeps_serving() {
    let mut cfg = config(&tiny_model());
    cfg.embed.limits.max_items_per_request = 4;
    cfg.embed.limits.max_image_bytes = 2_000_000;
    cfg.embed.limits.max_text_bytes = 1000;
    cfg.embed.limits.max_message_bytes = 4_000_000;
    let server = serve(cfg).await;
    let mut client = server.embed();
    let good = some_image().to_vec();
    assert!(
        good.len() < 2_000_000,
        "pick a fixture under the test's byte limit"
    );

    let images = |v: Vec<Vec<u8>>| pb::EmbedImagesRequest {
        images: v.into_iter().map(Into::into).collect(),
    };
    let texts = |v: Vec<&str>| pb::EmbedTextsRequest {
        texts: v.into_iter().map(String::from).collect(),
    };
    let cases: Vec<(&str, Result<(), tonic::Status>, Code, &str)> = vec![
        (
            "no images",
            client.embed_images(images(vec![])).await.map(drop),
            Code::InvalidArgument,
            "empty",
        ),
        (
            "no texts",
            client.embed_texts(texts(vec![])).await.map(drop),
            Code::InvalidArgument,
            "empty",
        ),
        (
            "undecodable bytes",
            client
                .embed_images(images(vec![
                    good.clone(),
                    b"definitely not an image".to_vec(),
                ]))
                .await
                .map(drop),
            Code::InvalidArgument,
            "images[1]",
        ),
        (
            "empty image",
            client.embed_images(images(vec![vec![]])).await.map(drop),
            Code::InvalidArgument,
            "images[0]",
        ),
        (
            "image over --max-image-bytes",
            client
                .embed_images(images(vec![good.clone(), vec![0xFF; 2_000_001]]))
                .await
                .map(drop),
            Code::InvalidArgument,
            "images[1]",
        ),
        (
            "decompression bomb header",
            client
                .embed_images(images(vec![png_header_only(30_000, 30_000)]))
                .await
                .map(drop),
            Code::InvalidArgument,
            "images[0]",
        ),
        (
            "truncated image",
            client
                .embed_images(images(vec![good[..good.len() / 3].to_vec()]))
                .await
                .map(drop),
            Code::InvalidArgument,
            "images[0]",
        ),
        (
            "too many images",
            client
                .embed_images(images(vec![good.clone(); 5]))
                .await
                .map(drop),
            Code::InvalidArgument,
            "--max-items-per-request",
        ),
        (
            "too many texts",
            client.embed_texts(texts(vec!["a"; 5])).await.map(drop),
            Code::InvalidArgument,
            "--max-items-per-request",
        ),
        (
            "text over --max-text-bytes",
            client
                .embed_texts(texts(vec!["ok", &"x".repeat(1001)]))
                .await
                .map(drop),
            Code::InvalidArgument,
            "texts[1]",
        ),
        (
            "message over the gRPC size limit",
            client
                .embed_images(images(vec![vec![7; 1_500_000]; 3]))
                .await
                .map(drop),
            Code::OutOfRange,
            "",
        ),
    ];
    for (name, result, code, needle) in cases {
        let status = result.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{name}: message {:?} lacks {needle:?}",
            status.message()
        );
        // The server keeps serving after every bad input.
        let ok = client
            .embed_texts(texts(vec!["still alive"]))
            .await
            .expect("server keeps serving");
        assert_eq!(ok.into_inner().embeddings.len(), 1);
    }
    let bomb = client
        .embed_images(images(vec![png_header_only(30_000, 30_000)]))
        .await
        .unwrap_err();
    assert!(
        bomb.message().contains("pixel"),
        "the bomb error says why: {}",
        bomb.message()
    );

    // Empty and whitespace texts are valid: open_clip encodes them.
    let response = client
        .embed_texts(texts(vec!["", "   "]))
        .await
        .expect("empty texts")
        .into_inner();
    assert_eq!(response.embeddings.len(), 2);
    assert!(
        response
            .embeddings
            .iter()
            .all(|e| (norm(&e.values) - 1.0).abs() < 1e-5)
    );
}

#[tokio::test]
async fn long_texts_say_they_were_truncated() {
    let server = serve(config(&tiny_model())).await;
    let long = "a photo of a cat ".repeat(40);
    let response = server
        .embed()
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["a photo of a cat".into(), long],
        })
        .await
        .expect("EmbedTexts")
        .into_inner();
    assert!(!response.embeddings[0].truncated);
    assert_eq!(response.embeddings[0].token_count, 7);
    assert!(response.embeddings[1].truncated);
    assert!(response.embeddings[1].token_count > 77);
}

#[tokio::test]
async fn the_stream_answers_each_id_and_survives_bad_items() {
    let server = serve(config(&tiny_model())).await;
    let good = some_image();
    let item = |id: &str, item: Option<pb::embed_stream_request::Item>| pb::EmbedStreamRequest {
        id: id.into(),
        item,
    };
    use pb::embed_stream_request::Item;
    let requests = vec![
        item("t1", Some(Item::Text("a photo of a dog".into()))),
        item(
            "bad-image",
            Some(Item::Image(bytes::Bytes::from_static(b"garbage"))),
        ),
        item("i1", Some(Item::Image(good.clone()))),
        item("nothing", None),
        item("t2", Some(Item::Text(String::new()))),
        item("i2", Some(Item::Image(good))),
    ];
    let n = requests.len();
    let mut replies = server
        .embed()
        .embed_stream(tokio_stream::iter(requests))
        .await
        .expect("stream opens")
        .into_inner();
    let mut seen = std::collections::HashMap::new();
    while let Some(reply) = replies.next().await {
        let reply = reply.expect("stream stays up");
        seen.insert(reply.id.clone(), reply.result.expect("a result"));
    }
    assert_eq!(seen.len(), n, "one reply per id: {:?}", seen.keys());
    use pb::embed_stream_response::Result as R;
    for id in ["t1", "i1", "t2", "i2"] {
        assert!(
            matches!(&seen[id], R::Embedding(e) if (norm(&e.values) - 1.0).abs() < 1e-5),
            "{id}: {:?}",
            seen[id]
        );
    }
    for id in ["bad-image", "nothing"] {
        let R::Error(e) = &seen[id] else {
            panic!("{id} should fail")
        };
        assert_eq!(e.code, Code::InvalidArgument as i32);
        assert_eq!(e.code_name, "INVALID_ARGUMENT");
    }
    let R::Error(e) = &seen["bad-image"] else {
        unreachable!()
    };
    assert!(e.message.starts_with("image:"), "{}", e.message);
}

#[tokio::test]
async fn a_one_tower_model_serves_that_tower_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("vision-only");
    copy_dir(&tiny_model(), &model);
    std::fs::remove_dir_all(model.join("textual")).expect("remove textual");
    let server = serve(config(&model)).await;
    let mut client = server.embed();
    let err = client
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["a".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("textual/model.onnx"),
        "{}",
        err.message()
    );
    let ok = client
        .embed_images(pb::EmbedImagesRequest {
            images: vec![some_image()],
        })
        .await
        .expect("images work");
    assert_eq!(ok.into_inner().embeddings.len(), 1);
    let info = server
        .info()
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!info.text.unwrap().loaded);
    assert!(info.image.unwrap().loaded);
}

async fn startup_error(model: &std::path::Path) -> String {
    match start(config(model), StartOptions::default()).await {
        Err(e) => format!("{e:#}"),
        Ok(mut server) => {
            let e = server.wait_ready().await.expect_err("loading must fail");
            format!("{e:#}")
        }
    }
}

#[tokio::test]
async fn broken_model_directories_are_start_up_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");

    let missing = dir.path().join("nope");
    let e = startup_error(&missing).await;
    assert!(e.contains("nope") && e.contains("not found"), "{e}");

    let wrong_dim = dir.path().join("wrong-dim");
    copy_dir(&tiny_model(), &wrong_dim);
    let config_path = wrong_dim.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["embed_dim"] = serde_json::json!(7);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let e = startup_error(&wrong_dim).await;
    assert!(e.contains("model.onnx") && e.contains("7"), "{e}");

    let no_tokenizer = dir.path().join("no-tokenizer");
    copy_dir(&tiny_model(), &no_tokenizer);
    std::fs::remove_file(no_tokenizer.join("textual/tokenizer.json")).unwrap();
    let e = startup_error(&no_tokenizer).await;
    assert!(e.contains("tokenizer.json"), "{e}");

    let wrong_size = dir.path().join("wrong-size");
    copy_dir(&tiny_model(), &wrong_size);
    let cfg_path = wrong_size.join("visual/preprocess_cfg.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["size"] = serde_json::json!([256, 256]);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = startup_error(&wrong_size).await;
    assert!(e.contains("visual/model.onnx") && e.contains("256"), "{e}");

    let not_onnx = dir.path().join("not-onnx");
    copy_dir(&tiny_model(), &not_onnx);
    std::fs::write(not_onnx.join("textual/model.onnx"), b"not a model").unwrap();
    let e = startup_error(&not_onnx).await;
    assert!(e.contains("textual/model.onnx"), "{e}");

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(tiny_model().join("config.json"), empty.join("config.json")).unwrap();
    let e = startup_error(&empty).await;
    assert!(e.contains("no tower"), "{e}");
}

#[tokio::test]
async fn shutdown_turns_health_off_and_refuses_new_calls() {
    let server = serve(config(&tiny_model())).await;
    let channel = server.channel.clone();
    let service = server.server.service.clone();
    assert!(service.is_ready());
    service.begin_shutdown();
    let err = pb::embed_client::EmbedClient::new(channel)
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["a".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    server.server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn shutdown_ends_an_idle_stream_with_unavailable() {
    let server = serve(config(&tiny_model())).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = server
        .embed()
        .embed_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    tx.send(pb::EmbedStreamRequest {
        id: "1".into(),
        item: Some(pb::embed_stream_request::Item::Text("a cat".into())),
    })
    .await
    .expect("send");
    let first = replies.next().await.expect("a reply").expect("ok");
    assert_eq!(first.id, "1");
    // The client keeps its side open; shutdown must still end the stream.
    server.server.service.begin_shutdown();
    let end = replies.next().await.expect("the stream ends with a status");
    assert_eq!(end.expect_err("an error status").code(), Code::Unavailable);
    drop(tx);
}

#[tokio::test]
async fn an_expired_deadline_is_deadline_exceeded_and_costs_nothing() {
    let server = serve(config(&tiny_model())).await;
    let mut request = tonic::Request::new(pb::EmbedTextsRequest {
        texts: vec!["a cat".into()],
    });
    request.set_timeout(std::time::Duration::from_nanos(1));
    let err = server.embed().embed_texts(request).await.unwrap_err();
    // Whichever notices first answers: our handler (DEADLINE_EXCEEDED, rows never queued) or tonic's
    // own timeout layer on either side (CANCELLED, "Timeout expired").
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // A generous deadline works, and the server is unharmed.
    let mut request = tonic::Request::new(pb::EmbedTextsRequest {
        texts: vec!["a cat".into()],
    });
    request.set_timeout(std::time::Duration::from_secs(30));
    let ok = server
        .embed()
        .embed_texts(request)
        .await
        .expect("within the deadline");
    assert_eq!(ok.into_inner().embeddings.len(), 1);
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_each_gets_its_own_vectors() {
    let server = serve(config(&tiny_model())).await;
    let texts: Vec<String> = (0..40).map(|i| format!("photo number {i}")).collect();
    // The reference: each text alone.
    let mut alone = Vec::new();
    for t in &texts {
        let r = server
            .embed()
            .embed_texts(pb::EmbedTextsRequest {
                texts: vec![t.clone()],
            })
            .await
            .unwrap();
        alone.push(r.into_inner().embeddings.remove(0).values);
    }
    // The same texts from 40 concurrent calls, batched together by the server.
    let calls = texts.iter().map(|t| {
        let mut client = server.embed();
        let t = t.clone();
        tokio::spawn(async move {
            client
                .embed_texts(pb::EmbedTextsRequest { texts: vec![t] })
                .await
        })
    });
    let calls: Vec<_> = calls.collect();
    for (call, want) in calls.into_iter().zip(&alone) {
        let got = call
            .await
            .expect("join")
            .expect("call")
            .into_inner()
            .embeddings
            .remove(0)
            .values;
        assert!(
            cosine(&got, want) > 0.99999,
            "a caller got someone else's vector"
        );
    }
}

#[tokio::test]
async fn an_undecodable_unary_message_is_invalid_argument() {
    let server = serve(config(&tiny_model())).await;
    // EmbedImagesRequest's field 1 (bytes) has the wire shape of EmbedTextsRequest's field 1
    // (string): sent to EmbedTexts, its bytes are a `text` that is not UTF-8.
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<pb::EmbedImagesRequest, pb::EmbedResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/clip.v1.Embed/EmbedTexts");
    let err = grpc
        .unary(
            tonic::Request::new(pb::EmbedImagesRequest {
                images: vec![vec![b'a', 0xff, 0xfe].into()],
            }),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("decode"), "{}", err.message());
    // The server is unharmed.
    let ok = server
        .embed()
        .embed_texts(pb::EmbedTextsRequest {
            texts: vec!["a".into()],
        })
        .await;
    assert!(ok.is_ok());
}
