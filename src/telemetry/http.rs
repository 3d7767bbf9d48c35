//! The HTTP listener (`--http-addr`): `/metrics` (Prometheus text format), `/healthz` (the process
//! is up) and `/readyz` (the model is warmed up and the server is not shutting down). Kubernetes
//! probes and Prometheus scrapers speak HTTP; gRPC health checking is on the gRPC port as well.

use std::future::Future;

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
pub fn router(service: EmbedService) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(service)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    service: EmbedService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(service))
        .with_graceful_shutdown(shutdown)
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
