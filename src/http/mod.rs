//! The HTTP protocol layer on `--http-addr`, beside `grpc/`: every HTTP route and the one mapping
//! from domain errors to HTTP statuses ([`error`]).
//!
//! - [`probes`]: `/metrics`, `/healthz`, `/readyz` (no key needed);
//! - [`openai`]: the OpenAI-compatible `/v1/embeddings` and `/v1/models` (API key when configured);
//! - [`call`]: what every API call goes through (key, span, metrics, request id).
//!
//! Plain HTTP/1.1, or TLS with `--tls-cert` (the rustls configuration comes from `security::tls`).
//! axum and hyper types stop here; handlers call the same domain services as gRPC.

pub mod body;
pub mod call;
pub mod error;
pub mod openai;
pub mod probes;

use std::{future::Future, time::Duration};

use axum::Router;
use tokio::net::TcpListener;

use crate::{
    embed::EmbedService,
    retrieve::RetrieveService,
    security::{ApiKeys, TlsFiles},
};

/// Every route, for serving and for tests. API bodies are limited to `max_body_bytes`.
pub fn router(
    service: EmbedService,
    retrieve: RetrieveService,
    keys: ApiKeys,
    max_body_bytes: usize,
) -> Router {
    probes::routes(service.clone(), retrieve).merge(openai::routes(openai::OpenAi {
        service,
        keys,
        max_body_bytes,
    }))
}

/// Serves until `shutdown` resolves, then lets open requests finish (the caller bounds how long:
/// `server.rs` drops the listener when `--shutdown-grace` is over); with `tls`, HTTPS only.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<&TlsFiles>,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let config = tls.rustls_config().map_err(std::io::Error::other)?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(grace));
    });
    axum_server::from_tcp_rustls(
        listener.into_std()?,
        axum_server::tls_rustls::RustlsConfig::from_config(config),
    )
    .handle(handle)
    .serve(router.into_make_service())
    .await
}
