//! `/metrics` (Prometheus text format), `/healthz` (the process is up) and `/readyz` (the model is
//! warmed up, the collections are read in, and the server is not shutting down): open to all, as
//! probes and scrapers expect.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use crate::{embed::EmbedService, retrieve::RetrieveService};

#[derive(Clone)]
struct Probes {
    service: EmbedService,
    retrieve: RetrieveService,
}

pub fn routes(service: EmbedService, retrieve: RetrieveService) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Probes { service, retrieve })
}

async fn metrics(State(probes): State<Probes>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        probes.service.metrics().render(),
    )
}

async fn readyz(State(probes): State<Probes>) -> impl IntoResponse {
    let ready = probes.service.readiness().and_then(|()| {
        // A shared store being reached holds back Retrieve's calls only, not the pod.
        if probes.retrieve.is_loaded() || probes.retrieve.store_kind() != "local" {
            Ok(())
        } else {
            Err("the collections are loading")
        }
    });
    match ready {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
