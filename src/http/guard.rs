//! Browser-borne attacks on an HTTP API that needs no key (a service on a laptop or a private
//! network, reached by a browser that also visits hostile pages):
//!
//! - **DNS rebinding**: a hostile page's own name is pointed at this server, so the browser deems
//!   our answers same-origin. Such a request carries the hostile name in `Host`: a browser's
//!   request (one with `Origin` or `Sec-Fetch-*` headers) must name this server by an IP literal,
//!   `localhost`, or a name in `--allowed-hosts`.
//! - **Cross-site writes** (CSRF): a hostile page posting to us. A browser's non-GET request whose
//!   `Sec-Fetch-Site` is `cross-site`, or whose `Origin` is not this `Host`, is refused.
//!
//! With API keys required, a browser holds no key, so neither applies. Separately, and always,
//! JSON routes refuse a body declared as something else (415): a form or `text/plain` post (what a
//! page can send without a CORS preflight) never reaches a handler; a browser's request must
//! declare JSON.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::error::ApiError;
use crate::security::ApiKeys;

/// What the guard checks against.
#[derive(Clone)]
pub struct Guard {
    pub keys: ApiKeys,
    /// `--allowed-hosts` (lower case, without ports); `*` allows any.
    pub allowed_hosts: std::sync::Arc<[String]>,
}

/// Routes whose POST body is not JSON (Immich's and the Batch API's multipart uploads).
const NON_JSON_ROUTES: &[&str] = &["/predict", "/v1/files"];

fn refused(status: StatusCode, code: &'static str, message: String) -> Box<ApiError> {
    Box::new(ApiError {
        status,
        kind: "invalid_request_error",
        code,
        param: None,
        message,
        grpc_code: if status == StatusCode::FORBIDDEN {
            "PERMISSION_DENIED"
        } else {
            "INVALID_ARGUMENT"
        },
    })
}

/// The middleware: refuses what the module doc describes, passes the rest on.
pub async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    match check(
        &guard,
        request.method(),
        request.uri().path(),
        request.headers(),
    ) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

fn is_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers.contains_key("sec-fetch-site")
        || headers.contains_key("sec-fetch-mode")
}

/// The host of a `Host` header or an origin's authority, lower case, without the port.
fn host_name(authority: &str) -> String {
    let authority = authority.trim().to_ascii_lowercase();
    if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: keep the brackets' content.
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    authority
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(authority.clone(), |(host, _)| host.to_string())
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
        || host == "localhost"
        || host.ends_with(".localhost")
        || allowed.iter().any(|a| a == "*" || a == host)
}

fn check(
    guard: &Guard,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), Box<ApiError>> {
    let browser = is_browser(headers);
    let writes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !guard.keys.enabled() && browser {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let name = host_name(host);
        if !host_allowed(&name, &guard.allowed_hosts) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                format!(
                    "a browser request for Host {name:?} is refused (DNS-rebinding protection): add the name to --allowed-hosts, or require an API key"
                ),
            ));
        }
        if writes {
            let cross_site = headers
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
            let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
            let foreign_origin = origin.is_some_and(|o| {
                let authority = o.split_once("://").map_or("", |(_, a)| a);
                authority.is_empty() || host_name(authority) != name || !same_port(authority, host)
            });
            if cross_site || foreign_origin {
                return Err(refused(
                    StatusCode::FORBIDDEN,
                    "cross_site_request",
                    "a cross-site browser request is refused (require an API key to call this API from other sites)".into(),
                ));
            }
        }
    }
    if writes && !NON_JSON_ROUTES.contains(&path) {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
        let json = content_type.as_deref().is_some_and(|t| {
            let essence = t.split(';').next().unwrap_or_default().trim();
            essence == "application/json" || essence.ends_with("+json")
        });
        let refuse = match &content_type {
            Some(_) => !json,
            None => browser,
        };
        if refuse {
            return Err(refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "the body must be JSON (Content-Type: application/json), not {}",
                    content_type.as_deref().unwrap_or("undeclared")
                ),
            ));
        }
    }
    Ok(())
}

/// Whether an origin's authority and a `Host` header name the same port (defaults aside).
fn same_port(origin_authority: &str, host: &str) -> bool {
    let port = |a: &str| {
        let a = a.rsplit(']').next().unwrap_or(a);
        a.rsplit_once(':').map(|(_, p)| p.to_string())
    };
    match (port(origin_authority), port(host)) {
        (Some(a), Some(b)) => a == b,
        // One side left the default port implicit: the names already matched.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(keys: bool, allowed: &[&str]) -> Guard {
        Guard {
            keys: if keys {
                ApiKeys::load_with(Some("secret".into()), None, None).unwrap()
            } else {
                ApiKeys::load_with(None, None, None).unwrap()
            },
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn status(g: &Guard, method: Method, path: &str, h: &[(&'static str, &str)]) -> u16 {
        match check(g, &method, path, &headers(h)) {
            Ok(()) => 200,
            Err(r) => r.status.as_u16(),
        }
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn dns_rebinding_is_refused_without_a_key() {
        let g = guard(false, &["clip.internal"]);
        let get = |host: &str| {
            status(
                &g,
                Method::GET,
                "/v1/collections",
                &[("host", host), ("sec-fetch-site", "same-origin")],
            )
        };
        assert_eq!(get("attacker.example:8080"), 403);
        assert_eq!(get("127.0.0.1:8080"), 200);
        assert_eq!(get("[::1]:8080"), 200);
        assert_eq!(get("localhost:8080"), 200);
        assert_eq!(get("CLIP.internal:8080"), 200);
        // Not a browser: no Origin / Sec-Fetch headers, no check (curl, SDKs, in-cluster callers).
        assert_eq!(
            status(
                &g,
                Method::GET,
                "/v1/models",
                &[("host", "attacker.example")]
            ),
            200
        );
        // With keys the browser holds none: nothing to protect against here.
        let keyed = guard(true, &[]);
        assert_eq!(
            status(
                &keyed,
                Method::GET,
                "/",
                &[("host", "attacker.example"), ("sec-fetch-site", "none")]
            ),
            200
        );
        assert_eq!(
            status(
                &guard(false, &["*"]),
                Method::GET,
                "/",
                &[("host", "x.example"), ("sec-fetch-mode", "cors")]
            ),
            200
        );
    }

    #[test]
    fn cross_site_writes_are_refused_without_a_key() {
        let g = guard(false, &[]);
        let post = |h: &[(&'static str, &str)]| status(&g, Method::POST, "/v1/embeddings", h);
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(post(&[host, JSON, ("origin", "https://evil.example")]), 403);
        assert_eq!(post(&[host, JSON, ("origin", "null")]), 403);
        assert_eq!(
            post(&[host, JSON, ("origin", "http://127.0.0.1:9999")]),
            403,
            "another port is another origin"
        );
        assert_eq!(post(&[host, JSON, ("sec-fetch-site", "cross-site")]), 403);
        // The playground on the same origin.
        assert_eq!(
            post(&[
                host,
                JSON,
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin")
            ]),
            200
        );
    }

    #[test]
    fn json_routes_refuse_other_content_types() {
        let g = guard(true, &[]);
        let post = |path: &str, h: &[(&'static str, &str)]| status(&g, Method::POST, path, h);
        assert_eq!(
            post("/v1/embeddings", &[("content-type", "text/plain")]),
            415
        );
        assert_eq!(
            post(
                "/v1/embeddings",
                &[("content-type", "application/x-www-form-urlencoded")]
            ),
            415
        );
        assert_eq!(
            post(
                "/v1/embeddings",
                &[("content-type", "application/json; charset=utf-8")]
            ),
            200
        );
        assert_eq!(
            post(
                "/v1/embeddings",
                &[("content-type", "application/vnd.api+json")]
            ),
            200
        );
        // Undeclared: fine from a program, refused from a browser (a no-preflight blob post).
        assert_eq!(post("/v1/embeddings", &[]), 200);
        assert_eq!(
            post("/v1/embeddings", &[("sec-fetch-mode", "no-cors")]),
            415
        );
        // Immich's multipart upload is not JSON.
        assert_eq!(
            post(
                "/predict",
                &[("content-type", "multipart/form-data; boundary=x")]
            ),
            200
        );
        assert_eq!(
            status(
                &g,
                Method::GET,
                "/v1/models",
                &[("content-type", "text/plain")]
            ),
            200
        );
    }

    #[test]
    fn host_names_drop_ports_and_keep_ipv6_literals() {
        assert_eq!(host_name("Example.COM:8080"), "example.com");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("[2001:db8::1]"), "2001:db8::1");
        assert_eq!(host_name("localhost"), "localhost");
    }
}
