//! What every gRPC call goes through, as one tower layer on the server ([`CallLayer`]), so a
//! service or method cannot forget any of it: the request id (the client's own `x-request-id`, or
//! one generated here) on the reply, success or failure; the API key check (see `auth.rs`: no or
//! wrong key -> UNAUTHENTICATED, rate limit spent -> RESOURCE_EXHAUSTED with `RetryInfo`; failed
//! checks throttled per peer address) with the call run in the key's usage and rate-limit
//! scopes; a `call{request_id, method, key}` span around the handler; and the call counted once
//! by code (`interface="grpc"`), when its status is known: from the headers of a trailers-only
//! reply (unary errors, refusals) or from the trailers at the end of the body (successes,
//! streams), CANCELLED when the client goes away first.
//!
//! Health checks pass through untouched; reflection is keyed unless `--public-reflection`. The
//! `service`/`method` labels come from the served protos (`Embed`/`EmbedTexts`), `unknown` for a
//! path no proto declares, so clients cannot mint label values. Handlers find the request id and
//! the span in the request's extensions ([`Call`]) and run inside the span
//! (`tracing::Span::current()`).

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use tonic::{
    Code, Status,
    body::Body,
    codegen::http::{self, HeaderMap, HeaderValue},
    metadata::{MetadataMap, MetadataValue},
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tracing::{Instrument, Span};

use super::status::code_name;
use crate::{
    batch::priority::{self, Allowed, Priority},
    common::{Field, ServiceError},
    embed::Timings,
    security::{ApiKeys, keys},
    telemetry::{
        metrics::Metrics,
        usage::{self, Usage},
    },
};

pub const REQUEST_ID: &str = "x-request-id";
/// Per-response timings, in the HTTP Server-Timing syntax: `preprocess;dur=2.1, queue;dur=0.3, ...`
/// (milliseconds).
pub const SERVER_TIMING: &str = "server-timing";

/// The health service: never keyed, never counted (probes call it all the time).
const HEALTH: &str = "grpc.health.v1.Health";
/// The reflection services (keyed unless `--public-reflection`).
const REFLECTION: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A call's id and span: a request extension the layer inserts (tonic hands it to the handler).
#[derive(Debug, Clone)]
pub struct Call {
    pub request_id: Arc<str>,
    pub span: Span,
}

/// The services and methods the protos declare, by full service name: (label, methods).
type Known = HashMap<String, (String, HashSet<String>)>;

fn known_methods() -> Known {
    use prost::Message;
    let mut known = Known::new();
    for set in [
        super::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                let full = if package.is_empty() {
                    name.clone()
                } else {
                    format!("{package}.{name}")
                };
                let methods = service.method.into_iter().filter_map(|m| m.name).collect();
                known.insert(full, (name, methods));
            }
        }
    }
    known
}

/// The per-call layer of the gRPC server (see the module's documentation).
#[derive(Clone)]
pub struct CallLayer {
    keys: ApiKeys,
    metrics: Metrics,
    public_reflection: bool,
    known: Arc<Known>,
}

impl CallLayer {
    pub fn new(keys: ApiKeys, metrics: Metrics, public_reflection: bool) -> Self {
        CallLayer {
            keys,
            metrics,
            public_reflection,
            known: Arc::new(known_methods()),
        }
    }
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = Calls<S>;
    fn layer(&self, inner: S) -> Calls<S> {
        Calls {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service behind [`CallLayer`].
#[derive(Clone)]
pub struct Calls<S> {
    inner: S,
    layer: CallLayer,
}

/// Counts a call once, when its outcome is known; a call dropped before that (the client went
/// away, or its deadline passed in tonic) counts as CANCELLED.
struct Recorder {
    metrics: Metrics,
    service: String,
    method: String,
    started: Instant,
    span: Span,
    recorded: bool,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(Code::Cancelled, "the client went away before the reply");
        }
    }
}

impl Recorder {
    fn record(&mut self, code: Code, message: &str) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics
            .observe_call(&self.service, &self.method, code_name(code), seconds);
        let _span = self.span.enter();
        let ms = seconds * 1e3;
        match code {
            Code::Ok => tracing::debug!(ms, "call finished"),
            Code::Internal | Code::Unknown | Code::DataLoss => {
                tracing::error!(code = code_name(code), ms, message, "call failed")
            }
            _ => tracing::debug!(code = code_name(code), ms, message, "call refused"),
        }
    }

    /// Records the status a header map carries (`grpc-status`, `grpc-message`), if it does.
    fn record_from(&mut self, headers: &HeaderMap) -> bool {
        let Some(status) = headers.get("grpc-status") else {
            return false;
        };
        let message = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or("");
        self.record(Code::from_bytes(status.as_bytes()), message);
        true
    }
}

/// A reply body that counts its call when its trailers pass (or when it is dropped before).
struct Counted {
    inner: Body,
    recorder: Recorder,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.recorder.record_from(trailers);
                }
            }
            Poll::Ready(Some(Err(status))) => this.recorder.record(status.code(), status.message()),
            Poll::Ready(None) => this
                .recorder
                .record(Code::Unknown, "the reply ended without a status"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The call's request id and (while traces are exported) its W3C trace context on the reply.
fn tag(headers: &mut HeaderMap, request_id: &str, span: &tracing::Span) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    for (name, value) in crate::telemetry::trace::reply_headers(span) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Calls<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or(("", ""));
        if service == HEALTH {
            return Box::pin(inner.call(request));
        }
        let keyed = !(self.layer.public_reflection && REFLECTION.contains(&service));
        let (service, method) = match self.layer.known.get(service) {
            Some((label, methods)) if methods.contains(method) => {
                (label.clone(), method.to_owned())
            }
            Some((label, _)) => (label.clone(), "unknown".to_owned()),
            None => ("unknown".to_owned(), "unknown".to_owned()),
        };
        let request_id: Arc<str> = crate::telemetry::request_id(
            request
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok()),
        )
        .into();
        let span = tracing::info_span!(
            "call",
            request_id = %request_id,
            method = %format_args!("{service}/{method}"),
            key = tracing::field::Empty
        );
        let header_text = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        crate::telemetry::trace::adopt_parent(
            &span,
            header_text("traceparent"),
            header_text("tracestate"),
        );
        let mut recorder = Recorder {
            metrics: self.layer.metrics.clone(),
            service,
            method,
            started: Instant::now(),
            span: span.clone(),
            recorded: false,
        };
        let asked = match request
            .headers()
            .get("x-priority")
            .map(|v| v.to_str().unwrap_or("(not text)").parse::<Priority>())
            .transpose()
        {
            Ok(asked) => asked,
            Err(e) => {
                let refusal = Status::from(ServiceError::invalid(Field::Param("x-priority"), e));
                let mut response: http::Response<Body> = refusal.into_http();
                tag(response.headers_mut(), &request_id, &span);
                recorder.record_from(response.headers());
                return Box::pin(async move { Ok(response) });
            }
        };
        let mut allowed = Allowed::OPEN;
        let (usage, allowance) = if keyed {
            let presented = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let extensions = request.extensions();
            let peer = extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .or_else(|| {
                    extensions
                        .get::<TlsConnectInfo<TcpConnectInfo>>()
                        .and_then(|tls| tls.get_ref().remote_addr())
                })
                .map(|a| a.ip());
            match self.layer.keys.authenticate_from(presented, peer) {
                Err(e) => {
                    let mut response: http::Response<Body> = super::auth::refusal(e).into_http();
                    tag(response.headers_mut(), &request_id, &span);
                    recorder.record_from(response.headers());
                    return Box::pin(async move { Ok(response) });
                }
                Ok(caller) => caller
                    .map(|c| {
                        allowed = c.priority;
                        // The key's name (never the key) on the span.
                        span.record("key", &*c.key_name);
                        (Usage::for_key(&self.layer.metrics, c.key_name), c.allowance)
                    })
                    .unzip(),
            }
        } else {
            (None, None)
        };
        request.extensions_mut().insert(Call {
            request_id: Arc::clone(&request_id),
            span: span.clone(),
        });
        let work = {
            let _entered = span.enter();
            inner.call(request)
        };
        let reply_span = span.clone();
        let work = priority::scoped(allowed, asked, work);
        let work = usage::scoped(usage, keys::scoped(allowance, work)).instrument(span);
        Box::pin(async move {
            let mut response = work.await?;
            tag(response.headers_mut(), &request_id, &reply_span);
            if recorder.record_from(response.headers()) {
                // Trailers-only: the status is in the headers, the body is empty.
                return Ok(response);
            }
            if http_body::Body::is_end_stream(response.body()) {
                recorder.record(Code::Unknown, "the reply carries no status");
                return Ok(response);
            }
            Ok(response.map(|inner| Body::new(Counted { inner, recorder })))
        })
    }
}

/// Holds a unary request's payload against `--max-inflight-bytes` for the call's life, or
/// RESOURCE_EXHAUSTED.
pub fn hold_payload<T: prost::Message>(
    embed: &crate::embed::EmbedService,
    request: &tonic::Request<T>,
) -> Result<crate::admission::bytes::BytesPermit, crate::common::ServiceError> {
    embed
        .gate()
        .bytes()
        .try_take(request.get_ref().encoded_len() as u64)
}

/// `server-timing` metadata for a reply.
pub fn add_timings(metadata: &mut MetadataMap, timings: &Timings) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let value = format!(
        "preprocess;dur={:.3}, queue;dur={:.3}, inference;dur={:.3}",
        ms(timings.preprocess),
        ms(timings.queue),
        ms(timings.inference)
    );
    if let Ok(value) = MetadataValue::try_from(value.as_str()) {
        metadata.insert(SERVER_TIMING, value);
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::grpc::pb::{self, info_server::InfoServer};

    fn metrics() -> Metrics {
        Metrics::new().expect("metrics")
    }

    /// A service with no per-call code at all: it answers, or fails with INVALID_ARGUMENT.
    struct Bare {
        fail: bool,
    }

    #[tonic::async_trait]
    impl pb::info_server::Info for Bare {
        async fn get_info(
            &self,
            _request: tonic::Request<pb::GetInfoRequest>,
        ) -> Result<tonic::Response<pb::GetInfoResponse>, tonic::Status> {
            if self.fail {
                return Err(tonic::Status::invalid_argument("images[0]: empty"));
            }
            Ok(tonic::Response::new(pb::GetInfoResponse::default()))
        }
    }

    /// A unary call of `path` (an empty message) with `headers`, through the layer.
    async fn call(
        layer: &CallLayer,
        fail: bool,
        path: &str,
        headers: &[(&str, &str)],
    ) -> http::Response<Body> {
        let service = layer.layer(InfoServer::new(Bare { fail }));
        let mut request = http::Request::post(path).header("content-type", "application/grpc");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        // One empty message: uncompressed, length 0.
        let body = Body::new(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])));
        service.oneshot(request.body(body).unwrap()).await.unwrap()
    }

    fn request_id(response: &http::Response<Body>) -> &str {
        response.headers()[REQUEST_ID].to_str().unwrap()
    }

    fn counted(m: &Metrics, code: &str, service: &str, method: &str) -> bool {
        m.render().contains(&format!(
            r#"clip_requests_total{{code="{code}",interface="grpc",method="{method}",service="{service}"}} 1"#
        ))
    }

    #[tokio::test]
    async fn a_client_request_id_is_kept_and_a_bad_one_replaced() {
        let layer = CallLayer::new(ApiKeys::disabled(), metrics(), false);
        let path = "/clip.v1.Info/GetInfo";
        let r = call(&layer, false, path, &[(REQUEST_ID, "abc-123")]).await;
        assert_eq!(request_id(&r), "abc-123");

        let r = call(&layer, false, path, &[(REQUEST_ID, "has space")]).await;
        assert_ne!(request_id(&r), "has space");
        assert_eq!(request_id(&r).len(), 36, "a UUID: {}", request_id(&r));

        let long = "x".repeat(crate::telemetry::MAX_REQUEST_ID_LEN + 1);
        let r = call(&layer, false, path, &[(REQUEST_ID, &long)]).await;
        assert_ne!(request_id(&r), long);
    }

    #[tokio::test]
    async fn errors_are_counted_by_code_and_tagged_too() {
        let m = metrics();
        let layer = CallLayer::new(ApiKeys::disabled(), m.clone(), false);
        let r = call(&layer, true, "/clip.v1.Info/GetInfo", &[]).await;
        assert_eq!(r.headers()["grpc-status"], "3");
        assert_eq!(request_id(&r).len(), 36);
        assert!(counted(&m, "INVALID_ARGUMENT", "Info", "GetInfo"));
    }

    /// A service added with no per-call code is key-checked, counted once by code when its
    /// status passes, and tagged with a request id; health passes untouched, and a method no
    /// proto declares cannot mint a label.
    #[tokio::test]
    async fn a_service_with_no_call_code_is_still_keyed_counted_and_tagged() {
        let m = metrics();
        let keys = ApiKeys::load_with(Some("sk".into()), None, None).unwrap();
        let layer = CallLayer::new(keys, m.clone(), false);
        let path = "/clip.v1.Info/GetInfo";

        let refused = call(&layer, false, path, &[]).await;
        assert_eq!(refused.headers()["grpc-status"], "16", "UNAUTHENTICATED");
        assert_eq!(request_id(&refused).len(), 36);
        assert!(counted(&m, "UNAUTHENTICATED", "Info", "GetInfo"));

        let key = ("authorization", "Bearer sk");
        let served = call(&layer, false, path, &[key]).await;
        assert!(served.headers().get("grpc-status").is_none());
        assert_eq!(request_id(&served).len(), 36);
        assert!(
            !m.render().contains(r#"code="OK""#),
            "counted when its status passes, not before"
        );
        let trailers = served
            .into_body()
            .collect()
            .await
            .unwrap()
            .trailers()
            .cloned()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(counted(&m, "OK", "Info", "GetInfo"));

        // A reply dropped before its trailers (the client went away) counts as CANCELLED.
        drop(call(&layer, false, path, &[key]).await);
        assert!(counted(&m, "CANCELLED", "Info", "GetInfo"));

        let unknown = call(&layer, false, "/clip.v1.Info/MadeUp", &[key]).await;
        assert_eq!(unknown.headers()["grpc-status"], "12", "UNIMPLEMENTED");
        assert!(counted(&m, "UNIMPLEMENTED", "Info", "unknown"));

        let before = m.render();
        let health = call(&layer, false, "/grpc.health.v1.Health/Check", &[]).await;
        assert!(health.headers().get(REQUEST_ID).is_none());
        assert_eq!(m.render(), before, "health checks are not counted");
    }

    #[test]
    fn the_protos_name_the_labels() {
        let known = known_methods();
        let (label, methods) = &known["clip.v1.Embed"];
        assert_eq!(label, "Embed");
        assert!(methods.contains("EmbedStream"));
        assert!(known.contains_key(REFLECTION[0]) && known.contains_key(REFLECTION[1]));
    }

    #[test]
    fn timings_render_as_server_timing() {
        let mut md = MetadataMap::new();
        add_timings(
            &mut md,
            &Timings {
                preprocess: std::time::Duration::from_micros(2500),
                queue: std::time::Duration::ZERO,
                inference: std::time::Duration::from_millis(31),
            },
        );
        assert_eq!(
            md.get(SERVER_TIMING).unwrap().to_str().unwrap(),
            "preprocess;dur=2.500, queue;dur=0.000, inference;dur=31.000"
        );
    }
}
