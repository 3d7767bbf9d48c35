//! Rerank, one handler on `/v1/rerank` (Cohere `Client`, Jina, LiteLLM), `/v2/rerank` (Cohere
//! `ClientV2`, langchain-cohere) and `/rerank` (Infinity), through the same RetrieveService `rank`
//! as gRPC `Retrieve/Rank`.
//!
//! Request: `{"model"?, "query", "documents", "top_n"?, "return_documents"?, "rank_fields"?}`;
//! the query and each document may be a string (a `data:image/...;base64,` string is an image),
//! `{"text"}`, `{"image"}` (CLIP ranks images by a text and texts by an image), or a Cohere v1
//! object of string fields (`rank_fields` picks the fields joined into its text; default `text`,
//! else every string field). `top_n: null` is absent; other Cohere/Jina fields
//! (`max_chunks_per_doc`, `max_tokens_per_doc`, `priority`) are accepted and ignored.
//!
//! Reply: `{"id", "object": "rerank", "model", "results": [{"index", "relevance_score",
//! "document"?}], "usage", "meta": {"billed_units": {"search_units": 1}}}`, best first;
//! `relevance_score` is the cosine of the two CLIP embeddings (-1..1, not a calibrated
//! probability); `document` (only with `return_documents: true`) is `{"text": s}` for a string,
//! `{"image": s}` for a data-URI string, and the object itself for an object.

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::post,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    api::Api,
    body::{Items, Strings},
    error::ApiError,
    inputs::{self, Input},
};
use crate::{
    common::{Field, List},
    embed::{Admission, Item},
    retrieve::Content,
};

pub fn routes(state: Api) -> Router {
    Router::new()
        .route("/v1/rerank", post(rerank))
        .route("/v2/rerank", post(rerank))
        .route("/rerank", post(rerank))
        .with_state(state)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct RerankRequest {
    #[serde(default)]
    model: Option<String>,
    /// A string, `{text}` or `{image}`.
    #[serde(deserialize_with = "super::body::value")]
    query: Value,
    /// Strings, `{text}` / `{image}` objects, or objects of string fields.
    #[schema(value_type = Vec<serde_json::Value>)]
    documents: Items,
    #[serde(default)]
    top_n: Option<u64>,
    #[serde(default)]
    return_documents: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    rank_fields: Option<Strings>,
}

/// Rerank (Cohere, Jina, Infinity); also on `/v2/rerank` and `/rerank`.
#[utoipa::path(post, path = "/v1/rerank", tag = "rerank", request_body(content = RerankRequest, example = json!({"query": "a cat", "documents": ["a photo of a cat", "a red car"], "top_n": 1})),
    responses((status = 200, description = "`{id, object, model, results: [{index, relevance_score, document?}], usage, meta}`", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape: `{error: {message, type, param, code}, detail}`), naming the offending field"),
    ))]
pub(super) async fn rerank(State(state): State<Api>, headers: HeaderMap, body: Body) -> Response {
    state
        .call(("Rerank", "rerank"), &headers, async {
            let (request, _held) = state
                .read_json::<RerankRequest>(&headers, body, "rerank request")
                .await?;
            run(&state, request).await
        })
        .await
}

/// The domain's names for a rank's fields, in this route's words.
fn names(field: &Field) -> Option<&'static str> {
    match field {
        Field::List(List::Candidates | List::Texts | List::Images) => Some("documents"),
        _ => None,
    }
}

fn content(item: Item) -> Content {
    match item {
        Item::Text(t) => Content::Text(t),
        Item::Image(b) => Content::Image(b),
    }
}

/// One document: an item, or a Cohere object whose `rank_fields` make its text.
fn document(at: &str, v: Value, rank_fields: Option<&[String]>) -> Result<Input, ApiError> {
    let Value::Object(map) = v else {
        return inputs::parse_item("documents", at, v);
    };
    let is_item = ["image", "url", "bytes"]
        .iter()
        .any(|k| map.contains_key(*k))
        || (rank_fields.is_none() && map.contains_key("text"));
    if is_item {
        return inputs::parse_item("documents", at, Value::Object(map));
    }
    let text_of = |map: &Map<String, Value>, keys: &mut dyn Iterator<Item = &str>| {
        keys.filter_map(|k| map.get(k).and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let text = match rank_fields {
        Some(fields) => {
            if let Some(missing) = fields.iter().find(|f| !map.contains_key(f.as_str())) {
                return Err(inputs::invalid(
                    "documents",
                    at,
                    format!("has no field {missing:?} of rank_fields"),
                ));
            }
            text_of(&map, &mut fields.iter().map(String::as_str))
        }
        None => text_of(&map, &mut map.keys().map(String::as_str)),
    };
    if text.is_empty() {
        return Err(inputs::invalid(
            "documents",
            at,
            "an object with no text to rank (expected `text`, `image`, or string fields)",
        ));
    }
    Ok(Input::Item(Item::Text(text)))
}

/// What `return_documents` gives back for a document.
fn returned(original: &Value) -> Value {
    match original {
        Value::String(s) if s.get(..5).is_some_and(|h| h.eq_ignore_ascii_case("data:")) => {
            json!({"image": s})
        }
        Value::String(s) => json!({"text": s}),
        other => other.clone(),
    }
}

async fn run(api: &Api, request: RerankRequest) -> Result<Response, ApiError> {
    let model = api.check_model(request.model.as_deref())?;
    let query = inputs::item(api.fetcher.as_ref(), "query", "query", request.query).await?;
    let rank_fields = request.rank_fields.map(|f| f.0);
    let keep = request.return_documents.unwrap_or(false);
    let originals: Vec<Value> = if keep {
        request.documents.0.clone()
    } else {
        Vec::new()
    };
    let candidates = request
        .documents
        .0
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("documents[{i}]");
            document(&at, v, rank_fields.as_deref()).map(|input| (at, input))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The query and each candidate.
    super::call::charge(candidates.len() + 1).await?;
    let candidates = inputs::resolve(api.fetcher.as_ref(), "documents", candidates)
        .await?
        .into_iter()
        .map(|item| Some(content(item)))
        .collect();
    let top_n = request
        .top_n
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let permit = api.service.admit(Admission::TryNow).await?;
    let ranked = api
        .retrieve
        .rank(Some(content(query)), candidates, top_n, None, permit)
        .await
        .map_err(|e| ApiError::from_service_named(e, &names))?;
    let results: Vec<Value> = ranked
        .into_iter()
        .map(|(index, score)| {
            let mut r = json!({"index": index, "relevance_score": score});
            if let Some(original) = originals.get(index) {
                r["document"] = returned(original);
            }
            r
        })
        .collect();
    Ok(Json(json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "object": "rerank",
        "model": model,
        "results": results,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    }))
    .into_response())
}

/// The body handling up to the model, for the fuzzer.
pub(crate) fn fuzz_body(bytes: &[u8], max_items: usize) {
    if let Ok(request) = super::body::parse::<RerankRequest>(bytes, max_items) {
        let _ = inputs::parse_item("query", "query", request.query);
        let fields = request.rank_fields.map(|f| f.0);
        for (i, v) in request.documents.0.into_iter().enumerate() {
            let _ = document(&format!("documents[{i}]"), v, fields.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_take_every_client_shape() {
        let text = |v: Value, fields: Option<&[String]>| match document("documents[0]", v, fields) {
            Ok(Input::Item(Item::Text(t))) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(text(json!("a"), None), "a");
        assert_eq!(text(json!({"text": "a"}), None), "a");
        let fields = ["title".to_string(), "body".into()];
        assert_eq!(
            text(json!({"title": "T", "body": "B", "x": "X"}), Some(&fields)),
            "T\nB"
        );
        assert!(matches!(
            document("documents[0]", json!({"image": "AAEC"}), None),
            Ok(Input::Item(Item::Image(_)))
        ));
        let e = document("documents[2]", json!({"title": "T"}), Some(&fields)).unwrap_err();
        assert!(
            e.message.starts_with("documents[2]: has no field \"body\""),
            "{}",
            e.message
        );
        let e = document("documents[1]", json!({"n": 1}), None).unwrap_err();
        assert!(
            e.message
                .starts_with("documents[1]: an object with no text"),
            "{}",
            e.message
        );
        assert_eq!(returned(&json!("a")), json!({"text": "a"}));
        assert_eq!(returned(&json!({"title": "T"})), json!({"title": "T"}));
    }
}
