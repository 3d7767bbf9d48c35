//! The OpenAI-compatible HTTP API on `--http-addr`: `POST /v1/embeddings` and `GET /v1/models`, in
//! OpenAI's request, response and error shapes, so the `openai` SDKs work unchanged. The same
//! service, batchers, limits and metrics as gRPC sit behind it; this file is the HTTP protocol
//! layer, and holds the one mapping from domain errors to HTTP statuses.
//!
//! Images go through the same route the way Infinity does it: `"modality": "image"` with inputs as
//! `data:image/...;base64,...` URIs. Fetching http(s) URLs server-side is refused (an SSRF door).

use std::time::Instant;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    ServiceError,
    auth::{ApiKeys, AuthError},
    service::{Admission, EmbedService},
};

#[derive(Clone)]
pub struct OpenAi {
    pub service: EmbedService,
    pub keys: ApiKeys,
}

/// The `/v1` routes. Bodies are limited to `--max-message-bytes` (413 beyond).
pub fn routes(state: OpenAi, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    param: Option<&'static str>,
    message: String,
    /// The gRPC code name of the same failure, for metrics shared with gRPC.
    grpc_code: &'static str,
}

impl ApiError {
    fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: "invalid_request",
            param,
            message: message.into(),
            grpc_code: "INVALID_ARGUMENT",
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            code: "invalid_api_key",
            param: None,
            message: e.to_string(),
            grpc_code: "UNAUTHENTICATED",
        }
    }
}

/// The HTTP face of each domain error (the same failures get the matching gRPC codes).
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let (status, kind, code, grpc_code) = match &e {
            ServiceError::InvalidArgument(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                "INVALID_ARGUMENT",
            ),
            ServiceError::FailedPrecondition(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported",
                "FAILED_PRECONDITION",
            ),
            ServiceError::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                "NOT_FOUND",
            ),
            ServiceError::AlreadyExists(_) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "already_exists",
                "ALREADY_EXISTS",
            ),
            ServiceError::ResourceExhausted(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                "RESOURCE_EXHAUSTED",
            ),
            ServiceError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "unavailable",
                "UNAVAILABLE",
            ),
            ServiceError::DeadlineExceeded(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "timeout",
                "DEADLINE_EXCEEDED",
            ),
            ServiceError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                "INTERNAL",
            ),
        };
        // The domain names items `texts[i]` / `images[i]`; here they are all `input[i]`.
        let message = e
            .to_string()
            .replacen("texts[", "input[", 1)
            .replacen("images[", "input[", 1);
        ApiError {
            status,
            kind,
            code,
            param: matches!(e, ServiceError::InvalidArgument(_)).then_some("input"),
            message,
            grpc_code,
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        let status = e.status();
        ApiError {
            status,
            kind: "invalid_request_error",
            code: if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request_too_large"
            } else {
                "invalid_request"
            },
            param: None,
            message: format!("{e} (--max-message-bytes bounds the body)"),
            grpc_code: if status == StatusCode::PAYLOAD_TOO_LARGE {
                "OUT_OF_RANGE"
            } else {
                "INVALID_ARGUMENT"
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        (self.status, Json(body)).into_response()
    }
}

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: Option<String>,
    input: Value,
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

/// Checks the key, runs `handler` in a span with the request id, counts the call, and tags the
/// response with the request id.
async fn call<F>(state: &OpenAi, method: &'static str, headers: &HeaderMap, handler: F) -> Response
where
    F: std::future::Future<Output = Result<Response, ApiError>>,
{
    use tracing::Instrument;
    let started = Instant::now();
    let id =
        crate::telemetry::request_id(headers.get("x-request-id").and_then(|v| v.to_str().ok()));
    let span =
        tracing::info_span!("call", request_id = %id, method = %format_args!("OpenAI/{method}"));
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let result = match state.keys.check(authorization) {
        Ok(()) => handler.instrument(span.clone()).await,
        Err(e) => Err(e.into()),
    };
    let (mut response, code) = match result {
        Ok(r) => (r, "OK"),
        Err(e) => {
            let code = e.grpc_code;
            if e.status.is_server_error() {
                span.in_scope(|| tracing::error!(status = e.status.as_u16(), message = %e.message, "call failed"));
            }
            (e.into_response(), code)
        }
    };
    state.service.metrics().observe_call_on(
        "http",
        "OpenAI",
        method,
        code,
        started.elapsed().as_secs_f64(),
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
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

async fn embeddings(
    State(state): State<OpenAi>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let service = state.service.clone();
    call(&state, "embeddings", &headers, async move {
        let body = body?;
        let request: EmbeddingsRequest = serde_json::from_slice(&body).map_err(|e| {
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
            .map(|(i, s)| data_uri(i, s))
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

/// `input`: a string or an array of strings. Token-id arrays (which OpenAI also accepts) are
/// refused: this server tokenizes itself, exactly as open_clip does.
fn inputs(input: Value) -> Result<Vec<String>, ApiError> {
    match input {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) => items
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
            .collect(),
        other => Err(ApiError::invalid(
            Some("input"),
            format!(
                "input: expected a string or an array of strings, got {}",
                kind(&other)
            ),
        )),
    }
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
        assert_eq!(inputs(json!("a")).unwrap(), ["a"]);
        assert_eq!(inputs(json!(["a", "b"])).unwrap(), ["a", "b"]);
        let e = inputs(json!(["a", [1, 2]])).unwrap_err();
        assert!(e.message.contains("input[1]: token ids"), "{}", e.message);
        let e = inputs(json!({"x": 1})).unwrap_err();
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

    #[test]
    fn domain_errors_map_to_openai_statuses() {
        let cases = [
            (
                ServiceError::invalid_item("texts", 2, "too long"),
                400,
                "input[2]: too long",
            ),
            (ServiceError::ResourceExhausted("busy".into()), 429, "busy"),
            (ServiceError::Unavailable("loading".into()), 503, "loading"),
            (ServiceError::Internal("see logs".into()), 500, "see logs"),
            (
                ServiceError::FailedPrecondition("no tower".into()),
                400,
                "no tower",
            ),
        ];
        for (e, status, message) in cases {
            let a = ApiError::from(e);
            assert_eq!(a.status.as_u16(), status);
            assert_eq!(a.message, message);
        }
        assert_eq!(
            ApiError::from(AuthError::Wrong).status,
            StatusCode::UNAUTHORIZED
        );
    }
}
