//! The one mapping from domain errors to HTTP statuses and error bodies, with the gRPC code name of
//! the same failure for the metrics both doors share. Field paths render in the HTTP API's words:
//! every item list of a request is `input` (`input[3]`) unless a route names its lists itself
//! ([`ApiError::from_service_named`]: a rerank's `documents[2]`), other fields keep their names.
//!
//! Two body shapes ([`Shape`]): OpenAI's `{"error": {"message", "type", "param", "code"}}` plus a
//! top-level `"detail"` string (Jina's clients read `resp["detail"]`), and a plain
//! `{"error": "<message>", "detail": "<message>"}` for the clients that want `error` to be a string
//! (Weaviate's Go client, huggingface_hub, Immich).

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{
    common::{Field, List, ServiceError},
    security::AuthError,
};

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub param: Option<&'static str>,
    pub message: String,
    /// The gRPC code name of the same failure, for metrics shared with gRPC.
    pub grpc_code: &'static str,
}

impl ApiError {
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
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

/// How a route renders its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"error": {"message", "type", "param", "code"}, "detail": "<message>"}`.
    OpenAi,
    /// `{"error": "<message>", "detail": "<message>"}`.
    Plain,
}

/// The HTTP API's name for a field the domain names: item lists are the request's `input`.
fn http_name(field: &Field) -> Option<&'static str> {
    match field {
        Field::List(List::Images | List::Texts) => Some("input"),
        _ => None,
    }
}

/// The request parameter an invalid field belongs to.
fn param_of(field: &Field, name_of: &dyn Fn(&Field) -> Option<&'static str>) -> &'static str {
    match field {
        Field::Param(name) => name,
        Field::List(list) | Field::Item(list, _) => {
            name_of(&Field::List(*list)).unwrap_or(list.as_str())
        }
        Field::Part(of, _) => param_of(of, name_of),
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            // OpenAI's shape for a spent quota (429 `insufficient_quota`); `Retry-After` says when
            // the period resets.
            AuthError::QuotaExhausted { .. } => {
                return ApiError {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    kind: "insufficient_quota",
                    code: "insufficient_quota",
                    param: None,
                    message: e.to_string(),
                    grpc_code: "RESOURCE_EXHAUSTED",
                };
            }
            AuthError::QuotaUnavailable => {
                return ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: "server_error",
                    code: "usage_store_unavailable",
                    param: None,
                    message: e.to_string(),
                    grpc_code: "UNAVAILABLE",
                };
            }
            _ => {}
        }
        if let AuthError::RateLimited { .. }
        | AuthError::OverBurst { .. }
        | AuthError::PeerThrottled { .. } = e
        {
            // OpenAI's shape for 429; `http/call.rs` adds `Retry-After`.
            return ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                kind: "requests",
                code: "rate_limit_exceeded",
                param: None,
                message: e.to_string(),
                grpc_code: "RESOURCE_EXHAUSTED",
            };
        }
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
        ApiError::from_service_named(e, &http_name)
    }
}

impl ApiError {
    /// [`From<ServiceError>`] with the route's own names for the domain's fields (`name_of` returns
    /// `None` for a field that keeps the domain's name).
    pub fn from_service_named(
        e: ServiceError,
        name_of: &dyn Fn(&Field) -> Option<&'static str>,
    ) -> Self {
        let (status, kind, code, grpc_code, message) = match e {
            ServiceError::InvalidArgument(invalid) => {
                return ApiError {
                    param: Some(
                        invalid
                            .field
                            .as_ref()
                            .map_or("input", |f| param_of(f, name_of)),
                    ),
                    message: invalid.render(name_of),
                    ..ApiError::invalid(None, "")
                };
            }
            ServiceError::FailedPrecondition(m) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported",
                "FAILED_PRECONDITION",
                m,
            ),
            ServiceError::NotFound(m) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "not_found",
                "NOT_FOUND",
                m,
            ),
            ServiceError::AlreadyExists(m) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "already_exists",
                "ALREADY_EXISTS",
                m,
            ),
            ServiceError::Aborted(m) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                "aborted",
                "ABORTED",
                m,
            ),
            ServiceError::ResourceExhausted(m) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                "RESOURCE_EXHAUSTED",
                m,
            ),
            ServiceError::Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "unavailable",
                "UNAVAILABLE",
                m,
            ),
            ServiceError::DeadlineExceeded(m) => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "timeout",
                "DEADLINE_EXCEEDED",
                m,
            ),
            ServiceError::Internal(m) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                "INTERNAL",
                m,
            ),
        };
        ApiError {
            status,
            kind,
            code,
            param: None,
            message,
            grpc_code,
        }
    }
}

impl ApiError {
    /// The reply in `shape`.
    pub fn into_shaped(self, shape: Shape) -> Response {
        let body = match shape {
            Shape::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.kind,
                    "param": self.param,
                    "code": self.code,
                },
                "detail": self.message,
            }),
            Shape::Plain => json!({"error": self.message, "detail": self.message}),
        };
        (self.status, Json(body)).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_shaped(Shape::OpenAi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_openai_statuses() {
        let cases = [
            (
                ServiceError::invalid_item(List::Texts, 2, "too long"),
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

    #[test]
    fn invalid_fields_name_their_parameter() {
        let a = ApiError::from(ServiceError::invalid_item(List::Images, 0, "not an image"));
        assert_eq!(
            (a.param, a.message.as_str()),
            (Some("input"), "input[0]: not an image")
        );
        let a = ApiError::from(ServiceError::invalid(Field::Param("top_k"), "too many"));
        assert_eq!(
            (a.param, a.message.as_str()),
            (Some("top_k"), "top_k: too many")
        );
        let a = ApiError::from(ServiceError::invalid_item(List::Labels, 1, "empty label"));
        assert_eq!(
            (a.param, a.message.as_str()),
            (Some("labels"), "labels[1]: empty label")
        );
    }
}
