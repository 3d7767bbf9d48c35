//! Hugging Face Inference conventions on `POST /`, what `huggingface_hub.InferenceClient(model=
//! "http://host:port")` posts to: one URL for both tasks, so the body says which.
//!
//! Zero-shot image classification, in the three shapes the client versions send:
//! - `{"inputs": "<b64>", "parameters": {"candidate_labels": [...], "hypothesis_template"?}}`
//!   (>= 0.27),
//! - `{"inputs": {"image": "<b64>", "candidateLabels": "a,b"}, "parameters"?: {...}}` (0.26),
//! - `{"image": "<b64>", "parameters": {"candidate_labels": "a,b"}}` (<= 0.25),
//!
//! replied to with `[{"label", "score"}]`, best first (ClassifyService, as gRPC Classify; the
//! `hypothesis_template` is the one template). Feature extraction: `{"inputs": str | [str],
//! "normalize"?, "truncate"?, "parameters"?}` replied to with `[[...]]`, one vector per input.
//! Errors are `{"error": "<message>"}` (what the client reads).

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Value, json};

use super::{
    api::Api,
    body::{Items, Labels},
    error::{ApiError, Shape},
    inputs,
};
use crate::{
    classify::ClassifyInput,
    common::{Field, List},
    embed::{Admission, Item},
};

pub fn routes(state: Api) -> Router {
    Router::new().route("/", post(inference)).with_state(state)
}

/// 0.26's `inputs` object.
#[derive(Debug, Deserialize)]
struct ImageInputs {
    image: String,
    #[serde(rename = "candidateLabels", alias = "candidate_labels", default)]
    candidate_labels: Option<Labels>,
}

/// `inputs`: a string or a list (texts, or 0.27+'s one image), or 0.26's image object.
#[derive(Debug)]
enum Inputs {
    Image(ImageInputs),
    Items(Items),
}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InputsVisitor;
        impl<'de> Visitor<'de> for InputsVisitor {
            type Value = Inputs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, an array of strings, or an object with `image`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Inputs, E> {
                Ok(Inputs::Items(Items(vec![Value::String(s.to_string())])))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Inputs, A::Error> {
                Items::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Inputs::Items)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Inputs, A::Error> {
                ImageInputs::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Inputs::Image)
            }
        }
        deserializer.deserialize_any(InputsVisitor)
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
struct Parameters {
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    candidate_labels: Option<Labels>,
    #[serde(default)]
    hypothesis_template: Option<String>,
    #[serde(default)]
    normalize: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct InferenceRequest {
    /// Texts (a string or a list), one image (base64 in a list), or `{image, candidateLabels}`.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    inputs: Option<Inputs>,
    /// <= 0.25's image field.
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    /// Feature extraction's options at the root (<= 0.25, >= 0.34); `truncate` and the others are
    /// accepted and ignored (texts are cut at the context length, as open_clip does).
    #[serde(default)]
    normalize: Option<bool>,
}

/// What a body asks for.
enum Task {
    ZeroShot {
        image: String,
        labels: Labels,
        template: Option<String>,
    },
    Features {
        inputs: Items,
        normalize: Option<bool>,
    },
}

const EXPECTED: &str = "expected a zero-shot image classification body (`{\"inputs\": \"<base64 image>\", \
    \"parameters\": {\"candidate_labels\": [...]}}`) or a feature extraction body \
    (`{\"inputs\": \"text\" | [\"text\", ...]}`)";

fn task(request: InferenceRequest) -> Result<Task, ApiError> {
    let InferenceRequest {
        inputs,
        image,
        parameters,
        normalize,
    } = request;
    let Parameters {
        candidate_labels,
        hypothesis_template,
        normalize: normalize_param,
    } = parameters.unwrap_or_default();
    let zero_shot = |image: String, labels: Option<Labels>| {
        let labels = labels.ok_or_else(|| {
            ApiError::invalid(
                Some("candidate_labels"),
                "zero-shot image classification needs `candidate_labels`",
            )
        })?;
        Ok(Task::ZeroShot {
            image,
            labels,
            template: hypothesis_template.clone(),
        })
    };
    match (inputs, image) {
        (Some(Inputs::Image(i)), None) => {
            zero_shot(i.image, i.candidate_labels.or(candidate_labels))
        }
        (None, Some(image)) => zero_shot(image, candidate_labels),
        (Some(Inputs::Items(items)), None) if candidate_labels.is_some() => {
            let mut items = items.0;
            match (items.pop(), items.is_empty()) {
                (Some(Value::String(image)), true) => zero_shot(image, candidate_labels),
                _ => Err(ApiError::invalid(
                    Some("inputs"),
                    "zero-shot image classification takes one image: `inputs` must be one base64 string",
                )),
            }
        }
        (Some(Inputs::Items(inputs)), None) => Ok(Task::Features {
            inputs,
            normalize: normalize.or(normalize_param),
        }),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            None,
            format!("a body with both `inputs` and `image`: {EXPECTED}"),
        )),
        (None, None) => Err(ApiError::invalid(None, EXPECTED)),
    }
}

/// Hugging Face Inference: zero-shot image classification or feature extraction.
#[utoipa::path(post, path = "/", tag = "huggingface", request_body(content = InferenceRequest, example = json!({"inputs": "a photo of a cat"})),
    responses((status = 200, description = "`[{label, score}]` best first, or the feature vectors", body = serde_json::Value),
        (status = "4XX", description = "An error (`{error, detail}` strings)"),
    ))]
pub(super) async fn inference(
    State(state): State<Api>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    state
        .call_shaped(
            ("HuggingFace", "inference"),
            &headers,
            Shape::Plain,
            async {
                let (request, _held) = state
                    .read_json::<InferenceRequest>(&headers, body, "Hugging Face inference request")
                    .await
                    .map_err(|e| match e.status.as_u16() {
                        400 => ApiError {
                            message: format!("{}; {EXPECTED}", e.message),
                            ..e
                        },
                        _ => e,
                    })?;
                match task(request)? {
                    Task::ZeroShot {
                        image,
                        labels,
                        template,
                    } => zero_shot(&state, image, labels, template).await,
                    Task::Features { inputs, normalize } => {
                        features(&state, inputs, normalize).await
                    }
                }
            },
        )
        .await
}

async fn zero_shot(
    api: &Api,
    image: String,
    labels: Labels,
    template: Option<String>,
) -> Result<Response, ApiError> {
    let image = inputs::image(api.fetcher.as_ref(), "inputs", "inputs", &image).await?;
    let input = ClassifyInput {
        images: vec![image],
        labels: labels.0,
        label_set: String::new(),
        templates: template.into_iter().collect(),
        top_k: 0,
    };
    let permit = api.service.admit(Admission::TryNow).await?;
    let mut results = api
        .classify
        .classify(input, None, permit)
        .await
        .map_err(|e| {
            // The one image is `inputs` (or 0.25's `image`).
            ApiError::from_service_named(e, &|f| match f {
                Field::List(List::Images) | Field::Item(List::Images, _) => Some("inputs"),
                Field::List(List::Labels) => Some("candidate_labels"),
                _ => None,
            })
        })?;
    let scores: Vec<Value> = results
        .pop()
        .unwrap_or_default()
        .into_iter()
        .map(|s| json!({"label": s.label, "score": s.probability}))
        .collect();
    Ok(Json(scores).into_response())
}

async fn features(api: &Api, inputs: Items, normalize: Option<bool>) -> Result<Response, ApiError> {
    if normalize == Some(false) {
        return Err(ApiError::invalid(
            Some("normalize"),
            "normalize false: this server returns L2-normalized embeddings only",
        ));
    }
    super::call::charge(inputs.0.len())?;
    let items: Vec<Item> = inputs::items(api.fetcher.as_ref(), "inputs", inputs.0).await?;
    let permit = api.service.admit(Admission::TryNow).await?;
    let embedded = api
        .service
        .embed_items(items, None, permit)
        .await
        .map_err(|e| {
            ApiError::from_service_named(e, &|f| match f {
                Field::List(_) => Some("inputs"),
                _ => None,
            })
        })?;
    let vectors: Vec<Vec<f32>> = embedded.embeddings.into_iter().map(|e| e.values).collect();
    Ok(Json(vectors).into_response())
}

/// The body handling up to the model, for the fuzzer.
pub(crate) fn fuzz_body(bytes: &[u8], max_items: usize) {
    if let Ok(request) = super::body::parse::<InferenceRequest>(bytes, max_items) {
        match task(request) {
            Ok(Task::ZeroShot { image, .. }) => {
                let _ = inputs::parse_image("inputs", "inputs", &image);
            }
            Ok(Task::Features { inputs, .. }) => {
                let _ = inputs::parse_items("inputs", inputs.0);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Task, ApiError> {
        task(super::super::body::parse(&serde_json::to_vec(&v).unwrap(), 8).unwrap())
    }

    #[test]
    fn every_client_version_is_told_apart() {
        for v in [
            json!({"inputs": "AAEC", "parameters": {"candidate_labels": ["cat", "dog"], "hypothesis_template": "a {}"}}),
            json!({"inputs": {"image": "AAEC", "candidateLabels": "cat,dog"}}),
            json!({"image": "AAEC", "parameters": {"candidate_labels": "cat,dog"}}),
        ] {
            match parse(v.clone()) {
                Ok(Task::ZeroShot { image, labels, .. }) => {
                    assert_eq!(
                        (image.as_str(), labels.0),
                        ("AAEC", vec!["cat".to_string(), "dog".into()]),
                        "{v}"
                    );
                }
                _ => panic!("{v} is zero-shot"),
            }
        }
        for v in [
            json!({"inputs": "a cat"}),
            json!({"inputs": ["a", "b"], "normalize": true, "truncate": true}),
            json!({"inputs": "a", "parameters": {}}),
        ] {
            assert!(matches!(parse(v.clone()), Ok(Task::Features { .. })), "{v}");
        }
        for v in [
            json!({"x": 1}),
            json!({"image": "AAEC"}),
            json!({"inputs": ["a", "b"], "parameters": {"candidate_labels": ["x"]}}),
        ] {
            assert!(parse(v.clone()).is_err(), "{v}");
        }
    }
}
