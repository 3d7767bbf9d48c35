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
pub(super) struct Probes {
    service: EmbedService,
    retrieve: RetrieveService,
}

pub fn routes(service: EmbedService, retrieve: RetrieveService) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Probes { service, retrieve })
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "probes", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(super) async fn metrics(State(probes): State<Probes>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        probes.service.metrics().render(),
    )
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "probes", security(()),
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Warmed up, collections read in, not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "probes", security(()),
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain"),
        (status = 503, description = "not ready (yet), with the reason", body = String, content_type = "text/plain"),
    ))]
pub(super) async fn readyz(State(probes): State<Probes>) -> impl IntoResponse {
    let ready = probes.service.readiness().and_then(|()| {
        // A shared store being reached holds back Retrieve's calls only, not the pod.
        if probes.retrieve.is_loaded() || probes.retrieve.store_kind().is_shared() {
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
