//! vLLM's chat embeddings shapes on `/v1/embeddings`, Cohere's embed on `/v1/embed` and
//! `/v2/embed`, and Immich's urlencoded `/predict`, compared with the gRPC answers for the same
//! inputs, and each shape's refusals.

use std::net::SocketAddr;

use crate::{common::*, http_clients::*};
use serde_json::{Value, json};

async fn call(http: SocketAddr, path: &str, body: Value) -> Reply {
    post_json(http, path, &body, None).await
}

fn data_uri(bytes: &[u8]) -> String {
    format!("data:image/jpeg;base64,{}", b64(bytes))
}

fn text_msg(text: &str) -> Value {
    json!({"role": "user", "content": [{"type": "text", "text": text}]})
}

fn image_msg(uri: &str) -> Value {
    json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]})
}

fn vectors(reply: &Reply) -> Vec<Vec<f32>> {
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect()
}

/// A 400 whose message contains `needle`.
fn refused(reply: &Reply, needle: &str) {
    assert_eq!(reply.status, 400, "{needle}: {}", reply.text);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

#[tokio::test]
async fn vllm_chat_embeddings_are_one_per_conversation_and_equal_grpc() {
    let server = serve(config(&tiny_model())).await;
    let http = server.server.http_addr;
    let cat = image(CAT);
    let uri = data_uri(&cat);
    let texts = grpc_texts(&server, &["a photo of a cat", "a dog\nplaying"]).await;
    let images = grpc_images(&server, std::slice::from_ref(&cat)).await;
    let post = |body: Value| call(http, "/v1/embeddings", body);

    // vLLM's example client: one conversation in `messages`, text or image.
    let got = vectors(&post(json!({"model": "ViT-B-32-tiny-test", "messages": [text_msg("a photo of a cat")], "encoding_format": "float"})).await);
    assert_eq!(got.len(), 1);
    assert_same(&got[0], &texts[0], "text conversation");
    let got =
        vectors(&post(json!({"messages": [image_msg(&uri)], "encoding_format": "base64"})).await);
    assert_same(&got[0], &images[0], "image conversation");
    // Messages joined as vLLM's CLIP chat template does: parts with "\n", messages with nothing.
    let got = vectors(&post(json!({"messages": [{"role": "system", "content": "a "}, {"role": "user", "content": [{"type": "text", "text": "dog"}, {"type": "text", "text": "playing"}]}]})).await);
    assert_same(&got[0], &texts[1], "joined messages");
    // Batched conversations, and conversations in `input`.
    for body in [
        json!({"messages": [[text_msg("a photo of a cat")], [image_msg(&uri)]]}),
        json!({"input": [[text_msg("a photo of a cat")], [image_msg(&uri)]]}),
    ] {
        let got = vectors(&post(body).await);
        assert_eq!(got.len(), 2);
        assert_same(&got[0], &texts[0], "batched text");
        assert_same(&got[1], &images[0], "batched image");
    }
    let got = vectors(&post(json!({"input": [text_msg("a photo of a cat")]})).await);
    assert_eq!(got.len(), 1, "one conversation in input");
    assert_same(&got[0], &texts[0], "input conversation");

    // Refusals, each naming what was wrong.
    let mixed = json!({"role": "user", "content": [{"type": "text", "text": "a cat"}, {"type": "image_url", "image_url": {"url": uri}}]});
    refused(
        &post(json!({"messages": [mixed]})).await,
        "messages: CLIP accepts text-only or image-only inputs, not both!",
    );
    let two = json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}, {"type": "image_url", "image_url": {"url": uri}}]});
    refused(
        &post(json!({"messages": [[text_msg("a")], [two]]})).await,
        "messages[1]: 2 images",
    );
    refused(
        &post(json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]})).await,
        "messages[0].content[0]: content part type \"input_audio\" is not supported",
    );
    refused(
        &post(json!({"messages": [image_msg("https://example.com/cat.jpg")]})).await,
        "image URL fetching is not enabled",
    );
    refused(
        &post(json!({"messages": [text_msg("a")], "input": "a"})).await,
        "both `input` and `messages`",
    );
    refused(
        &post(json!({"messages": "a cat"})).await,
        "messages: expected a list of messages",
    );
    let many: Vec<Value> = (0..65).map(|_| json!([text_msg("a")])).collect();
    refused(&post(json!({"messages": many})).await, "more than 64 items");
    // Plain inputs are unchanged.
    let got = vectors(&post(json!({"input": ["a photo of a cat", uri]})).await);
    assert_same(&got[1], &images[0], "plain input");
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|x| x.as_i64().expect("an integer"))
        .collect()
}

/// The documented rules (src/http/cohere.rs), from the gRPC floats.
fn int8_of(x: &[f32]) -> Vec<i64> {
    x.iter()
        .map(|&v| (f64::from(v) * 127.0).round() as i64)
        .collect()
}

fn ubinary_of(x: &[f32]) -> Vec<i64> {
    x.chunks(8)
        .map(|c| {
            c.iter()
                .enumerate()
                .map(|(i, &v)| if v >= 0.0 { 1i64 << (7 - i) } else { 0 })
                .sum()
        })
        .collect()
}

#[tokio::test]
async fn cohere_embed_types_and_shapes_equal_grpc() {
    let mut cfg = config(&tiny_model());
    cfg.model_aliases = vec!["embed-v4.0".into()];
    let server = serve(cfg).await;
    let http = server.server.http_addr;
    let cat = image(CAT);
    let uri = data_uri(&cat);
    let texts = grpc_texts(&server, &["a photo of a cat", "a red car"]).await;
    let images = grpc_images(&server, std::slice::from_ref(&cat)).await;
    let v2 = |body: Value| call(http, "/v2/embed", body);
    let v1 = |body: Value| call(http, "/v1/embed", body);

    let reply = v2(json!({"model": "embed-v4.0", "input_type": "search_document", "texts": ["a photo of a cat", "a red car"],
        "embedding_types": ["float", "int8", "uint8", "binary", "ubinary", "base64"], "output_dimension": 32})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let r = reply.json();
    assert_eq!(r["response_type"], "embeddings_by_type");
    assert_eq!(r["texts"], json!(["a photo of a cat", "a red car"]));
    assert_eq!(r["meta"]["api_version"]["version"], "2");
    assert!(r["meta"]["billed_units"]["input_tokens"].as_u64().unwrap() > 0);
    let e = &r["embeddings"];
    for (i, want) in texts.iter().enumerate() {
        assert_same(&floats(&e["float"][i]), want, "float");
        assert_same(&floats(&e["base64"][i]), want, "base64");
        assert_eq!(ints(&e["int8"][i]), int8_of(want), "int8 = round(127 x)");
        let uint8: Vec<i64> = int8_of(want).iter().map(|q| q + 128).collect();
        assert_eq!(ints(&e["uint8"][i]), uint8, "uint8 = int8 + 128");
        assert_eq!(
            ints(&e["ubinary"][i]),
            ubinary_of(want),
            "ubinary: packbits(x >= 0)"
        );
        let binary: Vec<i64> = ubinary_of(want).iter().map(|b| b - 128).collect();
        assert_eq!(ints(&e["binary"][i]), binary, "binary = ubinary - 128");
        assert_eq!(ints(&e["binary"][i]).len(), 32 / 8);
    }
    // Images (data URIs), and content-part inputs (one embedding each).
    let r = v2(json!({"model": "embed-v4.0", "input_type": "image", "images": [uri], "embedding_types": ["float"]})).await.json();
    assert_same(&floats(&r["embeddings"]["float"][0]), &images[0], "image");
    assert_eq!(r["meta"]["billed_units"]["images"], 1);
    let r = v2(
        json!({"model": "embed-v4.0", "input_type": "search_query", "inputs": [
        {"content": [{"type": "text", "text": "a red car"}]},
        {"content": [{"type": "image_url", "image_url": {"url": uri}}]}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = r.json();
    assert_same(
        &floats(&r["embeddings"]["float"][0]),
        &texts[1],
        "input text",
    );
    assert_same(
        &floats(&r["embeddings"]["float"][1]),
        &images[0],
        "input image",
    );
    // v1: floats without embedding_types, by type with them.
    let r = v1(json!({"texts": ["a photo of a cat"], "model": "embed-v4.0", "input_type": "search_query", "embedding_types": null, "truncate": null})).await.json();
    assert_eq!(r["response_type"], "embeddings_floats", "{r}");
    assert_same(&floats(&r["embeddings"][0]), &texts[0], "v1 floats");
    assert_eq!(r["texts"], json!(["a photo of a cat"]));
    assert_eq!(r["meta"]["api_version"]["version"], "1");
    let r = v1(json!({"texts": ["a photo of a cat"], "embedding_types": ["int8"]}))
        .await
        .json();
    assert_eq!(r["response_type"], "embeddings_by_type");
    assert_eq!(ints(&r["embeddings"]["int8"][0]), int8_of(&texts[0]));

    // truncate: END keeps the first tokens (open_clip), START the last words that fit, NONE refuses.
    let long = format!("{}a photo of a cat", "x ".repeat(200));
    let tail = format!("{}a photo of a cat", "x ".repeat(70));
    let want = grpc_texts(&server, &[&long, &tail]).await;
    let start = v2(json!({"texts": [long], "truncate": "START"}))
        .await
        .json();
    assert_same(
        &floats(&start["embeddings"]["float"][0]),
        &want[1],
        "START keeps the end",
    );
    let end = v2(json!({"texts": [long]})).await.json();
    assert_same(
        &floats(&end["embeddings"]["float"][0]),
        &want[0],
        "END is open_clip's",
    );
    let reply = v2(json!({"texts": ["a", long], "truncate": "NONE"})).await;
    assert!(
        reply.text.contains("texts[1]: 207 tokens"),
        "{}",
        reply.text
    );
    refused(
        &reply,
        "over the model's context of 77; truncate NONE refuses",
    );
    assert_eq!(
        v2(json!({"texts": ["a"], "truncate": "NONE"})).await.status,
        200
    );
    // vLLM's priority (an integer), as vLLM's Cohere endpoint reads it.
    assert_eq!(v2(json!({"texts": ["a"], "priority": 5})).await.status, 200);
    assert_eq!(
        v2(json!({"texts": ["a"], "priority": "high"})).await.status,
        400
    );

    // Refusals.
    refused(
        &v2(json!({"texts": ["a"], "embedding_types": ["int4"]})).await,
        "embedding type \"int4\" is not one of",
    );
    refused(
        &v2(json!({"texts": ["a"], "output_dimension": 512})).await,
        "output_dimension 512: this model's embeddings have 32",
    );
    refused(&v2(json!({"inputs": [{"content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": uri}}]}]})).await,
        "inputs[0]: CLIP accepts text-only or image-only inputs, not both!");
    refused(
        &v2(json!({"inputs": [{"content": [{"type": "video_url", "video_url": {"url": "x"}}]}]}))
            .await,
        "inputs[0].content[0]: content part type \"video_url\"",
    );
    refused(
        &v2(json!({"texts": ["a"], "images": [uri]})).await,
        "exactly one of texts, images and inputs",
    );
    refused(
        &v2(json!({"texts": ["a"], "input_type": "query"})).await,
        "input_type \"query\"",
    );
    refused(
        &v2(json!({"texts": ["a"], "max_tokens": 10})).await,
        "max_tokens 10",
    );
    refused(
        &v2(json!({"images": ["data:image/png;base64,AAEC"]})).await,
        "images[0]",
    );
    let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    refused(&v2(json!({"texts": many})).await, "more than 64 items");
    let reply = v2(json!({"texts": ["a"], "model": "embed-english-v3.0"})).await;
    assert_eq!(reply.status, 404, "{}", reply.text);
}

#[tokio::test]
async fn immich_predict_takes_urlencoded_text() {
    let server = serve(config(&tiny_model())).await;
    let http = server.server.http_addr;
    let want = grpc_texts(&server, &["a cat on a sofa"]).await;
    let entries = json!({"clip": {"textual": {"modelName": "ViT-B-32__openai"}}}).to_string();
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("entries", &entries)
        .append_pair("text", "a cat on a sofa")
        .finish();
    let form = "application/x-www-form-urlencoded";
    let reply = request(
        http,
        "POST",
        "/predict",
        Some((form, body.as_bytes())),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let clip: Vec<f32> = serde_json::from_str(reply.json()["clip"].as_str().unwrap()).unwrap();
    assert_same(&clip, &want[0], "urlencoded text");
    let reply = request(http, "POST", "/predict", Some((form, b"text=a")), None).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let many = "a=1&".repeat(9);
    let reply = request(
        http,
        "POST",
        "/predict",
        Some((form, many.as_bytes())),
        None,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
}
