//! `POST /v1/classify`: zero-shot image classification in Jina's shape, through the same
//! ClassifyService as gRPC `Classify` (softmax over labels of `logit_scale` x cosine).
//!
//! Request: `{"model"?, "input": [{"image": b64 | data URI} | "data:image/...", ...],
//! "labels": [...]}`; extensions: `label_set` (a stored or built-in set instead of `labels`),
//! `templates` (with inline labels), `top_k`. Reply: `{"usage": {"total_tokens"}, "data":
//! [{"object": "classification", "index", "prediction", "score", "predictions": [{"label",
//! "score"}]}]}`: `predictions` in label order (with `top_k`: the k best, best first), `score` the
//! softmax probability. Text inputs are refused: the domain classifies images.

use std::collections::HashMap;

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::post,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    api::Api,
    body::{Items, Labels, Strings},
    error::ApiError,
    inputs,
};
use crate::{
    classify::{ClassifyInput, LabelScore},
    embed::{Admission, Item},
};

pub fn routes(state: Api) -> Router {
    Router::new()
        .route("/v1/classify", post(classify))
        .with_state(state)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ClassifyRequest {
    #[serde(default)]
    model: Option<String>,
    /// Images: `{image: base64 | data URI}` objects or data-URI strings.
    #[schema(value_type = Vec<serde_json::Value>)]
    input: Items,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    labels: Labels,
    #[serde(default)]
    label_set: Option<String>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    templates: Strings,
    #[serde(default)]
    top_k: Option<u64>,
}

/// Zero-shot image classification (Jina's shape).
#[utoipa::path(post, path = "/v1/classify", tag = "classify", request_body(content = ClassifyRequest, example = json!({"input": [{"image": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="}], "labels": ["a cat", "a dog"]})),
    responses((status = 200, description = "`{usage, data: [{object, index, prediction, score, predictions}]}`", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape: `{error: {message, type, param, code}, detail}`), naming the offending field"),
    ))]
pub(super) async fn classify(State(state): State<Api>, headers: HeaderMap, body: Body) -> Response {
    state
        .call(("Jina", "classify"), &headers, async {
            let (request, _held) = state
                .read_json::<ClassifyRequest>(&headers, body, "classify request")
                .await?;
            run(&state, request).await
        })
        .await
}

/// The classify route's answer to a body already read (a Batch API line): the same parsing and
/// the same code as [`classify`].
pub(super) async fn classify_body(api: &Api, bytes: &[u8]) -> Result<Response, ApiError> {
    run(api, api.parse_json(bytes, "classify request")?).await
}

/// The images of `input`; a text is refused by name.
async fn images(
    fetcher: Option<&crate::embed::fetch::Fetcher>,
    input: Items,
) -> Result<Vec<bytes::Bytes>, ApiError> {
    inputs::items(fetcher, "input", input.0)
        .await?
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Item::Image(bytes) => Ok(bytes),
            Item::Text(_) => Err(inputs::invalid(
                "input",
                &format!("input[{i}]"),
                "a text: this server classifies images only (send {\"image\": \"<base64>\"}); \
                 rank texts against labels with /v1/rerank instead",
            )),
        })
        .collect()
}

async fn run(api: &Api, request: ClassifyRequest) -> Result<Response, ApiError> {
    api.check_model(request.model.as_deref())?;
    super::call::charge(request.input.0.len()).await?;
    let images = images(api.fetcher.as_ref(), request.input).await?;
    let label_set = request.label_set.unwrap_or_default();
    let top_k = request
        .top_k
        .map_or(0, |k| usize::try_from(k).unwrap_or(usize::MAX));
    // The label order `predictions` keeps.
    let order: Vec<String> = if label_set.is_empty() {
        request.labels.0.clone()
    } else {
        api.classify.get(&label_set)?.spec.labels.clone()
    };
    let input = ClassifyInput {
        images,
        labels: request.labels.0,
        label_set,
        templates: request.templates.0,
        top_k,
    };
    let permit = api.service.admit(Admission::TryNow).await?;
    let results = api.classify.classify(input, None, permit).await?;
    let data: Vec<Value> = results
        .into_iter()
        .enumerate()
        .map(|(index, scores)| result(index, scores, &order, top_k > 0))
        .collect();
    Ok(Json(json!({"usage": {"total_tokens": 0}, "data": data})).into_response())
}

/// One image's result. `scores` come best first; without `top_k` they are put in label order.
fn result(index: usize, mut scores: Vec<LabelScore>, order: &[String], top_k: bool) -> Value {
    let best = scores.first().cloned();
    if !top_k {
        let position: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        scores.sort_by_key(|s| {
            position
                .get(s.label.as_str())
                .copied()
                .unwrap_or(usize::MAX)
        });
    }
    let predictions: Vec<Value> = scores
        .iter()
        .map(|s| json!({"label": s.label, "score": s.probability}))
        .collect();
    json!({
        "object": "classification",
        "index": index,
        "prediction": best.as_ref().map(|b| b.label.as_str()),
        "score": best.as_ref().map(|b| b.probability),
        "predictions": predictions,
    })
}

/// The body handling up to the model, for the fuzzer.
pub(crate) fn fuzz_body(bytes: &[u8], max_items: usize) {
    if let Ok(request) = super::body::parse::<ClassifyRequest>(bytes, max_items) {
        let _ = inputs::parse_items("input", request.input.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(label: &str, probability: f32) -> LabelScore {
        LabelScore {
            label: label.into(),
            probability,
            score: 0.0,
        }
    }

    #[test]
    fn predictions_keep_label_order_and_the_best_leads() {
        let order = ["cat".to_string(), "dog".into(), "car".into()];
        let scores = vec![score("dog", 0.7), score("car", 0.2), score("cat", 0.1)];
        let r = result(3, scores.clone(), &order, false);
        assert_eq!(r["index"], 3);
        assert_eq!(r["prediction"], "dog");
        let labels: Vec<&str> = r["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["cat", "dog", "car"]);
        let r = result(0, scores[..2].to_vec(), &order, true);
        assert_eq!(r["predictions"][0]["label"], "dog");
    }

    #[test]
    fn texts_are_refused_by_name() {
        let items: Items =
            super::super::body::parse(br#"["data:image/png;base64,AAEC", "a cat"]"#, 8).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt.block_on(images(None, items)).unwrap_err();
        assert!(e.message.starts_with("input[1]: a text"), "{}", e.message);
    }
}
