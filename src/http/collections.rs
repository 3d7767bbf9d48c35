//! Collections over REST under `/v1/collections`, through the same RetrieveService calls as gRPC
//! `clip.v1.Retrieve` (so the same limits, errors and durability; field paths in the domain's
//! words: `items[3].vector`, `ids[0]`, `query.image`):
//!
//! - `POST /v1/collections` `{"name", "dimension"?, "model"?}`: 201 with the collection;
//! - `GET /v1/collections`: `{"collections": [...]}`; `GET /v1/collections/{name}`: one;
//! - `DELETE /v1/collections/{name}`: `{"name", "deleted": true}`;
//! - `POST /v1/collections/{name}/items` `{"items": [{"id", "text" | "image" | "vector",
//!   "metadata"?}], "model"?}`: upsert, durable when it returns; `{"upserted", "count"}`;
//! - `POST /v1/collections/{name}/items/get` `{"ids"}`: `{"items": [{"id", "vector",
//!   "metadata"}], "missing"}` (vectors exactly as stored);
//! - `POST /v1/collections/{name}/items/delete` `{"ids"}` (and `DELETE
//!   /v1/collections/{name}/items/{id}`): `{"deleted", "count"}`;
//! - `POST /v1/collections/{name}/search` `{"query": {"text" | "image" | "vector"}, "top_k"?,
//!   "filter"?, "model"?}`: `{"hits": [{"id", "score", "metadata"}]}`, best first.
//!
//! Images are base64 or `data:image/...;base64,` strings. NOT_FOUND is 404, ALREADY_EXISTS and
//! ABORTED (a write that lost a race with deleting or recreating the collection) are 409.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{api::Api, body::Items, error::ApiError, inputs};
use crate::{
    common::Field,
    embed::Admission,
    retrieve::{CollectionInfo, CollectionOptions, Content, ItemInput, SearchInput},
};

const SERVICE: &str = "Retrieve";
/// The flag that bounds items and ids per call.
const FLAG: &str = "--max-upsert-items";

pub fn routes(state: Api) -> Router {
    Router::new()
        .route("/v1/collections", post(create).get(list))
        .route("/v1/collections/{name}", get(get_one).delete(drop_one))
        .route("/v1/collections/{name}/items", post(upsert))
        .route("/v1/collections/{name}/items/get", post(get_items))
        .route("/v1/collections/{name}/items/delete", post(delete_items))
        .route("/v1/collections/{name}/items/{id}", delete(delete_item))
        .route("/v1/collections/{name}/search", post(search))
        .with_state(state)
}

/// Field paths keep the domain's (and gRPC's) names.
fn same_names(_: &Field) -> Option<&'static str> {
    None
}

fn service_error(e: crate::common::ServiceError) -> ApiError {
    ApiError::from_service_named(e, &same_names)
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::invalid(Some("name"), e.body_text()))
}

fn usize_of(v: Option<u64>) -> usize {
    v.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateCollectionRequest {
    #[serde(default)]
    pub name: String,
    /// The vector dimension; 0 or absent: the served model's.
    #[serde(default)]
    pub dimension: Option<u64>,
    /// The model whose embeddings the collection holds; absent: the served one.
    #[serde(default)]
    pub model: Option<String>,
    /// HNSW `m` (links per node, 2-100) of its graph: pgvector's index on the PostgreSQL store,
    /// the `--ann-graph` graph on the local store; absent or 0: the server's flag.
    #[serde(default)]
    #[schema(minimum = 2, maximum = 100)]
    pub hnsw_m: Option<u64>,
    /// HNSW `ef_construction` (4-1000, at least 2 x m); absent or 0: the server's flag.
    #[serde(default)]
    #[schema(minimum = 4, maximum = 1000)]
    pub hnsw_ef_construction: Option<u64>,
    /// The recall@10 the recall check keeps for its approximate searches (0-1); absent or 0:
    /// `--recall-target`.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub recall_target: Option<f64>,
}

impl CreateCollectionRequest {
    fn options(&self) -> Result<CollectionOptions, ApiError> {
        let small = |v: Option<u64>, field: &'static str| match v {
            None | Some(0) => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| ApiError::invalid(Some(field), format!("{n} is too large"))),
        };
        Ok(CollectionOptions {
            hnsw_m: small(self.hnsw_m, "hnsw_m")?,
            hnsw_ef_construction: small(self.hnsw_ef_construction, "hnsw_ef_construction")?,
            recall_target_permille: CollectionOptions::recall_permille(
                self.recall_target.unwrap_or(0.0),
            )
            .map_err(|(field, why)| ApiError::invalid(Some(field), why))?,
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CollectionReply {
    pub name: String,
    pub count: u64,
    pub dimension: u64,
    pub model: String,
    /// The index searches use: exact, binary (binary codes scanned, rescored exactly), graph
    /// (local HNSW), hnsw (PostgreSQL), mirror (PostgreSQL: codes scanned in the replica's
    /// memory, rescored by PostgreSQL).
    pub index: String,
    /// False while that index is being built (searches are exact meanwhile).
    pub ready: bool,
    /// Its own settings, as given at creation (absent: the server's flag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hnsw_m: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hnsw_ef_construction: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall_target: Option<f64>,
}

impl From<CollectionInfo> for CollectionReply {
    fn from(c: CollectionInfo) -> Self {
        CollectionReply {
            name: c.name,
            count: c.count as u64,
            dimension: c.dimension as u64,
            model: c.model,
            index: c.index,
            ready: c.ready,
            hnsw_m: c.options.hnsw_m,
            hnsw_ef_construction: c.options.hnsw_ef_construction,
            recall_target: c.options.recall_target(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionReply>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    pub name: String,
    pub deleted: bool,
}

/// What an item or a query holds: exactly one of these.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ContentBody {
    #[serde(default)]
    pub text: Option<String>,
    /// Base64 or a `data:image/...;base64,` URI.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ItemBody {
    #[serde(default)]
    pub id: String,
    #[serde(flatten)]
    pub content: ContentBody,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpsertRequest {
    /// Each an [`ItemBody`], checked one by one (errors name `items[i]`).
    #[schema(value_type = Vec<ItemBody>)]
    pub items: Items,
    /// The model text and image items are embedded with; absent: the served one.
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UpsertReply {
    pub upserted: u64,
    pub count: u64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct IdsRequest {
    /// Item ids (strings).
    #[schema(value_type = Vec<String>)]
    pub ids: Items,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StoredItemReply {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ItemsReply {
    pub items: Vec<StoredItemReply>,
    pub missing: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeleteReply {
    pub deleted: u64,
    pub count: u64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SearchRequest {
    #[serde(default)]
    pub query: Option<ContentBody>,
    /// 0 or absent: 10.
    #[serde(default)]
    pub top_k: Option<u64>,
    /// Items whose metadata has every one of these key-value pairs.
    #[serde(default, deserialize_with = "super::body::string_map")]
    pub filter: BTreeMap<String, String>,
    /// The model a query vector comes from, if the client says.
    #[serde(default)]
    pub model: Option<String>,
    /// The exact answer (every item, or every match of the filter, scanned), whatever the
    /// collection's index.
    #[serde(default)]
    pub exact: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HitReply {
    pub id: String,
    pub score: f32,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchReply {
    pub hits: Vec<HitReply>,
}

/// A content as parsed: ready, or an image whose URL is still to be fetched.
#[derive(Debug)]
enum Parsed {
    Ready(Content),
    Image(String, inputs::Input),
}

/// The one content of an item or query at `at` (`items[3]`, `query`); none is the domain's to
/// refuse, as it is for gRPC.
fn content(param: &'static str, at: &str, c: ContentBody) -> Result<Option<Parsed>, ApiError> {
    match (c.text, c.image, c.vector) {
        (None, None, None) => Ok(None),
        (Some(t), None, None) => Ok(Some(Parsed::Ready(Content::Text(t)))),
        (None, Some(s), None) => {
            let at = format!("{at}.image");
            let image = inputs::parse_image(param, &at, &s)?;
            Ok(Some(Parsed::Image(at, image)))
        }
        (None, None, Some(v)) => Ok(Some(Parsed::Ready(Content::Vector(v)))),
        _ => Err(inputs::invalid(
            param,
            at,
            "more than one of `text`, `image` and `vector`; give one",
        )),
    }
}

/// The contents with their image URLs fetched (all at once; refused without `--fetch-image-urls`).
async fn resolve(
    api: &Api,
    param: &'static str,
    parsed: Vec<Option<Parsed>>,
) -> Result<Vec<Option<Content>>, ApiError> {
    let mut images = Vec::new();
    let mut slots = Vec::with_capacity(parsed.len());
    for p in parsed {
        slots.push(match p {
            Some(Parsed::Image(at, input)) => {
                images.push((at, input));
                Err(())
            }
            Some(Parsed::Ready(c)) => Ok(Some(c)),
            None => Ok(None),
        });
    }
    let mut fetched = inputs::resolve(api.fetcher.as_ref(), param, images)
        .await?
        .into_iter();
    slots
        .into_iter()
        .map(|slot| match slot {
            Ok(c) => Ok(c),
            Err(()) => match fetched.next() {
                Some(crate::embed::Item::Image(bytes)) => Ok(Some(Content::Image(bytes))),
                _ => Err(ApiError::from(crate::common::ServiceError::Internal(
                    "an image went missing while fetching".into(),
                ))),
            },
        })
        .collect()
}

/// An item, its image (if any) not yet fetched.
fn item(i: usize, v: Value) -> Result<(ItemInput, Option<Parsed>), ApiError> {
    let at = format!("items[{i}]");
    let body: ItemBody = serde_json::from_value(v).map_err(|e| inputs::invalid("items", &at, e))?;
    Ok((
        ItemInput {
            id: body.id,
            content: None,
            metadata: body.metadata,
        },
        content("items", &at, body.content)?,
    ))
}

fn ids(values: Vec<Value>) -> Result<Vec<String>, ApiError> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s),
            other => Err(inputs::invalid(
                "ids",
                &format!("ids[{i}]"),
                format!("{}, expected a string", inputs::kind(&other)),
            )),
        })
        .collect()
}

fn json<T: Serialize>(value: T) -> Response {
    Json(value).into_response()
}

/// Creates a collection.
#[utoipa::path(post, path = "/v1/collections", tag = "collections",
    request_body(content = CreateCollectionRequest, example = json!({"name": "albums", "recall_target": 0.98})),
    responses((status = 201, description = "The new collection", body = CollectionReply),
        (status = "4XX", description = "An error (OpenAI shape), naming the field as gRPC does: 400 invalid, 401 key, 404 no such collection, 409 exists or lost a race with a delete, 413 too large, 429 over a limit"),
    ))]
pub(super) async fn create(State(api): State<Api>, headers: HeaderMap, body: Body) -> Response {
    api.call((SERVICE, "CreateCollection"), &headers, async {
        let (request, _held) = api
            .read_json::<CreateCollectionRequest>(&headers, body, "collection")
            .await?;
        let options = request.options()?;
        let _permit = api.service.admit(Admission::Control).await?;
        let info = api
            .retrieve
            .create_with(
                request.name,
                usize_of(request.dimension),
                request.model.unwrap_or_default(),
                options,
            )
            .await
            .map_err(service_error)?;
        Ok((StatusCode::CREATED, Json(CollectionReply::from(info))).into_response())
    })
    .await
}

/// Every collection.
#[utoipa::path(get, path = "/v1/collections", tag = "collections",
    responses((status = 200, description = "The collections", body = CollectionList),
        (status = "4XX", description = "An error (OpenAI shape), naming the field as gRPC does: 400 invalid, 401 key, 404 no such collection, 409 exists or lost a race with a delete, 413 too large, 429 over a limit"),
    ))]
pub(super) async fn list(State(api): State<Api>, headers: HeaderMap) -> Response {
    api.call((SERVICE, "ListCollections"), &headers, async {
        let _permit = api.service.admit(Admission::Control).await?;
        let collections = api.retrieve.list().await.map_err(service_error)?;
        Ok(json(CollectionList {
            collections: collections.into_iter().map(Into::into).collect(),
        }))
    })
    .await
}

/// One collection.
#[utoipa::path(get, path = "/v1/collections/{name}", tag = "collections", params(("name" = String, Path, description = "The collection", example = "photos")),
    responses((status = 200, description = "The collection", body = CollectionReply),
        (status = "4XX", description = "An error (OpenAI shape), naming the field as gRPC does: 400 invalid, 401 key, 404 no such collection, 409 exists or lost a race with a delete, 413 too large, 429 over a limit"),
    ))]
pub(super) async fn get_one(
    State(api): State<Api>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    api.call((SERVICE, "GetCollection"), &headers, async {
        let name = path(name)?;
        let _permit = api.service.admit(Admission::Control).await?;
        let info = api.retrieve.get(&name).await.map_err(service_error)?;
        Ok(json(CollectionReply::from(info)))
    })
    .await
}

/// Deletes a collection and its items.
#[utoipa::path(delete, path = "/v1/collections/{name}", tag = "collections", params(("name" = String, Path, description = "The collection", example = "scratch")),
    responses((status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "An error (OpenAI shape), naming the field as gRPC does: 400 invalid, 401 key, 404 no such collection, 409 exists or lost a race with a delete, 413 too large, 429 over a limit"),
    ))]
pub(super) async fn drop_one(
    State(api): State<Api>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    api.call((SERVICE, "DeleteCollection"), &headers, async {
        let name = path(name)?;
        let _permit = api.service.admit(Admission::Control).await?;
        api.retrieve
            .drop_collection(&name)
            .await
            .map_err(service_error)?;
        Ok(json(Deleted {
            name,
            deleted: true,
        }))
    })
    .await
}

/// Inserts or replaces items (durable when it returns).
#[utoipa::path(post, path = "/v1/collections/{name}/items", tag = "collections", params(("name" = String, Path, description = "The collection", example = "photos")),
    request_body(content = UpsertRequest, example = json!({"items": [
        {"id": "cat", "text": "a photo of a cat", "metadata": {"kind": "animal"}},
        {"id": "car", "text": "a red car", "metadata": {"kind": "vehicle"}}]})),
    responses((status = 200, description = "Upserted", body = UpsertReply),
        (status = "4XX", description = "An error (OpenAI shape), naming the field as gRPC does: 400 invalid, 401 key, 404 no such collection, 409 exists or lost a race with a delete, 413 too large, 429 over a limit"),
    ))]
pub(super) async fn upsert(
    State(api): State<Api>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    api.call((SERVICE, "Upsert"), &headers, async {
        let name = path(name)?;
        let max = api.retrieve.config().max_upsert_items;
        let (request, _held) = api
            .read_json_limited_by::<UpsertRequest>(&headers, body, "upsert request", max, FLAG)
            .await?;
        let items = request
            .items
            .0
            .into_iter()
            .enumerate()
            .map(|(i, v)| item(i, v))
            .collect::<Result<Vec<_>, _>>()?;
        super::call::charge(items.len()).await?;
        let (mut items, contents): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        for (item, content) in items
            .iter_mut()
            .zip(resolve(&api, "items", contents).await?)
        {
            item.content = content;
        }
        let permit = api.service.admit(Admission::TryNow).await?;
        let model = request.model.unwrap_or_default();
        let (upserted, count) = api
            .retrieve
            .upsert(&name, items, &model, None, permit)
            .await
            .map_err(service_error)?;
        Ok(json(UpsertReply {
            upserted: upserted as u64,
            count: count as u64,
        }))
    })
    .await
}

async fn read_ids(api: &Api, headers: &HeaderMap, body: Body) -> Result<Vec<String>, ApiError> {
    let max = api.retrieve.config().max_upsert_items;
    let (request, _held) = api
        .read_json_limited_by::<IdsRequest>(headers, body, "ids request", max, FLAG)
        .await?;
    ids(request.ids.0)
}

/// Items exactly as stored, and the ids that are absent.
#[utoipa::path(post, path = "/v1/collections/{name}/items/get", tag = "collections", params(("name" = String, Path, description = "The collection", example = "photos")),
    request_body(content = IdsRequest, example = json!({"ids": ["cat", "dog"]})),
    responses((status = 200, description = "The items", body = ItemsReply),
        (status = "4XX", description = "An error (OpenAI shape), naming the field as gRPC does: 400 invalid, 401 key, 404 no such collection, 409 exists or lost a race with a delete, 413 too large, 429 over a limit"),
    ))]
pub(super) async fn get_items(
    State(api): State<Api>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    api.call((SERVICE, "GetItems"), &headers, async {
        let name = path(name)?;
        let ids = read_ids(&api, &headers, body).await?;
        let _permit = api.service.admit(Admission::Control).await?;
        let (items, missing) = api
            .retrieve
            .get_items(&name, ids)
            .await
            .map_err(service_error)?;
        Ok(json(ItemsReply {
            items: items
                .into_iter()
                .map(|i| StoredItemReply {
                    id: i.id,
                    vector: i.vector,
                    metadata: i.metadata,
                })
                .collect(),
            missing,
        }))
    })
    .await
}

async fn delete_ids(api: &Api, name: &str, ids: Vec<String>) -> Result<Response, ApiError> {
    let _permit = api.service.admit(Admission::Control).await?;
    let (deleted, count) = api
        .retrieve
        .delete(name, ids)
        .await
        .map_err(service_error)?;
    Ok(json(DeleteReply {
        deleted: deleted as u64,
        count: count as u64,
    }))
}

/// Deletes items by id.
#[utoipa::path(post, path = "/v1/collections/{name}/items/delete", tag = "collections", params(("name" = String, Path, description = "The collection", example = "photos")),
    request_body(content = IdsRequest, example = json!({"ids": ["car"]})),
    responses((status = 200, description = "Deleted", body = DeleteReply),
        (status = "4XX", description = "An error (OpenAI shape), naming the field as gRPC does: 400 invalid, 401 key, 404 no such collection, 409 exists or lost a race with a delete, 413 too large, 429 over a limit"),
    ))]
pub(super) async fn delete_items(
    State(api): State<Api>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    api.call((SERVICE, "Delete"), &headers, async {
        let name = path(name)?;
        let ids = read_ids(&api, &headers, body).await?;
        delete_ids(&api, &name, ids).await
    })
    .await
}

/// Deletes one item.
#[utoipa::path(delete, path = "/v1/collections/{name}/items/{id}", tag = "collections",
    params(("name" = String, Path, description = "The collection", example = "photos"),
        ("id" = String, Path, description = "The item", example = "cat")),
    responses((status = 200, description = "Deleted", body = DeleteReply),
        (status = "4XX", description = "An error (OpenAI shape), naming the field as gRPC does: 400 invalid, 401 key, 404 no such collection, 409 exists or lost a race with a delete, 413 too large, 429 over a limit"),
    ))]
pub(super) async fn delete_item(
    State(api): State<Api>,
    names: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    api.call((SERVICE, "Delete"), &headers, async {
        let (name, id) = path(names)?;
        delete_ids(&api, &name, vec![id]).await
    })
    .await
}

/// The items nearest a text, image or vector, best first, among those matching `filter`.
#[utoipa::path(post, path = "/v1/collections/{name}/search", tag = "collections", params(("name" = String, Path, description = "The collection", example = "photos")),
    request_body(content = SearchRequest, example = json!({"query": {"text": "a cat"}, "top_k": 3, "filter": {"kind": "animal"}})),
    responses((status = 200, description = "The hits", body = SearchReply),
        (status = "4XX", description = "An error (OpenAI shape), naming the field as gRPC does: 400 invalid, 401 key, 404 no such collection, 409 exists or lost a race with a delete, 413 too large, 429 over a limit"),
    ))]
pub(super) async fn search(
    State(api): State<Api>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    api.call((SERVICE, "Search"), &headers, async {
        let name = path(name)?;
        let (request, _held) = api
            .read_json::<SearchRequest>(&headers, body, "search request")
            .await?;
        let query = match request.query {
            Some(q) => content("query", "query", q)?,
            None => None,
        };
        let query = resolve(&api, "query", vec![query]).await?.pop().flatten();
        let permit = api.service.admit(Admission::TryNow).await?;
        let hits = api
            .retrieve
            .search(
                &name,
                SearchInput {
                    query,
                    top_k: usize_of(request.top_k),
                    filter: request.filter,
                    model: request.model.unwrap_or_default(),
                    exact: request.exact,
                },
                None,
                permit,
            )
            .await
            .map_err(service_error)?;
        Ok(json(SearchReply {
            hits: hits
                .into_iter()
                .map(|h| HitReply {
                    id: h.id,
                    score: h.score,
                    metadata: h.metadata.as_ref().clone(),
                })
                .collect(),
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn items_take_one_content_and_name_themselves() {
        let i = item(
            0,
            json!({"id": "a", "vector": [1.0, 2.0], "metadata": {"k": "v"}}),
        )
        .unwrap();
        assert!(matches!(i.1, Some(Parsed::Ready(Content::Vector(ref v))) if v == &[1.0, 2.0]));
        assert_eq!(i.0.metadata["k"], "v");
        let e = item(3, json!({"id": "a", "text": "t", "vector": [1.0]})).unwrap_err();
        assert!(
            e.message.starts_with("items[3]: more than one"),
            "{}",
            e.message
        );
        let e = item(2, json!({"id": "a", "metadata": {"k": 1}})).unwrap_err();
        assert!(e.message.starts_with("items[2]: "), "{}", e.message);
        let e = item(1, json!({"id": "a", "image": "!!"})).unwrap_err();
        assert!(e.message.starts_with("items[1].image: "), "{}", e.message);
        let e = ids(vec![json!("a"), json!(1)]).unwrap_err();
        assert!(e.message.starts_with("ids[1]: a number"), "{}", e.message);
    }
}
