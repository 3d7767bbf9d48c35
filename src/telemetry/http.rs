//! The HTTP listener (`--http-addr`): `/metrics` (Prometheus text format), `/healthz` (the process
//! is up) and `/readyz` (the model is warmed up and the server is not shutting down) — open to all,
//! as probes and scrapers expect — plus the OpenAI-compatible `/v1` routes (`crate::openai`), which
//! need an API key when keys are configured. Plain HTTP/1.1, or TLS with `--tls-cert`.

use std::{future::Future, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use crate::service::EmbedService;

/// The routes, for serving and for tests.
pub fn router(
    service: EmbedService,
    openai: crate::openai::OpenAi,
    max_body_bytes: usize,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(service)
        .merge(crate::openai::routes(openai, max_body_bytes))
}

/// Serves until `shutdown` resolves; with `tls`, HTTPS only.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<&crate::tls::TlsFiles>,
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
        stopper.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    axum_server::from_tcp_rustls(
        listener.into_std()?,
        axum_server::tls_rustls::RustlsConfig::from_config(config),
    )
    .handle(handle)
    .serve(router.into_make_service())
    .await
}

async fn metrics(State(service): State<EmbedService>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        service.metrics().render(),
    )
}

async fn readyz(State(service): State<EmbedService>) -> impl IntoResponse {
    match service.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
