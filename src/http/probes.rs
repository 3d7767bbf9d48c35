//! `/metrics` (Prometheus text format), `/healthz` (the process is up) and `/readyz` (the model is
//! warmed up and the server is not shutting down): open to all, as probes and scrapers expect.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use crate::embed::EmbedService;

pub fn routes(service: EmbedService) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(service)
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
