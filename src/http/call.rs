//! What every HTTP API call goes through, as one layer ([`layer`]) on every API route (all but the
//! probes and the public pages in [`PUBLIC`]), so a route cannot forget any of it: the API key
//! check (and its rate limit: 429 with `Retry-After`; failed checks throttled per peer address),
//! the key's usage scope and rate-limit scope, a `call{request_id, method, key}` span around the
//! handler, the request counter and duration (`interface="http"`), and the `x-request-id` header
//! on the reply, success or error, with `server-timing: total;dur=<ms>`.
//!
//! Names and shapes: [`ROUTES`] names each API route's call (`service`/`method` in metrics and
//! spans) and the shape of its refusals before its handler runs; a handler renders its own result
//! with [`reply`] (through `Api::call`), which leaves the call's name and gRPC code in the
//! response's extensions ([`CallInfo`]) for the layer. A route in neither table is still keyed,
//! spanned, counted and tagged, under `service="http"` and `method="<METHOD> <route>"`.
//!
//! The key check knows the peer's address from the [`PeerAddr`] request extension the accept loop
//! inserts (or axum's `ConnectInfo`). Handlers [`charge`] their item count to the key's rate limit;
//! a refused charge gets `Retry-After` here like a refused check.

use std::{borrow::Cow, net::SocketAddr, time::Instant};

use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

use super::error::{ApiError, Shape};
use crate::{
    batch::priority::{self, Allowed, Priority},
    common::{Field, ServiceError},
    security::{ApiKeys, keys},
    telemetry::{
        metrics::Metrics,
        trace,
        usage::{self, Usage},
    },
};

/// The address an HTTP request came from: a request extension the server's accept loop inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// What [`layer`] needs: the keys and where calls are counted.
#[derive(Clone)]
pub struct Calls {
    pub keys: ApiKeys,
    pub metrics: Metrics,
}

/// An API route: its call's name and the shape of the refusals the layer answers for it.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// axum's route pattern (`/v1/collections/{name}`).
    pub path: &'static str,
    pub service: &'static str,
    pub name: &'static str,
    pub shape: Shape,
}

const fn route(
    method: &'static str,
    path: &'static str,
    (service, name): (&'static str, &'static str),
    shape: Shape,
) -> Route {
    Route {
        method,
        path,
        service,
        name,
        shape,
    }
}

const OPENAI: Shape = Shape::OpenAi;
const PLAIN: Shape = Shape::Plain;
const COLLECTIONS: &str = "Retrieve";

/// Every API route, with the names its handler gives its call (a test checks that they agree).
pub const ROUTES: &[Route] = &[
    route("POST", "/v1/embeddings", ("OpenAI", "embeddings"), OPENAI),
    route("POST", "/embeddings", ("OpenAI", "embeddings"), OPENAI),
    route("GET", "/v1/models", ("OpenAI", "models"), OPENAI),
    route("POST", "/v1/classify", ("Jina", "classify"), OPENAI),
    route("POST", "/v1/rerank", ("Rerank", "rerank"), OPENAI),
    route("POST", "/v2/rerank", ("Rerank", "rerank"), OPENAI),
    route("POST", "/rerank", ("Rerank", "rerank"), OPENAI),
    route("POST", "/v1/embed", ("Cohere", "embed"), OPENAI),
    route("POST", "/v2/embed", ("Cohere", "embed"), OPENAI),
    route("POST", "/", ("HuggingFace", "inference"), PLAIN),
    route("POST", "/vectorize", ("Weaviate", "vectorize"), PLAIN),
    route("GET", "/meta", ("Weaviate", "meta"), PLAIN),
    route("POST", "/predict", ("Immich", "predict"), PLAIN),
    route("GET", "/v1/usage", ("Usage", "usage"), OPENAI),
    route(
        "POST",
        "/v1/collections",
        (COLLECTIONS, "CreateCollection"),
        OPENAI,
    ),
    route(
        "GET",
        "/v1/collections",
        (COLLECTIONS, "ListCollections"),
        OPENAI,
    ),
    route(
        "GET",
        "/v1/collections/{name}",
        (COLLECTIONS, "GetCollection"),
        OPENAI,
    ),
    route(
        "DELETE",
        "/v1/collections/{name}",
        (COLLECTIONS, "DeleteCollection"),
        OPENAI,
    ),
    route(
        "POST",
        "/v1/collections/{name}/items",
        (COLLECTIONS, "Upsert"),
        OPENAI,
    ),
    route(
        "POST",
        "/v1/collections/{name}/items/get",
        (COLLECTIONS, "GetItems"),
        OPENAI,
    ),
    route(
        "POST",
        "/v1/collections/{name}/items/delete",
        (COLLECTIONS, "Delete"),
        OPENAI,
    ),
    route(
        "DELETE",
        "/v1/collections/{name}/items/{id}",
        (COLLECTIONS, "Delete"),
        OPENAI,
    ),
    route(
        "POST",
        "/v1/collections/{name}/search",
        (COLLECTIONS, "Search"),
        OPENAI,
    ),
];

/// The routes behind the layer that answer without a key and are not counted: the browser pages,
/// the OpenAPI document, Weaviate's probes and Immich's ping (`HEAD` as `GET`).
pub const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/playground/playground.js"),
    ("GET", "/playground/playground.css"),
    ("GET", "/docs"),
    ("GET", "/docs/"),
    ("GET", "/docs/docs.js"),
    ("GET", "/docs/swagger-ui-bundle.js"),
    ("GET", "/docs/swagger-ui.css"),
    ("GET", "/openapi.json"),
    ("GET", "/.well-known/ready"),
    ("GET", "/.well-known/live"),
    ("GET", "/ping"),
];

/// A finished call's name and outcome, left in the response's extensions by [`reply`] for the
/// layer's metrics.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo {
    pub service: &'static str,
    pub method: &'static str,
    /// The gRPC code name of the outcome (`OK`, `INVALID_ARGUMENT`, ...).
    pub grpc_code: &'static str,
}

/// Charges the running call `items` of its key's rate limit (in items per second; the key check
/// paid for one): a handler calls this with its request's item count once the request is parsed,
/// before any work on the items (image URLs fetched included).
/// Then the same items of its quota (one round trip to the usage store).
pub async fn charge(items: usize) -> Result<(), ApiError> {
    keys::charge_with_quota(u64::try_from(items).unwrap_or(u64::MAX))
        .await
        .map_err(ApiError::from)
}

/// Renders a handler's result (errors in `shape`; server errors logged in the call's span) and
/// names the call for the layer's metrics.
pub fn reply(
    (service, method): (&'static str, &'static str),
    shape: Shape,
    result: Result<Response, ApiError>,
) -> Response {
    let (mut response, grpc_code) = match result {
        Ok(r) => (r, "OK"),
        Err(e) => {
            let code = e.grpc_code;
            if e.status.is_server_error() {
                tracing::error!(status = e.status.as_u16(), message = %e.message, "call failed");
            }
            (e.into_shaped(shape), code)
        }
    };
    response.extensions_mut().insert(CallInfo {
        service,
        method,
        grpc_code,
    });
    response
}

/// How the layer treats a request.
enum Kind {
    /// Not an API call: passed through untouched.
    Public,
    /// An API call, named before its handler runs.
    Api {
        service: &'static str,
        method: Cow<'static, str>,
        shape: Shape,
    },
}

/// What `method` on the route `path` is ([`ROUTES`], [`PUBLIC`], or an unlisted API route named
/// by its pattern).
fn classify(method: &Method, path: Option<&str>) -> Kind {
    let Some(path) = path else {
        // No route matched (the router's fallback): nothing to key or count.
        return Kind::Public;
    };
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    if PUBLIC.iter().any(|&(m, p)| m == method && p == path) {
        return Kind::Public;
    }
    if let Some(r) = ROUTES.iter().find(|r| r.method == method && r.path == path) {
        return Kind::Api {
            service: r.service,
            method: Cow::Borrowed(r.name),
            shape: r.shape,
        };
    }
    if ROUTES.iter().any(|r| r.path == path) || PUBLIC.iter().any(|&(_, p)| p == path) {
        // A listed route asked with a method it does not serve: its 405, as before the layer.
        return Kind::Public;
    }
    // A route nobody listed: named by its pattern and a standard method (clients cannot mint
    // label values: as many names as routes times methods).
    let method = match method {
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" => method,
        _ => "OTHER",
    };
    Kind::Api {
        service: "http",
        method: Cow::Owned(format!("{method} {path}")),
        shape: Shape::OpenAi,
    }
}

/// The gRPC code name of a status, for a response that carries no [`CallInfo`].
fn code_of_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=399 => "OK",
        400 | 413 | 415 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 | 501 => "UNIMPLEMENTED",
        408 | 504 => "DEADLINE_EXCEEDED",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        503 => "UNAVAILABLE",
        400..=499 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

tokio::task_local! {
    /// The peer address of the call being handled (for per-peer shares below the layer).
    static PEER: Option<std::net::IpAddr>;
}

/// The address of the peer whose call this task is handling, if known.
pub fn current_peer() -> Option<std::net::IpAddr> {
    PEER.try_with(|p| *p).ok().flatten()
}

/// The layer (`axum::middleware::from_fn_with_state` with [`Calls`], as a `route_layer` so
/// unmatched paths and methods keep their 404 and 405): key, scopes, span, metrics, request id.
pub async fn layer(State(calls): State<Calls>, request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let (service, method, shape) = match classify(request.method(), path) {
        Kind::Public => return next.run(request).await,
        Kind::Api {
            service,
            method,
            shape,
        } => (service, method, shape),
    };
    let started = Instant::now();
    let headers = request.headers();
    let id =
        crate::telemetry::request_id(headers.get("x-request-id").and_then(|v| v.to_str().ok()));
    let span = tracing::info_span!(
        "call",
        request_id = %id,
        method = %format_args!("{service}/{method}"),
        key = tracing::field::Empty
    );
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    trace::adopt_parent(&span, header_text("traceparent"), header_text("tracestate"));
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let extensions = request.extensions();
    let peer = extensions
        .get::<PeerAddr>()
        .map(|p| p.0)
        .or_else(|| extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
    let mut retry_after = None;
    let asked = asked_priority(header_text("x-priority"));
    let admitted = match calls
        .keys
        .authenticate_from(authorization, peer.map(|p| p.ip()))
    {
        Ok(caller) => asked.map(|asked| (caller, asked)),
        Err(e) => {
            retry_after = e.retry_after();
            Err(ApiError::from(e))
        }
    };
    let (mut response, service, method, code) = match admitted {
        Ok((caller, asked)) => {
            // The key's name (never the key) on the span; what the call computes counts for
            // it, and what it charges is spent from the key's rate limit.
            let allowed = caller.as_ref().map_or(Allowed::OPEN, |c| c.priority);
            let (usage, allowance) = caller
                .map(|c| {
                    span.record("key", &*c.key_name);
                    (Usage::for_key(&calls.metrics, c.key_name), c.allowance)
                })
                .unzip();
            let work = keys::scoped(
                allowance.clone(),
                PEER.scope(
                    peer.map(|p| p.ip()),
                    priority::scoped(allowed, asked, next.run(request).instrument(span.clone())),
                ),
            );
            let response = usage::scoped(usage, work).await;
            let (service, method, code) = match response.extensions().get::<CallInfo>() {
                Some(info) => (info.service, Cow::Borrowed(info.method), info.grpc_code),
                None => (service, method, code_of_status(response.status())),
            };
            let mut response = response;
            if let Some(allowance) = &allowance {
                super::ratelimit::put(response.headers_mut(), allowance);
            }
            if code != "OK" {
                retry_after = allowance.and_then(|a| a.retry_after());
            }
            (response, service, method, code)
        }
        Err(e) => {
            let code = e.grpc_code;
            (e.into_shaped(shape), service, method, code)
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    calls
        .metrics
        .observe_call_on("http", service, &method, code, elapsed);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert("x-request-id", v);
    }
    if let Some(wait) = retry_after {
        // Whole seconds, rounded up (RFC 9110); at least 1.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    if let Ok(v) = HeaderValue::from_str(&format!("total;dur={:.3}", elapsed * 1e3)) {
        headers.insert("server-timing", v);
    }
    put_trace_context(headers, &span);
    response
}

/// The class an `x-priority` header asks for (`high`, `normal`, `low`, or vLLM's integer).
fn asked_priority(header: Option<&str>) -> Result<Option<Priority>, ApiError> {
    header
        .map(|h| {
            h.parse::<Priority>()
                .map_err(|e| ApiError::from(ServiceError::invalid(Field::Param("x-priority"), e)))
        })
        .transpose()
}

/// The call's W3C trace context on its reply (while traces are exported).
fn put_trace_context(headers: &mut HeaderMap, span: &tracing::Span) {
    for (name, value) in trace::reply_headers(span) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::{
        Router,
        body::Body,
        http::{HeaderMap, Request as HttpRequest},
        routing::get,
    };
    use tower::ServiceExt;

    use super::*;
    use crate::security::RateLimit;

    /// A route that charges the items its `x-items` header says, behind [`layer`].
    fn app(keys: ApiKeys) -> Router {
        let metrics = Metrics::new().unwrap();
        Router::new()
            .route(
                "/t",
                get(move |headers: HeaderMap| async move {
                    let items = headers
                        .get("x-items")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(1);
                    let result = async move {
                        charge(items).await?;
                        Ok(axum::response::IntoResponse::into_response("ok"))
                    };
                    reply(("T", "t"), Shape::OpenAi, result.await)
                }),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                Calls { keys, metrics },
                layer,
            ))
    }

    async fn send(app: &Router, key: &str, peer: &str, items: usize) -> Response {
        let mut request = HttpRequest::get("/t")
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

    /// A route added with no per-call code at all, behind the layers `http::router` puts on every
    /// API route: it is key-checked, counted and tagged with a request id all the same.
    #[tokio::test]
    async fn a_route_with_no_call_code_is_still_keyed_counted_and_tagged() {
        let keys = ApiKeys::load_with(Some("sk".into()), None, None).unwrap();
        let metrics = Metrics::new().unwrap();
        let routes = Router::new().route("/new/{thing}", get(|| async { "made" }));
        let app = super::super::api_layers(
            routes,
            Calls {
                keys: keys.clone(),
                metrics: metrics.clone(),
            },
            super::super::guard::Guard {
                keys,
                allowed_hosts: std::sync::Arc::from(Vec::new()),
            },
        );
        let get = |key: Option<&str>| {
            let mut request = HttpRequest::get("/new/x").header(header::HOST, "localhost");
            if let Some(key) = key {
                request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
            }
            let mut request = request.body(Body::empty()).unwrap();
            request
                .extensions_mut()
                .insert(PeerAddr("192.0.2.7:1".parse().unwrap()));
            app.clone().oneshot(request)
        };
        let refused = get(None).await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.headers().contains_key("x-request-id"));
        let served = get(Some("sk")).await.unwrap();
        assert_eq!(served.status(), StatusCode::OK);
        let id = served
            .headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert!(served.headers().contains_key("server-timing"));
        let rendered = metrics.render();
        for code in ["UNAUTHENTICATED", "OK"] {
            let series = format!(
                r#"clip_requests_total{{code="{code}",interface="http",method="GET /new/{{thing}}",service="http"}} 1"#
            );
            assert!(rendered.contains(&series), "{series} in\n{rendered}");
        }
    }

    #[test]
    fn routes_are_listed_once_and_public_routes_are_not_api_routes() {
        for (i, r) in ROUTES.iter().enumerate() {
            assert!(
                !ROUTES[..i]
                    .iter()
                    .any(|o| o.method == r.method && o.path == r.path),
                "{} {} listed twice",
                r.method,
                r.path
            );
            assert!(
                !PUBLIC.contains(&(r.method, r.path)),
                "{} {} both public and an API route",
                r.method,
                r.path
            );
        }
        assert!(matches!(
            classify(&Method::HEAD, Some("/openapi.json")),
            Kind::Public
        ));
        assert!(matches!(classify(&Method::POST, None), Kind::Public));
        // A listed route asked with another method keeps its 405.
        assert!(matches!(
            classify(&Method::PUT, Some("/v1/embeddings")),
            Kind::Public
        ));
        // An unlisted route is an API call; odd methods cannot mint label values.
        let odd = Method::from_bytes(b"FROB").unwrap();
        match classify(&odd, Some("/new")) {
            Kind::Api {
                service, method, ..
            } => {
                assert_eq!((service, &*method), ("http", "OTHER /new"));
            }
            Kind::Public => panic!("an unlisted route is an API call"),
        }
        assert!(matches!(
            classify(&Method::POST, Some("/")),
            Kind::Api {
                service: "HuggingFace",
                shape: Shape::Plain,
                ..
            }
        ));
    }
}
