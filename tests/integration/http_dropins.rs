//! The drop-in routes for Hugging Face's InferenceClient (`POST /`), Weaviate's multi2vec-clip
//! (`/vectorize`, `/meta`, `/.well-known/*`) and Immich's machine learning (`/predict`, `/ping`),
//! in their exact shapes, against the gRPC answers for the same inputs.

use std::net::SocketAddr;

use crate::{common::*, http_clients::*};
use clip_serve::{grpc::pb, security::Secret};
use serde_json::{Value, json};

#[tokio::test]
async fn hugging_face_bodies_equal_grpc_answers() {
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(Secret("k1".into()));
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let cat = image(CAT);
    let labels = ["a cat", "an astronaut", "a car"];
    let grpc = grpc_classify(
        &server,
        pb::ClassifyRequest {
            images: vec![cat.clone().into()],
            labels: labels.iter().map(|s| s.to_string()).collect(),
            templates: vec!["This is a photo of {}.".into()],
            ..Default::default()
        },
    )
    .await;
    let joined = labels.join(",");
    for body in [
        json!({"inputs": b64(&cat), "parameters": {"candidate_labels": labels, "hypothesis_template": "This is a photo of {}."}}),
        json!({"inputs": {"image": b64(&cat), "candidateLabels": joined}, "parameters": {"hypothesis_template": "This is a photo of {}."}}),
    ] {
        let reply = post_json(http, "/", &body, Some("k1")).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let got = reply.json();
        let got = got.as_array().expect("a list");
        assert_eq!(got.len(), 3);
        for (g, w) in got.iter().zip(&grpc.results[0].scores) {
            assert_eq!(g["label"], w.label.as_str(), "sorted as gRPC");
            assert!((g["score"].as_f64().unwrap() as f32 - w.probability).abs() < 1e-5);
        }
    }
    // <= 0.25: no template, so the default one, as gRPC without templates.
    let grpc = grpc_classify(
        &server,
        pb::ClassifyRequest {
            images: vec![cat.clone().into()],
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .await;
    let body = json!({"image": b64(&cat), "parameters": {"candidate_labels": joined}});
    let got = post_json(http, "/", &body, Some("k1")).await.json();
    for (g, w) in got.as_array().unwrap().iter().zip(&grpc.results[0].scores) {
        assert_eq!(g["label"], w.label.as_str());
        assert!((g["score"].as_f64().unwrap() as f32 - w.probability).abs() < 1e-5);
    }
    // Feature extraction: one string or a list, root or nested options.
    let want = grpc_texts(&server, &["a cat", "a dog"]).await;
    for (body, n) in [
        (
            json!({"inputs": "a cat", "normalize": true, "truncate": true}),
            1,
        ),
        (
            json!({"inputs": ["a cat", "a dog"], "parameters": {"truncate": true}}),
            2,
        ),
    ] {
        let reply = post_json(http, "/", &body, Some("k1")).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let got = reply.json();
        let got = got.as_array().unwrap();
        assert_eq!(got.len(), n);
        for (g, w) in got.iter().zip(&want) {
            assert_same(&floats(g), w, "feature extraction");
        }
    }
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"something": "else"}),
            "expected a zero-shot image classification body",
        ),
        (
            json!({"inputs": b64(b"junk"), "parameters": {"candidate_labels": ["a", "b"]}}),
            "inputs",
        ),
        (
            json!({"inputs": "https://e.com/cat.jpg", "parameters": {"candidate_labels": ["a", "b"]}}),
            "image URL fetching is not enabled",
        ),
        (json!({"inputs": ["a", [1, 2]]}), "inputs[1]: token ids"),
        (json!({"image": b64(&cat)}), "candidate_labels"),
    ];
    for (body, needle) in cases {
        let reply = post_json(http, "/", &body, Some("k1")).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        let json = reply.json();
        assert!(
            json["error"].as_str().unwrap_or_default().contains(needle),
            "{needle}: {json}"
        );
    }
    let reply = post_json(http, "/", &json!({"inputs": "a"}), None).await;
    assert_eq!(reply.status, 401);
    assert!(reply.json()["error"].is_string());
}

#[tokio::test]
async fn weaviate_multi2vec_clip_shapes() {
    let server = serve(config(&tiny_model())).await;
    let http = server.server.http_addr;
    let images = [image(CAT), image(ASTRONAUT)];
    let texts = grpc_texts(&server, &["a cat", "a dog"]).await;
    let vectors = grpc_images(&server, &images).await;
    let body = json!({"texts": ["a cat", "a dog"], "images": [b64(&images[0]), b64(&images[1])]});
    let reply = post_json(http, "/vectorize", &body, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let json = reply.json();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["imageVectors", "textVectors"],
        "exactly these fields"
    );
    for (got, want) in json["textVectors"].as_array().unwrap().iter().zip(&texts) {
        assert_same(&floats(got), want, "text");
    }
    for (got, want) in json["imageVectors"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&vectors)
    {
        assert_same(&floats(got), want, "image");
    }
    assert_eq!(json["imageVectors"].as_array().unwrap().len(), 2);
    // Weaviate omits empty lists; null is empty too.
    for (body, n_texts, n_images) in [
        (json!({"texts": ["a cat"]}), 1, 0),
        (json!({"images": [b64(&images[0])], "texts": null}), 0, 1),
        (json!({}), 0, 0),
    ] {
        let json = post_json(http, "/vectorize", &body, None).await.json();
        assert_eq!(
            json["textVectors"].as_array().unwrap().len(),
            n_texts,
            "{body}"
        );
        assert_eq!(
            json["imageVectors"].as_array().unwrap().len(),
            n_images,
            "{body}"
        );
    }
    let json = post_json(
        http,
        "/vectorize",
        &json!({"texts": ["a"], "images": [b64(&images[0]), b64(b"junk")]}),
        None,
    )
    .await;
    assert_eq!(json.status, 400);
    let error = json.json()["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("images[1]:"), "{error}");
    let reply = post_json(http, "/vectorize", &json!({"texts": [1]}), None).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("texts[0]: expected a string")
    );
    let (status, meta) = http_get(http, "/meta").await;
    assert_eq!(status, 200, "{meta}");
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["model"]["embedding_dim"], 32);
    assert_eq!(http_get(http, "/.well-known/ready").await.0, 204);
    assert_eq!(http_get(http, "/.well-known/live").await.0, 204);

    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(Secret("k1".into()));
    let keyed_server = serve(cfg).await;
    let reply = post_json(
        keyed_server.server.http_addr,
        "/vectorize",
        &json!({"texts": ["a"]}),
        None,
    )
    .await;
    assert_eq!(reply.status, 401);
    assert!(
        reply.json()["error"].is_string(),
        "Weaviate needs a string error"
    );
    assert_eq!(
        http_get(keyed_server.server.http_addr, "/.well-known/ready")
            .await
            .0,
        204
    );
}

/// A multipart/form-data body as Immich's server builds it (`FormData`: a string field, a Blob).
/// A multipart body: its content type and bytes.
type Form = (String, Vec<u8>);

fn form(entries: &Value, image: Option<&[u8]>, text: Option<&str>) -> Form {
    let boundary = "----clipserveboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    let mut field = |head: String, data: &[u8]| {
        body.extend_from_slice(format!("--{boundary}\r\n{head}\r\n\r\n").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    };
    field(
        "Content-Disposition: form-data; name=\"entries\"".into(),
        entries.to_string().as_bytes(),
    );
    if let Some(image) = image {
        field(
            "Content-Disposition: form-data; name=\"image\"; filename=\"blob\"\r\nContent-Type: application/octet-stream".into(),
            image,
        );
    }
    if let Some(text) = text {
        field(
            "Content-Disposition: form-data; name=\"text\"".into(),
            text.as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn predict(addr: SocketAddr, form: Form, key: Option<&str>) -> Reply {
    request(addr, "POST", "/predict", Some((&form.0, &form.1)), key).await
}

#[tokio::test]
async fn immich_machine_learning_shapes() {
    let mut cfg = config(&tiny_model());
    cfg.api_key = Some(Secret("k1".into()));
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let cat = image(CAT);
    let want_image = grpc_images(&server, std::slice::from_ref(&cat)).await;
    let want_text = grpc_texts(&server, &["a cat on a sofa"]).await;

    let visual = json!({"clip": {"visual": {"modelName": "ViT-B-32__openai"}}});
    let reply = predict(http, form(&visual, Some(&cat), None), Some("k1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let json = reply.json();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["clip", "imageHeight", "imageWidth"]);
    let clip: Vec<f32> = serde_json::from_str(json["clip"].as_str().expect("a string")).unwrap();
    assert_same(&clip, &want_image[0], "visual");
    let (w, h, _) = clip_serve::preprocess::image::inspect(&cat, u64::MAX).unwrap();
    assert_eq!(
        (json["imageWidth"].as_u64(), json["imageHeight"].as_u64()),
        (Some(w as u64), Some(h as u64))
    );

    for name in [
        "ViT-B-32__openai",
        "immich-app/ViT-B-32__laion2b-s34b-b79k",
        "ViT-B-32-tiny-test",
    ] {
        let textual =
            json!({"clip": {"textual": {"modelName": name, "options": {"language": "en"}}}});
        let reply = predict(
            http,
            form(&textual, None, Some("a cat on a sofa")),
            Some("k1"),
        )
        .await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.text);
        let json = reply.json();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["clip"]);
        let clip: Vec<f32> = serde_json::from_str(json["clip"].as_str().unwrap()).unwrap();
        assert_same(&clip, &want_text[0], "textual");
    }

    let cases: Vec<(Form, u16, &str)> = vec![
        (form(&json!({"facial-recognition": {"detection": {"modelName": "buffalo_l"}}}), Some(&cat), None), 501, "facial-recognition"),
        (form(&json!({"clip": {"visual": {"modelName": "ViT-L-14__openai"}}}), Some(&cat), None), 404, "ViT-B-32__openai"),
        (form(&json!({"clip": {"visual": {"modelName": "ViT-B-32__openai"}}}), None, None), 400, "image"),
        (form(&json!({"clip": {"visual": {"modelName": "ViT-B-32__openai"}}}), Some(b"junk"), None), 400, "image"),
        (form(&json!({"clip": {}}), None, Some("a")), 422, "Invalid request format"),
        (("multipart/form-data; boundary=x".into(), b"--x\r\nContent-Disposition: form-data; name=\"entries\"\r\n\r\n{not json\r\n--x--\r\n".to_vec()), 422, "Invalid request format"),
        (("application/json".into(), b"{}".to_vec()), 400, "multipart"),
    ];
    for (body, status, needle) in cases {
        let reply = predict(http, body, Some("k1")).await;
        assert_eq!(reply.status, status, "{needle}: {}", reply.text);
        let json = reply.json();
        assert!(
            json["error"].as_str().unwrap_or_default().contains(needle),
            "{needle}: {json}"
        );
    }
    let reply = predict(http, form(&visual, Some(&cat), None), None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(http_get(http, "/ping").await, (200, "pong".to_string()));
}
