//! A drop-in for Weaviate's `multi2vec-clip` inference container (set `CLIP_INFERENCE_API` to
//! this server's HTTP address):
//! - `POST /vectorize` `{"texts": [...], "images": ["<raw base64>", ...]}` (a missing or null list
//!   is empty) -> `{"textVectors": [[...]], "imageVectors": [[...]]}`, L2-normalized, one per
//!   input, through the same batchers as gRPC;
//! - `GET /meta`: the served model's configuration;
//! - `GET /.well-known/ready` (204 once the model is loaded, 503 before) and
//!   `GET /.well-known/live` (204), open to all like `/readyz`.
//!
//! Errors are `{"error": "<message>"}` with a status over 399. `/vectorize` and `/meta` need the
//! API key when one is configured, and Weaviate sends none: run this drop-in without `--api-key`
//! (on a private network) or put a proxy that adds the header in between.

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    api::Api,
    body::Items,
    error::{ApiError, Shape},
    inputs::{self, Input},
};
use crate::{
    common::{Field, List},
    embed::{Admission, Item},
};

pub fn routes(state: Api) -> Router {
    Router::new()
        .route("/vectorize", post(vectorize))
        .route("/meta", get(meta))
        .route("/.well-known/ready", get(ready))
        .route("/.well-known/live", get(live))
        .with_state(state)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct VectorizeRequest {
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    texts: Option<Items>,
    /// Base64 images.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    images: Option<Items>,
}

/// The process is up (Weaviate's probe).
#[utoipa::path(get, path = "/.well-known/live", tag = "weaviate", security(()),
    responses((status = 204, description = "live")))]
pub(super) async fn live() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The model is loaded (Weaviate's probe).
#[utoipa::path(get, path = "/.well-known/ready", tag = "weaviate", security(()),
    responses((status = 204, description = "ready"), (status = 503, description = "not ready yet")))]
pub(super) async fn ready(State(state): State<Api>) -> StatusCode {
    if state.service.is_ready() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The served model, for Weaviate's module.
#[utoipa::path(get, path = "/meta", tag = "weaviate",
    responses((status = 200, description = "The model's metadata", body = serde_json::Value),
        (status = "4XX", description = "An error (`{error, detail}` strings)"),
    ))]
pub(super) async fn meta(State(state): State<Api>, headers: HeaderMap) -> Response {
    let api = state.clone();
    state
        .call_shaped(("Weaviate", "meta"), &headers, Shape::Plain, async move {
            let info = api.service.info()?;
            Ok(Json(json!({
                "model": {
                    "id": api.model_ids()?.first(),
                    "model_name": info.model_name,
                    "pretrained": info.pretrained,
                    "display_name": info.display_name,
                    "embedding_dim": info.embedding_dim,
                    "image_size": info.image_size,
                    "context_length": info.context_length,
                    "normalized": true,
                },
                "server": "clip-serve",
                "version": info.server_version,
            }))
            .into_response())
        })
        .await
}

/// Weaviate multi2vec-clip: texts and images to vectors.
#[utoipa::path(post, path = "/vectorize", tag = "weaviate", request_body = VectorizeRequest,
    responses((status = 200, description = "`{textVectors, imageVectors}`", body = serde_json::Value),
        (status = "4XX", description = "An error (`{error, detail}` strings)"),
    ))]
pub(super) async fn vectorize(
    State(state): State<Api>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    state
        .call_shaped(("Weaviate", "vectorize"), &headers, Shape::Plain, async {
            let (request, _held) = state
                .read_json::<VectorizeRequest>(&headers, body, "vectorize request")
                .await?;
            run(&state, request).await
        })
        .await
}

/// The texts, then the images, as one item list; how many texts lead it.
fn items(request: VectorizeRequest) -> Result<(Vec<(String, Input)>, usize), ApiError> {
    let texts = request.texts.map(|t| t.0).unwrap_or_default();
    let images = request.images.map(|i| i.0).unwrap_or_default();
    let n_texts = texts.len();
    let mut items = Vec::with_capacity(n_texts + images.len());
    for (i, v) in texts.into_iter().enumerate() {
        match v {
            Value::String(s) => items.push((format!("texts[{i}]"), Input::Item(Item::Text(s)))),
            other => {
                return Err(inputs::invalid(
                    "texts",
                    &format!("texts[{i}]"),
                    format!("expected a string, got {}", inputs::kind(&other)),
                ));
            }
        }
    }
    for (i, v) in images.into_iter().enumerate() {
        let at = format!("images[{i}]");
        match v {
            Value::String(s) => {
                let input = inputs::parse_image("images", &at, &s)?;
                items.push((at, input));
            }
            other => {
                return Err(inputs::invalid(
                    "images",
                    &at,
                    format!("expected a base64 string, got {}", inputs::kind(&other)),
                ));
            }
        }
    }
    Ok((items, n_texts))
}

async fn run(api: &Api, request: VectorizeRequest) -> Result<Response, ApiError> {
    let (items, n_texts) = items(request)?;
    super::call::charge(items.len()).await?;
    // Errors about images name them `images[i]` already.
    let items = inputs::resolve(api.fetcher.as_ref(), "images", items).await?;
    if items.is_empty() {
        return Ok(Json(json!({"textVectors": [], "imageVectors": []})).into_response());
    }
    let permit = api.service.admit(Admission::TryNow).await?;
    let embedded = api
        .service
        .embed_items(items, None, permit)
        .await
        .map_err(|e| {
            // Images sit behind the texts in the one list; their own index is Weaviate's.
            let e = e.relocate(|f| match f {
                Field::Item(List::Images, i) => Field::Item(List::Images, i - n_texts.min(i)),
                other => other,
            });
            // The domain's names are Weaviate's: `texts[i]`, `images[i]`.
            ApiError::from_service_named(e, &|_| None)
        })?;
    let mut vectors: Vec<Vec<f32>> = embedded.embeddings.into_iter().map(|e| e.values).collect();
    let images = vectors.split_off(n_texts.min(vectors.len()));
    Ok(Json(json!({"textVectors": vectors, "imageVectors": images})).into_response())
}

/// The body handling up to the model, for the fuzzer.
pub(crate) fn fuzz_body(bytes: &[u8], max_items: usize) {
    if let Ok(request) = super::body::parse::<VectorizeRequest>(bytes, max_items) {
        let _ = items(request);
    }
}
