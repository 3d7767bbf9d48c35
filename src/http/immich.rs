//! A drop-in for Immich's machine-learning service, for CLIP smart search (point Immich's
//! machine-learning URL at this server's HTTP address):
//! - `POST /predict`, multipart or (text only, as FastAPI's `Form` fields also take)
//!   `application/x-www-form-urlencoded`: `entries` (a JSON string: `{"clip": {"visual": {"modelName"}}}`
//!   with an `image` file, or `{"clip": {"textual": {"modelName", "options"?}}}` with a `text`
//!   field) -> `{"clip": "[0.01,...]"}`, the vector as a JSON array *in a string*, as Immich's
//!   own service replies; visual replies add `imageHeight` and `imageWidth`;
//! - `GET /ping` -> `pong` (open to all, like `/readyz`).
//!
//! `modelName` is checked as `model` is elsewhere (an `org/` prefix dropped, `:` read as `_`),
//! and Immich's ViT-B-32 names are accepted when a ViT-B-32 is served. Other tasks (facial
//! recognition, OCR) get a 501. Errors are `{"error", "detail"}` (Immich reads only the status).
//! `/predict` needs the API key when one is configured, and Immich sends none.

use axum::{
    Json, Router,
    body::Body,
    extract::{FromRequest, Multipart, State},
    http::{HeaderMap, Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::json;
use std::collections::BTreeMap;

use super::{
    api::{Api, IMMICH_VIT_B_32},
    error::{ApiError, Shape},
};
use crate::embed::{Admission, Item};

/// Largest `entries` field, and most parts in one request.
const MAX_ENTRIES_BYTES: usize = 64 * 1024;
const MAX_PARTS: usize = 8;

pub fn routes(state: Api) -> Router {
    Router::new()
        .route("/predict", post(predict))
        .route("/ping", get(ping))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct ModelEntry {
    #[serde(rename = "modelName")]
    model_name: String,
    #[serde(default)]
    #[allow(dead_code)]
    options: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct ClipEntry {
    #[serde(default)]
    visual: Option<ModelEntry>,
    #[serde(default)]
    textual: Option<ModelEntry>,
}

#[derive(Debug, Deserialize)]
struct Entries {
    #[serde(default)]
    clip: Option<ClipEntry>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// The form `/predict` takes (documentation only: [`parts`] reads it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct PredictForm {
    /// JSON: `{"clip": {"visual" | "textual": {"modelName": ...}}}`.
    entries: String,
    /// The image file (with `visual`).
    #[schema(value_type = Option<String>, format = Binary)]
    image: Option<Vec<u8>>,
    /// The text (with `textual`).
    text: Option<String>,
}

/// The urlencoded form `/predict` takes (text only; documentation only: [`form_fields`] reads
/// it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct PredictText {
    /// JSON: `{"clip": {"textual": {"modelName": ...}}}`.
    entries: String,
    /// The text.
    text: Option<String>,
}

/// Immich's probe.
#[utoipa::path(get, path = "/ping", tag = "immich", security(()),
    responses((status = 200, description = "`pong`", body = String, content_type = "text/plain")))]
pub(super) async fn ping() -> &'static str {
    "pong"
}

/// The parts of a `/predict` request.
#[derive(Default)]
struct Parts {
    entries: Option<String>,
    image: Option<Vec<u8>>,
    text: Option<String>,
}

fn status(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        grpc_code: if status == StatusCode::NOT_IMPLEMENTED {
            "UNIMPLEMENTED"
        } else {
            "INVALID_ARGUMENT"
        },
        ..ApiError::invalid(None, message)
    }
}

/// The multipart body (already read and limited) split into its parts.
async fn parts(headers: &HeaderMap, bytes: axum::body::Bytes) -> Result<Parts, ApiError> {
    let mut request = Request::new(Body::from(bytes));
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        request
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.clone());
    }
    let bad = |m: String| ApiError::invalid(None, m);
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| bad(format!("expected a multipart/form-data body: {e}")))?;
    let mut parts = Parts::default();
    let mut count = 0;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(format!("the multipart body does not parse: {e}")))?
    {
        count += 1;
        if count > MAX_PARTS {
            return Err(bad(format!("more than {MAX_PARTS} parts")));
        }
        let name = field.name().unwrap_or_default().to_string();
        let data = field
            .bytes()
            .await
            .map_err(|e| bad(format!("part {name:?} does not read: {e}")))?;
        let text = |data: axum::body::Bytes| {
            String::from_utf8(data.to_vec())
                .map_err(|_| ApiError::invalid(Some("text"), format!("{name}: not UTF-8")))
        };
        match name.as_str() {
            "entries" if data.len() > MAX_ENTRIES_BYTES => {
                return Err(bad(format!("entries: over {MAX_ENTRIES_BYTES} bytes")));
            }
            "entries" => parts.entries = Some(text(data)?),
            "image" => parts.image = Some(data.to_vec()),
            "text" => parts.text = Some(text(data)?),
            // Other fields are ignored, as Immich's own service does.
            _ => {}
        }
    }
    Ok(parts)
}

/// Whether the body is declared `application/x-www-form-urlencoded`.
fn is_urlencoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| {
            essence
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// An urlencoded body (already read and limited) split into its fields, under the multipart
/// bounds (at most [`MAX_PARTS`] fields, `entries` at most [`MAX_ENTRIES_BYTES`]). Immich's
/// service reads it with FastAPI's `Form()`: `entries` and `text` (an `image` field, if any, is
/// the value's bytes).
fn form_fields(bytes: &[u8]) -> Result<Parts, ApiError> {
    let bad = |m: String| ApiError::invalid(None, m);
    let mut parts = Parts::default();
    for (count, (name, value)) in url::form_urlencoded::parse(bytes).enumerate() {
        if count >= MAX_PARTS {
            return Err(bad(format!("more than {MAX_PARTS} form fields")));
        }
        match &*name {
            "entries" if value.len() > MAX_ENTRIES_BYTES => {
                return Err(bad(format!("entries: over {MAX_ENTRIES_BYTES} bytes")));
            }
            "entries" => parts.entries = Some(value.into_owned()),
            "text" => parts.text = Some(value.into_owned()),
            "image" => parts.image = Some(value.into_owned().into_bytes()),
            _ => {}
        }
    }
    Ok(parts)
}

/// Immich's `cleanModelName`: the last `/` segment, `:` read as `_`.
fn clean(name: &str) -> String {
    name.rsplit('/').next().unwrap_or(name).replace(':', "_")
}

/// Immich machine learning: CLIP smart-search embeddings of an image or a text.
#[utoipa::path(post, path = "/predict", tag = "immich",
    request_body(content(
        (PredictForm = "multipart/form-data",
            example = json!({"entries": "{\"clip\": {\"textual\": {\"modelName\": \"ViT-B-32__openai\"}}}", "text": "a photo of a cat"})),
        (PredictText = "application/x-www-form-urlencoded",
            example = json!({"entries": "{\"clip\": {\"textual\": {\"modelName\": \"ViT-B-32__openai\"}}}", "text": "a photo of a cat"})),
    )),
    responses((status = 200, description = "`{clip: <embedding as a JSON string>, imageHeight?, imageWidth?}`", body = serde_json::Value),
        (status = "4XX", description = "An error (`{error, detail}` strings)"),
        (status = 501, description = "A task other than `clip` (facial recognition, OCR)"),
    ))]
pub(super) async fn predict(State(state): State<Api>, headers: HeaderMap, body: Body) -> Response {
    state
        .call_shaped(("Immich", "predict"), &headers, Shape::Plain, async {
            let (bytes, _held) = state.read_bytes(&headers, body).await?;
            let parts = if is_urlencoded(&headers) {
                form_fields(&bytes)?
            } else {
                parts(&headers, bytes).await?
            };
            run(&state, parts).await
        })
        .await
}

async fn run(api: &Api, parts: Parts) -> Result<Response, ApiError> {
    let entries = parts.entries.ok_or_else(|| {
        status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "Invalid request format: no `entries` field",
        )
    })?;
    let entries: Entries = serde_json::from_str(&entries).map_err(|e| {
        status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("Invalid request format: entries: {e}"),
        )
    })?;
    if let Some(task) = entries.other.keys().next() {
        return Err(status(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported",
            format!(
                "entries: task {task:?} is not served here; this server does CLIP smart search (`clip`) only"
            ),
        ));
    }
    let clip = entries.clip.ok_or_else(|| {
        status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "Invalid request format: entries has no `clip` task",
        )
    })?;
    let (entry, visual) = match (clip.visual, clip.textual) {
        (Some(v), None) => (v, true),
        (None, Some(t)) => (t, false),
        _ => {
            return Err(status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "Invalid request format: entries.clip needs exactly one of `visual` and `textual`",
            ));
        }
    };
    let extra: &[&str] = if api.is_vit_b_32() {
        IMMICH_VIT_B_32
    } else {
        &[]
    };
    api.check_model_among(Some(&entry.model_name), extra)
        .or_else(|_| api.check_model_among(Some(&clean(&entry.model_name)), extra))?;
    let item = if visual {
        let image = parts.image.ok_or_else(|| {
            ApiError::invalid(Some("image"), "a visual clip entry needs an `image` file")
        })?;
        Item::Image(image.into())
    } else {
        let text = parts.text.ok_or_else(|| {
            ApiError::invalid(Some("text"), "a textual clip entry needs a `text` field")
        })?;
        Item::Text(text)
    };
    let image = match &item {
        Item::Image(bytes) => Some(bytes.clone()),
        Item::Text(_) => None,
    };
    let permit = api.service.admit(Admission::TryNow).await?;
    let embedded = api
        .service
        .embed_items(vec![item], None, permit)
        .await
        .map_err(|e| {
            ApiError::from_service_named(e, &|f| match f {
                crate::common::Field::List(_) => Some(if visual { "image" } else { "text" }),
                _ => None,
            })
        })?;
    let values = embedded
        .embeddings
        .into_iter()
        .next()
        .map(|e| e.values)
        .unwrap_or_default();
    let clip = serde_json::to_string(&values)
        .map_err(|e| ApiError::from(crate::common::ServiceError::Internal(e.to_string())))?;
    let mut reply = json!({"clip": clip});
    if let Some(image) = image {
        let (width, height) = api.service.image_dimensions(image).await?;
        reply["imageHeight"] = json!(height);
        reply["imageWidth"] = json!(width);
    }
    Ok(Json(reply).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded_forms_are_read_within_the_bounds() {
        let p = form_fields(b"entries=%7B%22clip%22%7D&text=a+photo+of+a+cat&other=1").unwrap();
        assert_eq!(p.entries.as_deref(), Some("{\"clip\"}"));
        assert_eq!(p.text.as_deref(), Some("a photo of a cat"));
        let many = "x=1&".repeat(MAX_PARTS + 1);
        assert!(form_fields(many.as_bytes()).is_err());
        let long = format!("entries={}", "a".repeat(MAX_ENTRIES_BYTES + 1));
        assert!(form_fields(long.as_bytes()).is_err());
    }

    #[test]
    fn model_names_are_cleaned_as_immich_does() {
        assert_eq!(clean("immich-app/ViT-B-32__openai"), "ViT-B-32__openai");
        assert_eq!(clean("ViT-B-32:openai"), "ViT-B-32_openai");
        let e: Entries = serde_json::from_str(
            r#"{"facial-recognition": {"detection": {"modelName": "buffalo_l"}}}"#,
        )
        .unwrap();
        assert!(e.clip.is_none() && e.other.contains_key("facial-recognition"));
        let e: Entries = serde_json::from_str(
            r#"{"clip": {"textual": {"modelName": "ViT-B-32__openai", "options": {"language": "en"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            e.clip.unwrap().textual.unwrap().model_name,
            "ViT-B-32__openai"
        );
    }
}
