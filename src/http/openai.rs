//! The OpenAI-compatible HTTP API on `--http-addr`: `POST /v1/embeddings` and `GET /v1/models`, in
//! OpenAI's request, response and error shapes, so the `openai` SDKs work unchanged. The same
//! service, batchers, limits and metrics as gRPC sit behind it.
//!
//! Images go through the same route the way Infinity does it: `"modality": "image"` with inputs as
//! `data:image/...;base64,...` URIs. Fetching http(s) URLs server-side is refused (an SSRF door).

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    body::{self, Items},
    call,
    error::ApiError,
};
use crate::{
    common::ServiceError,
    embed::{Admission, EmbedService},
    security::ApiKeys,
};

#[derive(Clone)]
pub struct OpenAi {
    pub service: EmbedService,
    pub keys: ApiKeys,
    /// Bodies are limited to `--max-message-bytes` (413 beyond), read after the key check.
    pub max_body_bytes: usize,
}

/// The `/v1` routes.
pub fn routes(state: OpenAi) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: Option<String>,
    input: Items,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
    /// Accepted and ignored, as the issue asks.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
    /// `text` (default) or `image` (inputs are data: URIs), as Infinity does it.
    #[serde(default)]
    modality: Option<String>,
}

#[derive(Debug, Serialize)]
struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: Value,
}

/// The id `/v1/models` lists and `model` is checked against: `model_name` or
/// `model_name:pretrained`.
fn model_ids(service: &EmbedService) -> Result<Vec<String>, ServiceError> {
    let config = &service.loaded_model()?.config;
    let id = config.model_id();
    Ok(if id == config.model_name {
        vec![id]
    } else {
        vec![id, config.model_name.clone()]
    })
}

/// An OpenAI call: key, span, metrics and request id as every HTTP call.
async fn call<F>(state: &OpenAi, method: &'static str, headers: &HeaderMap, handler: F) -> Response
where
    F: std::future::Future<Output = Result<Response, ApiError>>,
{
    let metrics = state.service.metrics();
    call::call(&state.keys, metrics, ("OpenAI", method), headers, handler).await
}

async fn models(State(state): State<OpenAi>, headers: HeaderMap) -> Response {
    let service = state.service.clone();
    call(&state, "models", &headers, async move {
        let data: Vec<Value> = model_ids(&service)?
            .into_iter()
            .take(1)
            .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "clip-serve"}))
            .collect();
        Ok(Json(json!({"object": "list", "data": data})).into_response())
    })
    .await
}

async fn embeddings(State(state): State<OpenAi>, headers: HeaderMap, body: Body) -> Response {
    let service = state.service.clone();
    let limit = state.max_body_bytes;
    call(&state, "embeddings", &headers, async {
        let (body, _held) = body::read(&headers, body, limit, service.gate().bytes()).await?;
        let max_items = service.limits().max_items_per_request;
        let request: EmbeddingsRequest = body::parse(&body, max_items).map_err(|e| {
            ApiError::invalid(
                None,
                format!("the body is not a valid embeddings request: {e}"),
            )
        })?;
        embed(&service, request).await
    })
    .await
}

async fn embed(service: &EmbedService, request: EmbeddingsRequest) -> Result<Response, ApiError> {
    let ids = model_ids(service)?;
    let model = ids[0].clone();
    if let Some(asked) = &request.model
        && !ids.contains(asked)
    {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "model_not_found",
            param: Some("model"),
            message: format!(
                "the model `{asked}` is not served here; GET /v1/models lists `{model}`"
            ),
            grpc_code: "NOT_FOUND",
        });
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("encoding_format"),
                format!("encoding_format {other:?}: use \"float\" or \"base64\""),
            ));
        }
    };
    let dim = service.loaded_model()?.config.embed_dim;
    if let Some(d) = request.dimensions
        && d != dim as u64
    {
        return Err(ApiError::invalid(
            Some("dimensions"),
            format!(
                "dimensions {d}: this model's embeddings have {dim}; shortening is not supported"
            ),
        ));
    }
    let inputs = inputs(request.input)?;
    let image = match request.modality.as_deref() {
        None | Some("text") => false,
        Some("image") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("modality"),
                format!("modality {other:?}: use \"text\" or \"image\""),
            ));
        }
    };
    let permit = service.admit(Admission::TryNow).await?;
    let embedded = if image {
        let images = inputs
            .iter()
            .enumerate()
            .map(|(i, s)| data_uri(i, s).map(bytes::Bytes::from))
            .collect::<Result<Vec<_>, _>>()?;
        service.embed_images(images, None, permit).await?
    } else {
        service.embed_texts(inputs, None, permit).await?
    };
    let tokens: u64 = embedded
        .embeddings
        .iter()
        .map(|e| u64::from(e.token_count))
        .sum();
    let data: Vec<EmbeddingData> = embedded
        .embeddings
        .into_iter()
        .enumerate()
        .map(|(index, e)| EmbeddingData {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = e.values.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e.values)
            },
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

/// The body handling of `POST /v1/embeddings` up to the model, for the fuzzer (`fuzz/`): parse with
/// items counted while parsing, check the fields that need no model, decode data: URIs. Errors are
/// fine; a panic or a hang is the bug.
#[doc(hidden)]
pub fn fuzz_embeddings_body(bytes: &[u8], max_items: usize) {
    let Ok(request) = body::parse::<EmbeddingsRequest>(bytes, max_items) else {
        return;
    };
    let image = request.modality.as_deref() == Some("image");
    if let Ok(items) = inputs(request.input)
        && image
    {
        for (i, item) in items.iter().enumerate() {
            let _ = data_uri(i, item);
        }
    }
}

/// `input`: a string or an array of strings. Token-id arrays (which OpenAI also accepts) are
/// refused: this server tokenizes itself, exactly as open_clip does.
fn inputs(input: Items) -> Result<Vec<String>, ApiError> {
    input
        .0
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s),
            Value::Number(_) | Value::Array(_) => Err(ApiError::invalid(
                Some("input"),
                format!("input[{i}]: token ids are not accepted; send the text itself"),
            )),
            other => Err(ApiError::invalid(
                Some("input"),
                format!("input[{i}]: expected a string, got {}", kind(&other)),
            )),
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The bytes of a `data:image/...;base64,...` URI.
fn data_uri(i: usize, s: &str) -> Result<Vec<u8>, ApiError> {
    let invalid = |m: String| ApiError::invalid(Some("input"), format!("input[{i}]: {m}"));
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(invalid(
            "fetching image URLs is disabled on this server (it would let clients make it request \
             arbitrary addresses); send the image as a data:image/...;base64,... URI"
                .into(),
        ));
    }
    let rest = s
        .strip_prefix("data:")
        .ok_or_else(|| invalid("expected a data:image/...;base64,... URI".into()))?;
    let (meta, payload) = rest
        .split_once(',')
        .ok_or_else(|| invalid("a data URI needs a comma before its payload".into()))?;
    if !meta.ends_with(";base64") {
        return Err(invalid(
            "only base64 data URIs are accepted (`;base64,`)".into(),
        ));
    }
    if !meta.starts_with("image/") {
        return Err(invalid(format!(
            "media type {:?} is not an image",
            meta.trim_end_matches(";base64")
        )));
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| invalid(format!("the base64 payload does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_take_strings_and_refuse_token_ids() {
        let items =
            |v: Value| -> Items { body::parse(&serde_json::to_vec(&v).unwrap(), 64).unwrap() };
        assert_eq!(inputs(items(json!("a"))).unwrap(), ["a"]);
        assert_eq!(inputs(items(json!(["a", "b"]))).unwrap(), ["a", "b"]);
        let e = inputs(items(json!(["a", [1, 2]]))).unwrap_err();
        assert!(e.message.contains("input[1]: token ids"), "{}", e.message);
        let e = inputs(items(json!(["a", {"x": 1}]))).unwrap_err();
        assert!(e.message.contains("got an object"), "{}", e.message);
    }

    #[test]
    fn data_uris_decode_and_urls_are_refused() {
        assert_eq!(
            data_uri(0, "data:image/png;base64,AAEC").unwrap(),
            [0, 1, 2]
        );
        let e = data_uri(3, "https://example.com/cat.jpg").unwrap_err();
        assert!(
            e.message
                .starts_with("input[3]: fetching image URLs is disabled"),
            "{}",
            e.message
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        for bad in [
            "cat.jpg",
            "data:text/plain;base64,AAEC",
            "data:image/png,raw",
            "data:image/png;base64,@@",
        ] {
            assert!(data_uri(0, bad).is_err(), "{bad}");
        }
    }
}
