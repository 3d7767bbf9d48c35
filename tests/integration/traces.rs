//! OpenTelemetry: a real server process exports its spans to a test OTLP receiver (gRPC and
//! HTTP/protobuf). A call that carries a W3C `traceparent` gets a span tree under the client's span
//! (call -> admission -> preprocess -> queue; store for collection work), the batch's `inference`
//! span links to the queue span of the request it computed, and the reply carries the trace
//! context back, on both doors.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clip_serve::grpc::pb::{self, embed_client::EmbedClient};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};
use prost::Message;
use serde_json::json;

use crate::{common::*, signals::spawn_server_in};

type Spans = Arc<Mutex<Vec<Span>>>;

fn collect(spans: &Spans, request: ExportTraceServiceRequest) {
    let mut all = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{v:?}"));
        assert!(
            service.as_deref().is_some_and(|s| s.contains("clip-serve")),
            "service.name is {service:?}"
        );
        for scope in resource.scope_spans {
            all.extend(scope.spans);
        }
    }
}

struct GrpcReceiver(Spans);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP receiver on 127.0.0.1: its URL and what it received.
async fn receiver(grpc: bool) -> (String, Spans) {
    let spans = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    if grpc {
        let service = TraceServiceServer::new(GrpcReceiver(Arc::clone(&spans)));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
    } else {
        let sink = Arc::clone(&spans);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP request");
                collect(&sink, request);
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    (format!("http://{addr}"), spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of `trace`, waiting until one named `last` has arrived.
async fn trace_spans(spans: &Spans, trace: &str, last: &str) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == trace)
            .cloned()
            .collect();
        if got.iter().any(|s| s.name == last) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "no `{last}` span for trace {trace}; got {:?}",
            got.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no `{name}` span in {:?}", names(spans)))
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

/// Whether `child` descends from `ancestor` within `spans`.
fn descends(spans: &[Span], child: &Span, ancestor: &Span) -> bool {
    let mut at = child;
    for _ in 0..32 {
        if at.parent_span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == at.parent_span_id) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    false
}

/// The reply's traceparent continues the client's trace with a span of the server's.
fn check_reply_context(traceparent: Option<&str>, trace: &str, client_span: &str) -> String {
    let parts: Vec<&str> = traceparent
        .expect("the reply carries a traceparent")
        .split('-')
        .collect();
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], trace, "the reply continues the client's trace");
    assert_ne!(parts[2], client_span, "the reply names the server's span");
    assert_eq!(parts[3], "01", "sampled, as the client asked");
    parts[2].to_owned()
}

async fn exports_the_span_tree(protocol: &str) {
    let (url, spans) = receiver(protocol == "grpc").await;
    let data = fresh_data_dir();
    let mut server = spawn_server_in(
        &data,
        &["--otlp-endpoint", &url, "--otlp-protocol", protocol],
    );
    server.wait_for_log("SERVING");
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.http);

    let models: serde_json::Value = http
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let model = models["data"][0]["id"].as_str().unwrap().to_owned();

    // HTTP: an embedding call under the client's span.
    let (trace_a, client_a) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let reply = http
        .post(format!("{base}/v1/embeddings"))
        .header("traceparent", format!("00-{trace_a}-{client_a}-01"))
        .header("tracestate", "vendor=opaque")
        .header("content-type", "application/json")
        .body(json!({"input": ["a photo of a cat"], "model": model}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let header = |name: &str| {
        reply
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let call_a = check_reply_context(header("traceparent").as_deref(), trace_a, client_a);
    assert_eq!(header("tracestate").as_deref(), Some("vendor=opaque"));

    // gRPC: the same through metadata.
    let (trace_b, client_b) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let mut embed = EmbedClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let mut request = tonic::Request::new(pb::EmbedTextsRequest {
        texts: vec!["a photo of a dog".into()],
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_b}-{client_b}-01").parse().unwrap(),
    );
    let reply = embed.embed_texts(request).await.unwrap();
    let call_b = check_reply_context(
        reply
            .metadata()
            .get("traceparent")
            .map(|v| v.to_str().unwrap()),
        trace_b,
        client_b,
    );

    // Collection work: the store's span under the call.
    let (trace_c, client_c) = ("1f0e2d3c4b5a69788796a5b4c3d2e1f0", "0123456789abcdef");
    let made = http
        .post(format!("{base}/v1/collections"))
        .header("content-type", "application/json")
        .body(json!({"name": "traced"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let upserted = http
        .post(format!("{base}/v1/collections/traced/items"))
        .header("traceparent", format!("00-{trace_c}-{client_c}-01"))
        .header("content-type", "application/json")
        .body(json!({"items": [{"id": "a", "text": "a red car"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(upserted.status(), 200);

    // Without a traceparent the server starts a trace of its own, and says which.
    let own = http.get(format!("{base}/v1/models")).send().await.unwrap();
    let own = own
        .headers()
        .get("traceparent")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(own.is_some_and(|t| t.starts_with("00-") && t.len() == 55));

    // SIGTERM flushes the spans still queued.
    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).success());

    for (trace, client, call_id) in [(trace_a, client_a, &call_a), (trace_b, client_b, &call_b)] {
        let tree = trace_spans(&spans, trace, "call").await;
        let call = named(&tree, "call");
        assert_eq!(
            hex(&call.parent_span_id),
            client,
            "the call's parent is the client's span"
        );
        assert_eq!(
            &hex(&call.span_id),
            call_id,
            "the reply names the call span"
        );
        for name in ["admission", "preprocess", "queue"] {
            assert!(
                descends(&tree, named(&tree, name), call),
                "`{name}` is not under the call: {:?}",
                names(&tree)
            );
        }
        // The batch that computed the request's rows: a trace of its own, linked to the queue.
        let queue = named(&tree, "queue");
        let all = spans.lock().unwrap().clone();
        let inference = all
            .iter()
            .find(|s| {
                s.name == "inference"
                    && s.links
                        .iter()
                        .any(|l| l.trace_id == queue.trace_id && l.span_id == queue.span_id)
            })
            .unwrap_or_else(|| panic!("no inference span links to the queue span of {trace}"));
        assert_ne!(
            hex(&inference.trace_id),
            trace,
            "a batch is a trace of its own"
        );
    }
    let tree = trace_spans(&spans, trace_c, "call").await;
    let store = tree
        .iter()
        .find(|s| s.name == "store")
        .unwrap_or_else(|| panic!("no store span in {:?}", names(&tree)));
    assert!(descends(&tree, store, named(&tree, "call")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_an_otlp_grpc_receiver_under_the_clients_trace() {
    exports_the_span_tree("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_an_otlp_http_receiver_under_the_clients_trace() {
    exports_the_span_tree("http").await;
}

#[tokio::test]
async fn no_trace_context_is_returned_while_export_is_off() {
    let server = serve(config(&tiny_model())).await;
    let reply = reqwest::Client::new()
        .get(format!("http://{}/v1/models", server.server.http_addr))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert!(reply.headers().get("traceparent").is_none());
}
