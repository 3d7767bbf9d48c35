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

/// Charges the running call `items` of its key's rate limit (in items per second; the key check
/// paid for one): a handler calls this with its request's item count once the request is parsed,
/// before any work on the items (image URLs fetched included).
pub fn charge(items: usize) -> Result<(), ApiError> {
    keys::charge(u64::try_from(items).unwrap_or(u64::MAX)).map_err(ApiError::from)
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

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, http::Request as HttpRequest, routing::get};
    use tower::ServiceExt;

    use super::*;
    use crate::security::RateLimit;

    /// A route that charges the items its `x-items` header says, behind [`call`].
    fn app(keys: ApiKeys) -> Router {
        let metrics = Metrics::new().unwrap();
        Router::new()
            .route(
                "/",
                get(move |headers: HeaderMap| async move {
                    let items = headers
                        .get("x-items")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(1);
                    call(&keys, &metrics, ("T", "t"), &headers, async move {
                        charge(items)?;
                        Ok(axum::response::IntoResponse::into_response("ok"))
                    })
                    .await
                }),
            )
            .layer(axum::middleware::from_fn(peer_scope))
    }

    async fn send(app: &Router, key: &str, peer: &str, items: usize) -> Response {
        let mut request = HttpRequest::get("/")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header("x-items", items.to_string())
            .body(Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr(peer.parse().unwrap()));
        app.clone().oneshot(request).await.unwrap()
    }

    fn retry_after(r: &Response) -> Option<&str> {
        r.headers().get(header::RETRY_AFTER)?.to_str().ok()
    }

    #[tokio::test]
    async fn failed_checks_are_throttled_per_peer_and_calls_pay_their_items() {
        let rate: RateLimit = "1:3".parse().unwrap();
        let keys = ApiKeys::load_with(Some("sk-right".into()), None, Some(rate))
            .unwrap()
            .throttle_failures(2);
        let app = app(keys);
        let (a, b) = ("192.0.2.1:5000", "192.0.2.2:5000");
        for _ in 0..2 {
            assert_eq!(send(&app, "sk-wrong", a, 1).await.status().as_u16(), 401);
        }
        // A spent its failures: the right key from A gets a quick 429 with Retry-After.
        let r = send(&app, "sk-right", a, 1).await;
        assert_eq!(r.status().as_u16(), 429);
        let wait: u64 = retry_after(&r).unwrap().parse().unwrap();
        assert!((50..=60).contains(&wait), "{wait}");
        // B is another peer: 3 items spend the key's burst of 3 ...
        assert_eq!(send(&app, "sk-right", b, 3).await.status().as_u16(), 200);
        // ... so a call of 2 more is refused by the check itself, with Retry-After.
        let r = send(&app, "sk-right", b, 2).await;
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(retry_after(&r), Some("1"));
    }

    #[tokio::test]
    async fn a_refused_charge_gets_retry_after_and_one_over_the_burst_says_so() {
        let rate: RateLimit = "1:3".parse().unwrap();
        let keys = ApiKeys::load_with(Some("sk".into()), None, Some(rate)).unwrap();
        let app = app(keys);
        let peer = "192.0.2.9:1";
        // More items than the burst can never pass: 429 without a Retry-After.
        let r = send(&app, "sk", peer, 4).await;
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(retry_after(&r), None);
        // The check of that call spent one: 2 are left. A call of 3 passes the check (1) and is
        // refused at its charge (2 more, 1 left): Retry-After from the charge.
        let r = send(&app, "sk", peer, 3).await;
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(retry_after(&r), Some("1"));
    }
}
