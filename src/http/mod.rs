//! The HTTP protocol layer on `--http-addr`, beside `grpc/`: every HTTP route and the one mapping
//! from domain errors to HTTP statuses ([`error`]).
//!
//! - [`probes`]: `/metrics`, `/healthz`, `/readyz` (no key needed);
//! - [`openai`]: the OpenAI- and Jina-compatible `/v1/embeddings` and `/v1/models` (API key when
//!   configured), with vLLM's chat shapes there ([`chat`]: `messages`, conversations in `input`);
//! - [`cohere`]: Cohere's embed on `/v1/embed` and `/v2/embed` (float, int8, uint8, binary,
//!   ubinary, base64 embeddings);
//! - [`classify`]: Jina's zero-shot `/v1/classify`;
//! - [`rerank`]: Cohere / Jina / Infinity rerank on `/v1/rerank`, `/v2/rerank`, `/rerank`;
//! - [`hf`]: Hugging Face Inference's zero-shot image classification and feature extraction on
//!   `POST /`;
//! - [`weaviate`]: Weaviate's multi2vec-clip `/vectorize`, `/meta`, `/.well-known/{ready,live}`;
//! - [`collections`]: collections (create, list, delete, upsert, get, search) under
//!   `/v1/collections`, the REST face of gRPC `Retrieve`;
//! - [`batches`]: OpenAI's Batch API (`/v1/files`, `/v1/batches`) over [`crate::jobs`];
//! - [`immich`]: Immich machine learning's `/predict` (CLIP smart search) and `/ping`;
//! - [`openapi`]: `/openapi.json`, the OpenAPI 3.1 document of these routes (no key needed);
//! - [`pages`]: the browser playground on `GET /` (for `Accept: text/html`) and Swagger UI on
//!   `/docs`, served from the binary;
//! - [`api`]: what the API routes share (services, body reading, model names);
//! - [`inputs`]: the input item shapes clients send (texts, base64 images, data URIs);
//! - [`guard`]: DNS-rebinding and cross-site refusals, JSON content types (a layer on every API
//!   route);
//! - [`call`]: the layer every API call goes through (key, span, metrics, request id,
//!   server-timing), and the table naming each API route's call;
//! - [`serve`]: the accept loop (connection places, TLS handshake, header and idle deadlines).
//!
//! `CLIENTS.md` beside this file records the wire formats of the client libraries these routes
//! serve, read from their source.
//!
//! Plain HTTP/1.1, or TLS with `--tls-cert` (the rustls configuration comes from `security::tls`).
//! axum and hyper types stop here; handlers call the same domain services as gRPC.

pub mod api;
pub mod batches;
pub mod body;
pub mod call;
pub mod chat;
pub mod classify;
pub mod cohere;
pub mod collections;
pub mod error;
pub mod guard;
pub mod hf;
pub mod immich;
pub mod inputs;
pub mod openai;
pub mod openapi;
pub mod pages;
pub mod probes;
pub mod ratelimit;
pub mod rerank;
pub mod serve;
pub mod usage;
pub mod weaviate;

use std::sync::Arc;

use axum::Router;

use crate::{
    classify::ClassifyService,
    embed::{EmbedService, fetch::Fetcher},
    jobs::JobsService,
    retrieve::RetrieveService,
    security::ApiKeys,
};

pub use call::PeerAddr;
pub use serve::{ConnectionRules, serve};

/// What the HTTP API serves, and with which settings.
pub struct Services {
    pub embed: EmbedService,
    pub classify: ClassifyService,
    pub retrieve: RetrieveService,
    /// The Batch API's files and batches (its runner starts with the routes).
    pub jobs: JobsService,
    pub keys: ApiKeys,
    /// How API bodies are read (`--max-message-bytes`, `--body-read-timeout`, ...).
    pub body: body::BodyRules,
    /// `--model-alias`.
    pub model_aliases: Vec<String>,
    /// `--fetch-image-urls`: image URLs are fetched with it (`None`: refused).
    pub fetcher: Option<Fetcher>,
    /// `--allowed-hosts`: the `Host` names a browser may use without a key.
    pub allowed_hosts: Vec<String>,
    /// The bounds request bodies are parsed under.
    pub json: body::JsonLimits,
}

/// Every route, for serving and for tests.
pub fn router(services: Services) -> Router {
    let Services {
        embed,
        classify,
        retrieve,
        jobs,
        keys,
        body,
        model_aliases,
        fetcher,
        allowed_hosts,
        json,
    } = services;
    let guard = guard::Guard {
        keys: keys.clone(),
        allowed_hosts: Arc::from(allowed_hosts),
    };
    let api = api::Api {
        service: embed.clone(),
        classify,
        retrieve: retrieve.clone(),
        keys,
        body,
        aliases: Arc::from(model_aliases),
        fetcher,
        json,
    };
    let calls = call::Calls {
        keys: api.keys.clone(),
        metrics: embed.metrics().clone(),
    };
    let api_routes = openapi::routes()
        .merge(openai::routes(api.clone()))
        .merge(classify::routes(api.clone()))
        .merge(rerank::routes(api.clone()))
        .merge(cohere::routes(api.clone()))
        .merge(hf::routes(api.clone()))
        .merge(weaviate::routes(api.clone()))
        .merge(collections::routes(api.clone()))
        .merge(usage::routes(api.clone()))
        .merge(batches::routes(api.clone(), jobs))
        .merge(immich::routes(api))
        .merge(pages::routes());
    probes::routes(embed, retrieve).merge(api_layers(api_routes, calls, guard))
}

/// The layers on every API route: the call layer (key, usage, span, metrics, request id; see
/// `call.rs`) on each matched route, inside the guard (Host, Origin, content types).
fn api_layers(routes: Router, calls: call::Calls, guard: guard::Guard) -> Router {
    routes
        .route_layer(axum::middleware::from_fn_with_state(calls, call::layer))
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard))
}
