//! The pages for browsers, served from the binary (`assets/`, embedded at build time; no CDN):
//!
//! - `GET /`: the playground for `Accept: text/html` (zero-shot bars, collection search, an API
//!   key field); other clients get a small JSON index. `POST /` stays Hugging Face's route.
//! - `GET /docs`: Swagger UI (npm's `swagger-ui-dist`, vendored) on `/openapi.json`.
//!
//! Every page and asset carries a self-only `Content-Security-Policy` (no inline script, no other
//! origin). The pages are public, as `/healthz`: the API calls they make send the key typed in.

use axum::{
    Json, Router,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

/// Self only; images may be data/blob URIs (the dropped photo's preview, Swagger UI's icons).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

const PLAYGROUND_HTML: &str = include_str!("assets/playground.html");
const PLAYGROUND_JS: &str = include_str!("assets/playground.js");
const PLAYGROUND_CSS: &str = include_str!("assets/playground.css");
const DOCS_HTML: &str = include_str!("assets/docs.html");
const DOCS_JS: &str = include_str!("assets/docs.js");
const SWAGGER_UI_JS: &str = include_str!("assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_UI_CSS: &str = include_str!("assets/swagger-ui/swagger-ui.css");

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

pub fn routes() -> Router {
    let asset = |content_type: &'static str, body: &'static str| {
        get(move || async move { page(content_type, body, "public, max-age=3600") })
    };
    Router::new()
        .route("/", get(index))
        .route("/playground/playground.js", asset(JS, PLAYGROUND_JS))
        .route("/playground/playground.css", asset(CSS, PLAYGROUND_CSS))
        .route("/docs", get(docs))
        .route("/docs/", get(docs))
        .route("/docs/docs.js", asset(JS, DOCS_JS))
        .route("/docs/swagger-ui-bundle.js", asset(JS, SWAGGER_UI_JS))
        .route("/docs/swagger-ui.css", asset(CSS, SWAGGER_UI_CSS))
}

fn page(content_type: &'static str, body: &'static str, cache: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, cache),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Swagger UI on `/openapi.json`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "pages",
    security(()),
    responses((status = 200, description = "Swagger UI (HTML) rendering /openapi.json", body = String, content_type = "text/html"))
)]
async fn docs() -> Response {
    page(HTML, DOCS_HTML, "public, max-age=3600")
}

/// The playground for browsers (`Accept: text/html`), a JSON index for API clients.
#[utoipa::path(
    get,
    path = "/",
    tag = "pages",
    security(()),
    responses(
        (status = 200, description = "The playground page for browsers (Accept prefers text/html), \
            otherwise a JSON index of the service's documents", content(
            (String = "text/html"),
            (serde_json::Value = "application/json"),
        )),
    )
)]
async fn index(headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut response = if prefers_html(accept) {
        page(HTML, PLAYGROUND_HTML, "no-cache")
    } else {
        Json(json!({
            "name": "clip-serve",
            "version": env!("CARGO_PKG_VERSION"),
            "docs": "/docs",
            "openapi": "/openapi.json",
            "playground": "GET / with Accept: text/html",
        }))
        .into_response()
    };
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// Whether an `Accept` header ranks HTML above JSON (a browser's does; `*/*` and JSON do not).
pub fn prefers_html(accept: &str) -> bool {
    let (mut html, mut json) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(q),
            "application/json" => json = json.max(q),
            _ => {}
        }
    }
    html > 0.0 && html >= json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_html_and_api_clients_json() {
        let chrome =
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";
        assert!(prefers_html(chrome));
        assert!(prefers_html("text/html"));
        for accept in [
            "",
            "*/*",
            "application/json",
            "application/json, text/html;q=0.5",
            "text/html;q=0",
        ] {
            assert!(!prefers_html(accept), "{accept}");
        }
    }

    #[test]
    fn the_pages_are_self_contained() {
        for html in [PLAYGROUND_HTML, DOCS_HTML] {
            assert!(!html.contains("http://") && !html.contains("https://"));
            assert!(!html.contains("<script>"), "no inline script under the CSP");
        }
        assert!(SWAGGER_UI_JS.contains("SwaggerUIBundle"));
    }
}
