//! What every HTTP API call goes through: the API key check (and its rate limit: 429 with
//! `Retry-After`), the key's usage scope, a `call{request_id, method, key}` span,
//! the request counter and duration (`interface="http"`), and the `x-request-id` header on the
//! reply, success or error, with `server-timing: total;dur=<ms>`.
//!
//! The key check knows the peer's address (failed checks are throttled per address) from the
//! [`PeerAddr`] request extension the accept loop inserts (or axum's `ConnectInfo`), which
//! [`peer_scope`] hands to [`call`]. Handlers [`charge`](crate::security::keys::charge) their
//! item count to the key's rate limit; a refused charge gets `Retry-After` here like a refused
//! check.

use std::{future::Future, net::SocketAddr, time::Instant};

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderValue, header},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

use super::error::{ApiError, Shape};
use crate::{
    security::{ApiKeys, keys},
    telemetry::{
        metrics::Metrics,
        usage::{self, Usage},
    },
};

/// The address an HTTP request came from: a request extension the server's accept loop inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

tokio::task_local! {
    static PEER: Option<SocketAddr>;
}

/// Middleware (`axum::middleware::from_fn`) that makes the request's [`PeerAddr`] (or axum's
/// `ConnectInfo<SocketAddr>`) known to [`call`], which sees only the headers.
pub async fn peer_scope(request: Request, next: Next) -> Response {
    let extensions = request.extensions();
    let peer = extensions
        .get::<PeerAddr>()
        .map(|p| p.0)
        .or_else(|| extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
    PEER.scope(peer, next.run(request)).await
}

/// The running request's peer address, if the accept loop said.
fn peer() -> Option<SocketAddr> {
    PEER.try_with(|p| *p).ok().flatten()
}

/// Checks the key, runs `handler` in a span with the request id, counts the call under
/// `service`/`method`, and tags the response with the request id. Errors in OpenAI's shape.
pub async fn call<F>(
    keys: &ApiKeys,
    metrics: &Metrics,
    names: (&'static str, &'static str),
    headers: &HeaderMap,
    handler: F,
) -> Response
where
    F: Future<Output = Result<Response, ApiError>>,
{
    call_shaped(keys, metrics, names, headers, Shape::OpenAi, handler).await
}

/// [`call`] with errors rendered in `shape`.
pub async fn call_shaped<F>(
    keys: &ApiKeys,
    metrics: &Metrics,
    (service, method): (&'static str, &'static str),
    headers: &HeaderMap,
    shape: Shape,
    handler: F,
) -> Response
where
    F: Future<Output = Result<Response, ApiError>>,
{
    let started = Instant::now();
    let id =
        crate::telemetry::request_id(headers.get("x-request-id").and_then(|v| v.to_str().ok()));
    let span = tracing::info_span!(
        "call",
        request_id = %id,
        method = %format_args!("{service}/{method}"),
        key = tracing::field::Empty
    );
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let mut retry_after = None;
    let result = match keys.authenticate_from(authorization, peer().map(|p| p.ip())) {
        Ok(caller) => {
            // The key's name (never the key) on the span; what the call computes counts for it,
            // and what it charges is spent from the key's rate limit.
            let (usage, allowance) = caller
                .map(|c| {
                    span.record("key", &*c.key_name);
                    (Usage::for_key(metrics, c.key_name), c.allowance)
                })
                .unzip();
            let work = keys::scoped(allowance.clone(), handler.instrument(span.clone()));
            let result = usage::scoped(usage, work).await;
            if result.is_err() {
                retry_after = allowance.and_then(|a| a.retry_after());
            }
            result
        }
        Err(e) => {
            retry_after = e.retry_after();
            Err(e.into())
        }
    };
    let (mut response, code) = match result {
        Ok(r) => (r, "OK"),
        Err(e) => {
            let code = e.grpc_code;
            if e.status.is_server_error() {
                span.in_scope(|| tracing::error!(status = e.status.as_u16(), message = %e.message, "call failed"));
            }
            (e.into_shaped(shape), code)
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    metrics.observe_call_on("http", service, method, code, elapsed);
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    if let Some(wait) = retry_after {
        // Whole seconds, rounded up (RFC 9110); at least 1.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    if let Ok(v) = HeaderValue::from_str(&format!("total;dur={:.3}", elapsed * 1e3)) {
        response.headers_mut().insert("server-timing", v);
    }
    response
}
