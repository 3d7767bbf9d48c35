//! The OpenAI-compatible HTTP API on `--http-addr`: `POST /v1/embeddings` (also `/embeddings`) and
//! `GET /v1/models`, in OpenAI's request, response and error shapes, so the `openai` SDKs work
//! unchanged, and Jina's embeddings API on the same route (its clients post there too). The same
//! service, batchers, limits and metrics as gRPC sit behind it.
//!
//! `input` items may be strings, `data:image/...;base64,` strings, `{"text"}`, `{"image"}`,
//! `{"url"}` or `{"bytes"}` (see [`super::inputs`]); Infinity's `"modality": "image"` makes every
//! string an image. Fetching http(s) URLs server-side is refused (an SSRF door).

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    api::Api,
    body::{self, Items},
    error::ApiError,
    inputs::{self, Input},
};
use crate::{
    batch::priority::{self, Priority},
    common::{Field, ServiceError},
    embed::{Admission, Embedded},
};

/// The embeddings and models routes.
pub fn routes(state: Api) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .with_state(state)
}

/// A field that is one string or a list of them (Jina's `embedding_type`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: Option<String>,
    /// A string, or a list of strings or `{text}` / `{image}` objects.
    #[schema(value_type = Vec<serde_json::Value>)]
    input: Items,
    /// OpenAI's name.
    #[serde(default)]
    encoding_format: Option<String>,
    /// Jina's name.
    #[serde(default)]
    embedding_type: Option<OneOrMany>,
    /// LlamaIndex's name for Jina's field.
    #[serde(default)]
    encoding_type: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
    /// Jina's: embeddings are always L2-normalized here; `false` is refused.
    #[serde(default)]
    normalized: Option<bool>,
    /// Accepted and ignored (OpenAI's `user`, Jina's `task`, `late_chunking`, `truncate`; other
    /// unknown fields are ignored too).
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    task: Option<String>,
    /// `text` (default) or `image` (every string is an image), as Infinity does it.
    #[serde(default)]
    modality: Option<String>,
    /// vLLM's: lower is served earlier (below 0 high, 0 normal, above 0 low), as far as the key
    /// allows (`priority=` on its line).
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    priority: Option<Value>,
}

#[derive(Debug, Serialize)]
struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: Value,
}

/// The served model (OpenAI's list shape).
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "`{object: list, data: [{id, object, created, owned_by}]}`", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape: `{error: {message, type, param, code}, detail}`), naming the offending field"),
    ))]
pub(super) async fn models(State(state): State<Api>, headers: HeaderMap) -> Response {
    let api = state.clone();
    state
        .call(("OpenAI", "models"), &headers, async move {
            let data: Vec<Value> = api
                .model_ids()?
                .into_iter()
                .take(1)
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "clip-serve"}))
                .collect();
            Ok(Json(json!({"object": "list", "data": data})).into_response())
        })
        .await
}

/// Embeddings (OpenAI and Jina shapes); also on `/embeddings`.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", request_body(content = EmbeddingsRequest, example = json!({"input": ["a photo of a cat", "a red car"]})),
    responses((status = 200, description = "`{object: list, data: [{object, index, embedding}], model, usage}`", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape: `{error: {message, type, param, code}, detail}`), naming the offending field"),
    ))]
pub(super) async fn embeddings(
    State(state): State<Api>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    state
        .call(("OpenAI", "embeddings"), &headers, async {
            let (request, _held) = state
                .read_json::<EmbeddingsRequest>(&headers, body, "embeddings request")
                .await?;
            let asked = vllm_priority(request.priority.as_ref())?;
            priority::requested(asked, embed(&state, request)).await
        })
        .await
}

/// vLLM's `priority` field: an integer, lower served earlier.
fn vllm_priority(value: Option<&Value>) -> Result<Option<Priority>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(|p| Some(Priority::from_vllm(p))).ok_or_else(|| {
            ApiError::from(ServiceError::invalid(
                Field::Param("priority"),
                format!("{v} is not an integer (lower is served earlier: below 0 high, 0 normal, above 0 low)"),
            ))
        }),
    }
}

/// Whether the reply carries base64 (little-endian float32) instead of float lists.
fn wants_base64(request: &EmbeddingsRequest) -> Result<bool, ApiError> {
    let asked: Vec<(&'static str, &str)> = [
        request
            .encoding_format
            .as_deref()
            .map(|f| ("encoding_format", f)),
        request
            .encoding_type
            .as_deref()
            .map(|f| ("encoding_type", f)),
    ]
    .into_iter()
    .flatten()
    .chain(match &request.embedding_type {
        None => Vec::new(),
        Some(OneOrMany::One(f)) => vec![("embedding_type", f.as_str())],
        Some(OneOrMany::Many(fs)) => fs.iter().map(|f| ("embedding_type", f.as_str())).collect(),
    })
    .collect();
    let mut base64 = None;
    for (field, format) in asked {
        let this = match format {
            "float" => false,
            "base64" => true,
            other => {
                return Err(ApiError::invalid(
                    Some(field),
                    format!("{field} {other:?}: use \"float\" or \"base64\""),
                ));
            }
        };
        if base64.is_some_and(|b| b != this) {
            return Err(ApiError::invalid(
                Some(field),
                "the request asks for both float and base64 embeddings; ask for one",
            ));
        }
        base64 = Some(this);
    }
    Ok(base64.unwrap_or(false))
}

/// The request's items: Infinity's `modality: image` makes every string an image.
fn items_of(input: Items, modality: Option<&str>) -> Result<Vec<(String, Input)>, ApiError> {
    match modality {
        None | Some("text") => inputs::parse_items("input", input.0),
        Some("image") => input
            .0
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let at = format!("input[{i}]");
                match v {
                    Value::String(s) => inputs::parse_image("input", &at, &s),
                    other => inputs::parse_item("input", &at, other),
                }
                .map(|input| (at, input))
            })
            .collect(),
        Some(other) => Err(ApiError::invalid(
            Some("modality"),
            format!("modality {other:?}: use \"text\" or \"image\""),
        )),
    }
}

async fn embed(api: &Api, request: EmbeddingsRequest) -> Result<Response, ApiError> {
    let model = api.check_model(request.model.as_deref())?;
    let base64 = wants_base64(&request)?;
    let dim = api.embed_dim()?;
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
    if request.normalized == Some(false) {
        return Err(ApiError::invalid(
            Some("normalized"),
            "normalized false: this server returns L2-normalized embeddings only",
        ));
    }
    let items = items_of(request.input, request.modality.as_deref())?;
    super::call::charge(items.len())?;
    let items = inputs::resolve(api.fetcher.as_ref(), "input", items).await?;
    let permit = api.service.admit(Admission::TryNow).await?;
    let embedded = api.service.embed_items(items, None, permit).await?;
    Ok(Json(reply(embedded, &model, base64)).into_response())
}

/// The OpenAI / Jina embeddings reply.
fn reply(embedded: Embedded, model: &str, base64: bool) -> Value {
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
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

/// The body handling of every JSON route up to the model, for the fuzzer (`fuzz/`): parse with
/// items counted while parsing, check the fields that need no model, decode the items. Errors are
/// fine; a panic or a hang is the bug.
#[doc(hidden)]
pub fn fuzz_embeddings_body(bytes: &[u8], max_items: usize) {
    if let Ok(request) = body::parse::<EmbeddingsRequest>(bytes, max_items) {
        let _ = wants_base64(&request);
        let _ = items_of(request.input, request.modality.as_deref());
    }
    super::classify::fuzz_body(bytes, max_items);
    super::rerank::fuzz_body(bytes, max_items);
    super::hf::fuzz_body(bytes, max_items);
    super::weaviate::fuzz_body(bytes, max_items);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::Item;

    fn request(v: Value) -> EmbeddingsRequest {
        body::parse(&serde_json::to_vec(&v).unwrap(), 64).unwrap()
    }

    #[test]
    fn every_encoding_field_is_read() {
        let b = |v: Value| wants_base64(&request(v));
        assert!(!b(json!({"input": "a"})).unwrap());
        assert!(b(json!({"input": "a", "encoding_format": "base64"})).unwrap());
        assert!(b(json!({"input": "a", "encoding_type": "base64"})).unwrap());
        assert!(b(json!({"input": "a", "embedding_type": ["base64"]})).unwrap());
        assert!(!b(json!({"input": "a", "embedding_type": "float"})).unwrap());
        let e = b(json!({"input": "a", "embedding_type": "ubinary"})).unwrap_err();
        assert!(
            e.message.contains("embedding_type \"ubinary\""),
            "{}",
            e.message
        );
        assert!(
            b(json!({"input": "a", "encoding_format": "float", "embedding_type": "base64"}))
                .is_err()
        );
    }

    #[test]
    fn infinity_modality_makes_strings_images() {
        let r =
            request(json!({"input": ["data:image/png;base64,AAEC", "AAEC"], "modality": "image"}));
        let resolved = |r: EmbeddingsRequest| {
            let items = items_of(r.input, r.modality.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(inputs::resolve(None, "input", items))
        };
        let items = resolved(r).unwrap();
        assert!(items.iter().all(|i| matches!(i, Item::Image(_))));
        let r = request(json!({"input": ["https://example.com/x.jpg"], "modality": "image"}));
        let e = resolved(r).unwrap_err();
        assert!(
            e.message
                .starts_with("input[0]: image URL fetching is not enabled"),
            "{}",
            e.message
        );
        let r = request(json!({"input": ["a", "data:image/png;base64,AAEC"]}));
        let items = resolved(r).unwrap();
        assert!(matches!(&items[0], Item::Text(t) if t == "a"));
        assert!(matches!(&items[1], Item::Image(_)));
    }
}
