//! `GET /v1/usage?start=YYYY-MM-DD&end=YYYY-MM-DD&key=NAME`: items counted per API key and UTC
//! day, for a billing job; admin keys only (`role=admin` on the key file line), others get 403.
//! The counting and the quotas themselves are the domain's (`security::quota`).

use axum::{
    Json, Router,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::{api::Api, error::ApiError};
use crate::security::{
    keys,
    quota::{self, UsageError},
};

pub fn routes(state: Api) -> Router {
    Router::new()
        .route("/v1/usage", get(usage))
        .with_state(state)
}

#[derive(Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UsageQuery {
    /// First UTC day, `YYYY-MM-DD` (default: `end`).
    #[param(example = "2026-12-01")]
    start: Option<String>,
    /// Last UTC day, inclusive, `YYYY-MM-DD` (default: today); at most 366 days after `start`.
    #[param(example = "2026-12-06")]
    end: Option<String>,
    /// One key's name (default: every key).
    #[param(example = "alice")]
    key: Option<String>,
}

impl UsageQuery {
    /// `start`, `end` and `key`, once each; anything else is a clear 400.
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut q = UsageQuery::default();
        for (name, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let slot = match &*name {
                "start" => &mut q.start,
                "end" => &mut q.end,
                "key" => &mut q.key,
                other => {
                    return Err(ApiError::invalid(
                        None,
                        format!("unknown query parameter {other:?} (expected start, end, key)"),
                    ));
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(ApiError::invalid(
                    None,
                    format!("query parameter {name:?} given twice"),
                ));
            }
        }
        Ok(q)
    }
}

fn refusal(e: UsageError) -> ApiError {
    match e {
        UsageError::Forbidden(message) => ApiError {
            status: StatusCode::FORBIDDEN,
            kind: "invalid_request_error",
            code: "permission_denied",
            param: None,
            message: message.into(),
            grpc_code: "PERMISSION_DENIED",
        },
        UsageError::Invalid(message) => ApiError::invalid(None, message),
        UsageError::Unavailable(message) => {
            tracing::error!(error = %message, "usage not read");
            ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "server_error",
                code: "usage_store_unavailable",
                param: None,
                message: "the usage store does not answer; retry shortly".into(),
                grpc_code: "UNAVAILABLE",
            }
        }
    }
}

/// Items per key and UTC day (admin keys only).
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageQuery),
    responses(
        (status = 200, description = "Items counted per key and UTC day (images and texts embedded, items classified, upserted or ranked)", body = serde_json::Value,
            example = json!({"object": "list", "unit": "items", "start": "2026-12-01", "end": "2026-12-06",
                "data": [{"key": "alice", "date": "2026-12-05", "items": 1200}, {"key": "bob", "date": "2026-12-05", "items": 40}]})),
        (status = 400, description = "A date is not YYYY-MM-DD, end is before start, or the range is over 366 days"),
        (status = 401, description = "No or wrong API key"),
        (status = 403, description = "Not an admin key (`role=admin`), or no API keys configured"),
        (status = 503, description = "The usage store does not answer"),
    ))]
pub(super) async fn usage(
    State(state): State<Api>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    state
        .call(("Usage", "usage"), &headers, async {
            let q = UsageQuery::parse(query.as_deref())?;
            let allowance = keys::current();
            let access = allowance.as_ref().and_then(keys::Allowance::admin_usage);
            let (start, end, key) = (q.start.as_deref(), q.end.as_deref(), q.key.as_deref());
            let (start, end, rows) = quota::read_usage(access, start, end, key)
                .await
                .map_err(refusal)?;
            Ok(Json(json!({
                "object": "list",
                "unit": "items",
                "start": start,
                "end": end,
                "data": rows,
            }))
            .into_response())
        })
        .await
}
