//! The HTTP protocol layer on `--http-addr`, beside `grpc/`: every HTTP route and the one mapping
//! from domain errors to HTTP statuses ([`error`]).
//!
//! - [`probes`]: `/metrics`, `/healthz`, `/readyz` (no key needed);
//! - [`openai`]: the OpenAI- and Jina-compatible `/v1/embeddings` and `/v1/models` (API key when
//!   configured);
//! - [`classify`]: Jina's zero-shot `/v1/classify`;
//! - [`rerank`]: Cohere / Jina / Infinity rerank on `/v1/rerank`, `/v2/rerank`, `/rerank`;
//! - [`hf`]: Hugging Face Inference's zero-shot image classification and feature extraction on
//!   `POST /`;
//! - [`weaviate`]: Weaviate's multi2vec-clip `/vectorize`, `/meta`, `/.well-known/{ready,live}`;
//! - [`collections`]: collections (create, list, delete, upsert, get, search) under
//!   `/v1/collections`, the REST face of gRPC `Retrieve`;
//! - [`immich`]: Immich machine learning's `/predict` (CLIP smart search) and `/ping`;
//! - [`openapi`]: `/openapi.json`, the OpenAPI 3.1 document of these routes (no key needed);
//! - [`pages`]: the browser playground on `GET /` (for `Accept: text/html`) and Swagger UI on
//!   `/docs`, served from the binary;
//! - [`api`]: what the API routes share (services, body reading, model names);
//! - [`inputs`]: the input item shapes clients send (texts, base64 images, data URIs);
//! - [`call`]: what every API call goes through (key, span, metrics, request id, server-timing).
//!
//! `CLIENTS.md` beside this file records the wire formats of the client libraries these routes
//! serve, read from their source.
//!
//! Plain HTTP/1.1, or TLS with `--tls-cert` (the rustls configuration comes from `security::tls`).
//! axum and hyper types stop here; handlers call the same domain services as gRPC.

pub mod api;
pub mod body;
pub mod call;
pub mod classify;
pub mod collections;
pub mod error;
pub mod hf;
pub mod immich;
pub mod inputs;
pub mod openai;
pub mod openapi;
pub mod pages;
pub mod probes;
pub mod rerank;
pub mod weaviate;

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use tokio::net::TcpListener;

use crate::{
    admission::connections::{ConnectionLimit, Counted},
    classify::ClassifyService,
    embed::{EmbedService, fetch::Fetcher},
    retrieve::RetrieveService,
    security::{ApiKeys, TlsFiles},
};

/// What the HTTP API serves, and with which settings.
pub struct Services {
    pub embed: EmbedService,
    pub classify: ClassifyService,
    pub retrieve: RetrieveService,
    pub keys: ApiKeys,
    /// API bodies are limited to this (`--max-message-bytes`).
    pub max_body_bytes: usize,
    /// `--model-alias`.
    pub model_aliases: Vec<String>,
    /// `--fetch-image-urls`: image URLs are fetched with it (`None`: refused).
    pub fetcher: Option<Fetcher>,
    /// The bounds request bodies are parsed under.
    pub json: body::JsonLimits,
}

/// Every route, for serving and for tests.
pub fn router(services: Services) -> Router {
    let Services {
        embed,
        classify,
        retrieve,
        keys,
        max_body_bytes,
        model_aliases,
        fetcher,
        json,
    } = services;
    let api = api::Api {
        service: embed.clone(),
        classify,
        retrieve: retrieve.clone(),
        keys,
        max_body_bytes,
        aliases: Arc::from(model_aliases),
        fetcher,
        json,
    };
    probes::routes(embed, retrieve)
        .merge(openapi::routes())
        .merge(openai::routes(api.clone()))
        .merge(classify::routes(api.clone()))
        .merge(rerank::routes(api.clone()))
        .merge(hf::routes(api.clone()))
        .merge(weaviate::routes(api.clone()))
        .merge(collections::routes(api.clone()))
        .merge(immich::routes(api))
        .merge(pages::routes())
}

/// A listener whose connections count against `--max-connections` (over it: closed on accept).
struct Limited {
    listener: TcpListener,
    limit: ConnectionLimit,
}

impl axum::serve::Listener for Limited {
    type Io = Counted<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
            if let Some(counted) = self.limit.try_open(stream) {
                return (counted, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Serves until `shutdown` resolves, then lets open requests finish (the caller bounds how long:
/// `server.rs` drops the listener when `--shutdown-grace` is over); with `tls`, HTTPS only. Given a
/// `limit`, connections count against it (plain and HTTPS alike).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<&TlsFiles>,
    limit: Option<ConnectionLimit>,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return match limit {
            Some(limit) => {
                axum::serve(Limited { listener, limit }, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
    };
    let config = tls.rustls_config().map_err(std::io::Error::other)?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(grace));
    });
    let rustls = axum_server::tls_rustls::RustlsConfig::from_config(config);
    let server = axum_server::from_tcp(listener.into_std()?).handle(handle);
    let service = router.into_make_service();
    match limit {
        Some(limit) => {
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
                .acceptor(CountingAcceptor(limit));
            server.acceptor(acceptor).serve(service).await
        }
        None => {
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls);
            server.acceptor(acceptor).serve(service).await
        }
    }
}

/// Counts HTTPS connections against `--max-connections` before the TLS handshake: over the
/// limit, the connection is closed at once (the accept fails for that connection only).
#[derive(Clone)]
struct CountingAcceptor(ConnectionLimit);

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for CountingAcceptor {
    type Stream = Counted<tokio::net::TcpStream>;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        std::future::ready(
            self.0
                .try_open(stream)
                .map(|c| (c, service))
                .ok_or_else(|| std::io::Error::other("over --max-connections")),
        )
    }
}
