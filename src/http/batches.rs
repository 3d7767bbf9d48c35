//! OpenAI's Batch API over HTTP (checked against the `openai` Python SDK's `resources/files.py`,
//! `resources/batches.py`, `types/file_object.py`, `types/batch*.py`): the wire shapes of
//! [`crate::jobs`].
//!
//! - `POST /v1/files` (multipart: `file`, a JSONL of requests, and `purpose=batch`),
//!   `GET /v1/files` (`purpose`, `after`, `limit`, `order`), `GET /v1/files/{file_id}`,
//!   `GET /v1/files/{file_id}/content`, `DELETE /v1/files/{file_id}`;
//! - `POST /v1/batches` (`input_file_id`, `endpoint` `/v1/embeddings` or `/v1/classify`,
//!   `completion_window` `24h`, `metadata`), `GET /v1/batches` (`after`, `limit`),
//!   `GET /v1/batches/{batch_id}`, `POST /v1/batches/{batch_id}/cancel`.
//!
//! A key sees only its own files and batches (another key's are 404). The lines run through
//! [`LineExecutor`]: the synchronous routes' own code (`openai::embed_body`,
//! `classify::classify_body`), so a line's `response.body` is what the route answers.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, FromRequest, Multipart, Path, RawQuery, Request, State},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{api::Api, error::ApiError};
use crate::jobs::{Answer, Batch, BoxFuture, Endpoint, Executor, FileMeta, JobsService, Page};

const SERVICE: &str = "Batches";
/// Multipart parts read from one upload (the SDK sends `file`, `purpose`, maybe `expires_after`).
const MAX_PARTS: usize = 8;
/// Room for the multipart framing around the file.
const MULTIPART_OVERHEAD: usize = 64 << 10;
/// Metadata bounds (OpenAI's): pairs, key and value characters.
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

#[derive(Clone)]
struct Batches {
    api: Api,
    jobs: JobsService,
}

/// The Batch API routes; also starts the jobs' runner with the routes' own code.
pub fn routes(api: Api, jobs: JobsService) -> Router {
    jobs.start(std::sync::Arc::new(LineExecutor { api: api.clone() }));
    Router::new()
        .route("/v1/files", post(create_file).get(list_files))
        .route("/v1/files/{file_id}", get(get_file).delete(delete_file))
        .route("/v1/files/{file_id}/content", get(file_content))
        .route("/v1/batches", post(create_batch).get(list_batches))
        .route("/v1/batches/{batch_id}", get(get_batch))
        .route("/v1/batches/{batch_id}/cancel", post(cancel_batch))
        // Uploads are bounded by --batch-max-file-bytes as they are read, not by axum's default.
        .layer(DefaultBodyLimit::disable())
        .with_state(Batches { api, jobs })
}

/// Runs a line through the synchronous route's code.
struct LineExecutor {
    api: Api,
}

impl Executor for LineExecutor {
    fn execute(&self, endpoint: Endpoint, body: Value) -> BoxFuture<Answer> {
        let api = self.api.clone();
        Box::pin(async move {
            let bytes = body.to_string().into_bytes();
            let result = match endpoint {
                Endpoint::Embeddings => super::openai::embed_body(&api, &bytes).await,
                Endpoint::Classify => super::classify::classify_body(&api, &bytes).await,
            };
            let response = result.unwrap_or_else(|e| e.into_shaped(super::error::Shape::OpenAi));
            let status_code = response.status().as_u16();
            let body = match axum::body::to_bytes(response.into_body(), usize::MAX).await {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
                Err(e) => {
                    json!({"error": {"message": format!("reading the answer failed: {e}"), "type": "server_error"}})
                }
            };
            Answer { status_code, body }
        })
    }
}

/// The calling key's name: files and batches belong to it (empty without keys).
fn owner() -> String {
    crate::telemetry::usage::current().map_or_else(String::new, |u| u.key().to_string())
}

fn file_json(f: &FileMeta) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": null,
        "status_details": null,
    })
}

fn batch_json(b: &Batch) -> Value {
    let errors = (!b.errors.is_empty()).then(|| {
        json!({"object": "list", "data": b.errors.iter().map(|e| json!({
            "code": e.code, "message": e.message, "param": e.param, "line": e.line,
        })).collect::<Vec<_>>()})
    });
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint.path(),
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status.as_str(),
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at,
        "in_progress_at": b.in_progress_at,
        "expires_at": b.expires_at,
        "finalizing_at": b.finalizing_at,
        "completed_at": b.completed_at,
        "failed_at": b.failed_at,
        "expired_at": b.expired_at,
        "cancelling_at": b.cancelling_at,
        "cancelled_at": b.cancelled_at,
        "request_counts": {
            "total": b.request_counts.total,
            "completed": b.request_counts.completed,
            "failed": b.request_counts.failed,
        },
        "metadata": b.metadata,
    })
}

/// OpenAI's list shape.
fn list<T>(page: Page<T>, render: fn(&T) -> Value, id: fn(&T) -> &str) -> Response {
    let first = page.items.first().map(id);
    let last = page.items.last().map(id);
    Json(json!({
        "object": "list",
        "data": page.items.iter().map(render).collect::<Vec<_>>(),
        "first_id": first,
        "last_id": last,
        "has_more": page.has_more,
    }))
    .into_response()
}

/// The list parameters of a query string: `after`, `limit` (1..=100, default 20), `order`
/// (`asc`/`desc`, default `desc`), `purpose`.
struct ListQuery {
    after: Option<String>,
    limit: usize,
    desc: bool,
    purpose: Option<String>,
}

fn list_query(query: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        after: None,
        limit: 20,
        desc: true,
        purpose: None,
    };
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "after" => q.after = Some(value.into_owned()),
            "limit" => {
                q.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            Some("limit"),
                            format!("limit {value:?}: a whole number from 1 to 100"),
                        )
                    })?;
            }
            "order" => {
                q.desc = match &*value {
                    "desc" => true,
                    "asc" => false,
                    other => {
                        return Err(ApiError::invalid(
                            Some("order"),
                            format!("order {other:?}: use \"asc\" or \"desc\""),
                        ));
                    }
                }
            }
            "purpose" => q.purpose = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(q)
}

fn path_id<T>(id: Result<Path<String>, T>, what: &'static str) -> Result<String, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|_| ApiError::invalid(Some(what), format!("{what}: not a valid id")))
}

type IdPath = Result<Path<String>, axum::extract::rejection::PathRejection>;

/// Uploads a JSONL file of batch requests (multipart: `file`, `purpose=batch`).
#[utoipa::path(post, path = "/v1/files", tag = "batches",
    request_body(content = UploadForm, content_type = "multipart/form-data",
        example = json!({"purpose": "batch", "file": "{\"custom_id\": \"a\", \"method\": \"POST\", \"url\": \"/v1/embeddings\", \"body\": {\"input\": \"a photo of a cat\"}}\n"})),
    responses((status = 200, description = "The file: `{id, object: file, bytes, created_at, filename, purpose, status}`", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape): 400 not JSONL or over --batch-max-file-bytes / --batch-max-file-lines, 413 body too large, 429 over the key's files or bytes"),
    ))]
async fn create_file(State(s): State<Batches>, request: Request) -> Response {
    let headers = request.headers().clone();
    s.api
        .call((SERVICE, "CreateFile"), &headers, async {
            let (parts, body) = request.into_parts();
            let mut rules = s.api.body.clone();
            rules.limit = usize::try_from(s.jobs.config().max_file_bytes)
                .unwrap_or(usize::MAX)
                .saturating_add(MULTIPART_OVERHEAD);
            let (bytes, _held) = super::body::read(&parts.headers, body, &rules).await?;
            let request = Request::from_parts(parts, Body::from(bytes));
            let bad = |m: String| ApiError::invalid(None, m);
            let mut multipart = Multipart::from_request(request, &())
                .await
                .map_err(|e| bad(format!("expected a multipart/form-data body: {e}")))?;
            let (mut file, mut purpose, mut count) = (None, None, 0);
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|e| bad(format!("the multipart body does not parse: {e}")))?
            {
                count += 1;
                if count > MAX_PARTS {
                    return Err(bad(format!("more than {MAX_PARTS} multipart parts")));
                }
                let name = field.name().unwrap_or_default().to_string();
                let filename = field.file_name().unwrap_or("input.jsonl").to_string();
                let data = field
                    .bytes()
                    .await
                    .map_err(|e| bad(format!("part {name:?} does not read: {e}")))?;
                match name.as_str() {
                    "file" => file = Some((filename, data)),
                    "purpose" => purpose = Some(String::from_utf8_lossy(&data).into_owned()),
                    _ => {}
                }
            }
            match purpose.as_deref() {
                Some("batch") => {}
                Some(other) => {
                    return Err(ApiError::invalid(
                        Some("purpose"),
                        format!("purpose {other:?}: this server takes files for the Batch API only (purpose \"batch\")"),
                    ));
                }
                None => {
                    return Err(ApiError::invalid(
                        Some("purpose"),
                        "purpose: required (\"batch\")",
                    ));
                }
            }
            let (filename, data) =
                file.ok_or_else(|| ApiError::invalid(Some("file"), "file: required (a JSONL file)"))?;
            let meta = s.jobs.create_file(&owner(), &filename, data).await?;
            Ok(Json(file_json(&meta)).into_response())
        })
        .await
}

/// The multipart fields of an upload (for the OpenAPI document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// The JSONL file: one `{custom_id, method: POST, url, body}` request per line.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// `batch`.
    purpose: String,
}

/// The calling key's files.
#[utoipa::path(get, path = "/v1/files", tag = "batches",
    params(("purpose" = Option<String>, Query, description = "Only files of this purpose (`batch`, `batch_output`)"),
        ("after" = Option<String>, Query, description = "A file id: the page after it"),
        ("limit" = Option<u32>, Query, description = "1 to 100 (default 20)"),
        ("order" = Option<String>, Query, description = "`desc` (default) or `asc` by creation")),
    responses((status = 200, description = "`{object: list, data, first_id, last_id, has_more}`", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape)"),
    ))]
async fn list_files(
    State(s): State<Batches>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    s.api
        .call((SERVICE, "ListFiles"), &headers, async {
            let q = list_query(query.as_deref())?;
            let page = s
                .jobs
                .list_files(
                    &owner(),
                    q.purpose.as_deref(),
                    q.after.as_deref(),
                    q.limit,
                    q.desc,
                )
                .await?;
            Ok(list(page, file_json, |f| &f.id))
        })
        .await
}

/// One of the calling key's files.
#[utoipa::path(get, path = "/v1/files/{file_id}", tag = "batches",
    params(("file_id" = String, Path, description = "The file", example = "file-00000000000000000000000000000000")),
    responses((status = 200, description = "The file", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape): 404 no such file of this key"),
    ))]
async fn get_file(State(s): State<Batches>, id: IdPath, headers: HeaderMap) -> Response {
    s.api
        .call((SERVICE, "GetFile"), &headers, async {
            let meta = s.jobs.get_file(&owner(), &path_id(id, "file_id")?).await?;
            Ok(Json(file_json(&meta)).into_response())
        })
        .await
}

/// A file's content (an uploaded JSONL, or a batch's output or error file).
#[utoipa::path(get, path = "/v1/files/{file_id}/content", tag = "batches",
    params(("file_id" = String, Path, description = "The file", example = "file-00000000000000000000000000000000")),
    responses((status = 200, description = "The JSONL content", content_type = "application/jsonl", body = String),
        (status = "4XX", description = "An error (OpenAI shape): 404 no such file of this key"),
    ))]
async fn file_content(State(s): State<Batches>, id: IdPath, headers: HeaderMap) -> Response {
    s.api
        .call((SERVICE, "GetFileContent"), &headers, async {
            let bytes = s
                .jobs
                .file_content(&owner(), &path_id(id, "file_id")?)
                .await?;
            Ok(([(header::CONTENT_TYPE, "application/jsonl")], bytes).into_response())
        })
        .await
}

/// Deletes one of the calling key's files.
#[utoipa::path(delete, path = "/v1/files/{file_id}", tag = "batches",
    params(("file_id" = String, Path, description = "The file", example = "file-00000000000000000000000000000000")),
    responses((status = 200, description = "`{id, object: file, deleted: true}`", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape): 404 no such file of this key, 409 the input of a running batch"),
    ))]
async fn delete_file(State(s): State<Batches>, id: IdPath, headers: HeaderMap) -> Response {
    s.api
        .call((SERVICE, "DeleteFile"), &headers, async {
            let id = path_id(id, "file_id")?;
            s.jobs.delete_file(&owner(), &id).await?;
            Ok(Json(json!({"id": id, "object": "file", "deleted": true})).into_response())
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct CreateBatchRequest {
    /// A file uploaded with purpose `batch`.
    input_file_id: String,
    /// `/v1/embeddings` or `/v1/classify`.
    endpoint: String,
    /// `24h`.
    completion_window: String,
    /// Up to 16 string pairs.
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    /// Accepted and ignored (output files are kept until deleted).
    #[serde(default)]
    #[allow(dead_code)]
    #[schema(value_type = Option<Object>)]
    output_expires_after: Option<Value>,
}

/// Starts a batch over an uploaded file.
#[utoipa::path(post, path = "/v1/batches", tag = "batches",
    request_body(content = CreateBatchRequest, example = json!({"input_file_id": "file-00000000000000000000000000000000", "endpoint": "/v1/embeddings", "completion_window": "24h"})),
    responses((status = 200, description = "The batch (`validating`)", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape): 400 a bad field, 404 no such input file, 429 too many unfinished batches"),
    ))]
async fn create_batch(State(s): State<Batches>, headers: HeaderMap, body: Body) -> Response {
    s.api
        .call((SERVICE, "CreateBatch"), &headers, async {
            let (request, _held) = s
                .api
                .read_json::<CreateBatchRequest>(&headers, body, "batch request")
                .await?;
            let endpoint = Endpoint::parse(&request.endpoint).ok_or_else(|| {
                ApiError::invalid(
                    Some("endpoint"),
                    format!(
                        "endpoint {:?}: this server runs batches of \"/v1/embeddings\" or \"/v1/classify\"",
                        request.endpoint
                    ),
                )
            })?;
            if request.completion_window != "24h" {
                return Err(ApiError::invalid(
                    Some("completion_window"),
                    format!("completion_window {:?}: only \"24h\" is supported", request.completion_window),
                ));
            }
            if let Some(metadata) = &request.metadata {
                check_metadata(metadata)?;
            }
            let batch = s
                .jobs
                .create_batch(&owner(), &request.input_file_id, endpoint, request.metadata)
                .await?;
            Ok(Json(batch_json(&batch)).into_response())
        })
        .await
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::invalid(Some("metadata"), m);
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(bad(format!("metadata: at most {MAX_METADATA_PAIRS} pairs")));
    }
    for (k, v) in metadata {
        if k.chars().count() > MAX_METADATA_KEY {
            return Err(bad(format!(
                "metadata: key {k:?} is over {MAX_METADATA_KEY} characters"
            )));
        }
        if v.chars().count() > MAX_METADATA_VALUE {
            return Err(bad(format!(
                "metadata[{k:?}]: over {MAX_METADATA_VALUE} characters"
            )));
        }
    }
    Ok(())
}

/// The calling key's batches, newest first.
#[utoipa::path(get, path = "/v1/batches", tag = "batches",
    params(("after" = Option<String>, Query, description = "A batch id: the page after it"),
        ("limit" = Option<u32>, Query, description = "1 to 100 (default 20)")),
    responses((status = 200, description = "`{object: list, data, first_id, last_id, has_more}`", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape)"),
    ))]
async fn list_batches(
    State(s): State<Batches>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    s.api
        .call((SERVICE, "ListBatches"), &headers, async {
            let q = list_query(query.as_deref())?;
            let page = s
                .jobs
                .list_batches(&owner(), q.after.as_deref(), q.limit)
                .await?;
            Ok(list(page, batch_json, |b| &b.id))
        })
        .await
}

/// One of the calling key's batches: its status and `request_counts`.
#[utoipa::path(get, path = "/v1/batches/{batch_id}", tag = "batches",
    params(("batch_id" = String, Path, description = "The batch", example = "batch_00000000000000000000000000000000")),
    responses((status = 200, description = "The batch", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape): 404 no such batch of this key"),
    ))]
async fn get_batch(State(s): State<Batches>, id: IdPath, headers: HeaderMap) -> Response {
    s.api
        .call((SERVICE, "GetBatch"), &headers, async {
            let batch = s
                .jobs
                .get_batch(&owner(), &path_id(id, "batch_id")?)
                .await?;
            Ok(Json(batch_json(&batch)).into_response())
        })
        .await
}

/// Cancels one of the calling key's batches (`cancelling`, then `cancelled` with what finished).
#[utoipa::path(post, path = "/v1/batches/{batch_id}/cancel", tag = "batches",
    params(("batch_id" = String, Path, description = "The batch", example = "batch_00000000000000000000000000000000")),
    responses((status = 200, description = "The batch", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape): 404 no such batch of this key, 409 already finished"),
    ))]
async fn cancel_batch(State(s): State<Batches>, id: IdPath, headers: HeaderMap) -> Response {
    s.api
        .call((SERVICE, "CancelBatch"), &headers, async {
            let batch = s
                .jobs
                .cancel_batch(&owner(), &path_id(id, "batch_id")?)
                .await?;
            Ok(Json(batch_json(&batch)).into_response())
        })
        .await
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;
    use crate::jobs::Status;

    #[test]
    fn list_queries_are_checked() {
        let q = list_query(Some("after=batch_1&limit=5&order=asc&purpose=batch")).unwrap();
        assert_eq!(
            (q.after.as_deref(), q.limit, q.desc, q.purpose.as_deref()),
            (Some("batch_1"), 5, false, Some("batch"))
        );
        for bad in ["limit=0", "limit=101", "limit=x", "order=up"] {
            assert_eq!(
                list_query(Some(bad)).err().unwrap().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn every_status_renders_with_openai_names() {
        let names: Vec<&str> = [
            Status::Validating,
            Status::Failed,
            Status::InProgress,
            Status::Finalizing,
            Status::Completed,
            Status::Expired,
            Status::Cancelling,
            Status::Cancelled,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(
            names,
            [
                "validating",
                "failed",
                "in_progress",
                "finalizing",
                "completed",
                "expired",
                "cancelling",
                "cancelled"
            ]
        );
    }
}
