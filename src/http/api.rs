//! What the API routes share: the services behind them, the key, the body limit, and the model
//! names a request may ask for (the served ids plus `--model-alias`; Immich's ViT-B-32 names on
//! `/predict`).

use std::sync::Arc;

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::Deserialize;

use super::{
    body, call,
    error::{ApiError, Shape},
};
use crate::{
    admission::bytes::BytesPermit, classify::ClassifyService, common::ServiceError,
    embed::EmbedService, retrieve::RetrieveService, security::ApiKeys,
};

/// The model names Immich knows for ViT-B-32 (its `CLIP_MODEL_INFO`), accepted on `/predict`
/// when the served model is a ViT-B-32.
pub const IMMICH_VIT_B_32: &[&str] = &[
    "ViT-B-32__openai",
    "ViT-B-32__laion2b-s34b-b79k",
    "ViT-B-32__laion2b_e16",
    "ViT-B-32__laion400m_e31",
    "ViT-B-32__laion400m_e32",
];

/// Cheap to clone.
#[derive(Clone)]
pub struct Api {
    pub service: EmbedService,
    pub classify: ClassifyService,
    pub retrieve: RetrieveService,
    pub keys: ApiKeys,
    /// How bodies are read (size, time, rate, bytes held, readers), after the key check.
    pub body: body::BodyRules,
    /// `--model-alias`.
    pub aliases: Arc<[String]>,
    /// `--fetch-image-urls` (`None`: image URLs are refused).
    pub fetcher: Option<crate::embed::fetch::Fetcher>,
    /// What bodies are parsed under (`--max-json-depth`, `--max-json-bytes`, `--max-labels`,
    /// `--max-metadata-bytes`); the item limit is set per route.
    pub json: body::JsonLimits,
}

impl Api {
    /// A call with OpenAI-shaped errors: runs `handler` and names the call for the layer that
    /// every API route is behind (`call::layer`: key, span, metrics, request id); `_headers` is
    /// read by that layer.
    pub async fn call<F>(
        &self,
        names: (&'static str, &'static str),
        _headers: &HeaderMap,
        handler: F,
    ) -> Response
    where
        F: Future<Output = Result<Response, ApiError>>,
    {
        call::reply(names, Shape::OpenAi, handler.await)
    }

    /// [`Self::call`] with errors in `shape`.
    pub async fn call_shaped<F>(
        &self,
        names: (&'static str, &'static str),
        _headers: &HeaderMap,
        shape: Shape,
        handler: F,
    ) -> Response
    where
        F: Future<Output = Result<Response, ApiError>>,
    {
        call::reply(names, shape, handler.await)
    }

    /// The body (limited, held against `--max-inflight-bytes`) parsed as `T`, with its item lists
    /// bounded by `--max-items-per-request`, its label lists by `--max-labels` and the rest by
    /// [`Self::json`] while parsing. `what` names the request in errors.
    pub async fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        headers: &HeaderMap,
        body: Body,
        what: &str,
    ) -> Result<(T, BytesPermit), ApiError> {
        let max_items = self.service.limits().max_items_per_request;
        self.read_json_limited_by(headers, body, what, max_items, "--max-items-per-request")
            .await
    }

    /// [`Self::read_json`] with its item lists bounded to `max_items` (set by `flag`) while
    /// parsing.
    pub async fn read_json_limited_by<T: for<'de> Deserialize<'de>>(
        &self,
        headers: &HeaderMap,
        body: Body,
        what: &str,
        max_items: usize,
        flag: &'static str,
    ) -> Result<(T, BytesPermit), ApiError> {
        let (bytes, held) = self.read_bytes(headers, body).await?;
        let limits = body::JsonLimits {
            max_items,
            items_flag: flag,
            ..self.json
        };
        let request = body::parse_bounded(&bytes, limits)
            .map_err(|e| ApiError::invalid(None, format!("the body is not a valid {what}: {e}")))?;
        Ok((request, held))
    }

    /// `bytes` parsed as `T` under [`Self::read_json`]'s bounds (a Batch API line's body).
    pub fn parse_json<T: for<'de> Deserialize<'de>>(
        &self,
        bytes: &[u8],
        what: &str,
    ) -> Result<T, ApiError> {
        let limits = body::JsonLimits {
            max_items: self.service.limits().max_items_per_request,
            items_flag: "--max-items-per-request",
            ..self.json
        };
        body::parse_bounded(bytes, limits)
            .map_err(|e| ApiError::invalid(None, format!("the body is not a valid {what}: {e}")))
    }

    /// The raw body, limited and held as [`Self::read_json`] does.
    pub async fn read_bytes(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(axum::body::Bytes, BytesPermit), ApiError> {
        body::read(headers, body, &self.body).await
    }

    /// The served ids: `model_name:pretrained` first, then `model_name` when they differ.
    pub fn model_ids(&self) -> Result<Vec<String>, ServiceError> {
        let config = &self.service.loaded_model()?.config;
        let id = config.model_id();
        Ok(if id == config.model_name {
            vec![id]
        } else {
            vec![id, config.model_name.clone()]
        })
    }

    /// Checks the model a request asks for (none: the served one) against the served ids and the
    /// aliases; returns the served id, for the reply. Unknown: 404 listing the accepted names.
    pub fn check_model(&self, asked: Option<&str>) -> Result<String, ApiError> {
        self.check_model_among(asked, &[])
    }

    /// [`Self::check_model`] that also accepts `extra` names.
    pub fn check_model_among(
        &self,
        asked: Option<&str>,
        extra: &[&str],
    ) -> Result<String, ApiError> {
        let ids = self.model_ids()?;
        let served = ids[0].clone();
        let Some(asked) = asked else {
            return Ok(served);
        };
        let known = ids
            .iter()
            .map(String::as_str)
            .chain(self.aliases.iter().map(String::as_str))
            .chain(extra.iter().copied());
        if known.clone().any(|k| k == asked) {
            return Ok(served);
        }
        let listed: Vec<String> = known.map(|k| format!("`{k}`")).collect();
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "model_not_found",
            param: Some("model"),
            message: format!(
                "the model `{asked}` is not served here; accepted names: {} (--model-alias adds names)",
                listed.join(", ")
            ),
            grpc_code: "NOT_FOUND",
        })
    }

    /// Whether the served model is a ViT-B-32 (Immich's names apply to it).
    pub fn is_vit_b_32(&self) -> bool {
        self.service
            .loaded_model()
            .is_ok_and(|m| m.config.model_name.starts_with("ViT-B-32"))
    }

    /// The served embedding dimension.
    pub fn embed_dim(&self) -> Result<usize, ServiceError> {
        Ok(self.service.loaded_model()?.config.embed_dim)
    }
}
