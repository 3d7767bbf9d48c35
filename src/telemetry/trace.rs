//! OpenTelemetry traces (`--otlp-endpoint`): the service's `tracing` spans exported over OTLP (gRPC
//! or HTTP/protobuf), and the W3C trace context (`traceparent`, `tracestate`) taken from a call and
//! returned on its reply, on both doors.
//!
//! The span tree of a call: `call` (the door's span, a child of the client's `traceparent` when it
//! sent one) -> `admission` -> `preprocess` -> `queue` (the rows waiting for, and in, the batcher);
//! the batcher's `inference` span is the root of its own trace, linked to the `queue` span of every
//! request whose rows it computed; `store` for the vector store's work. See docs/ARCHITECTURE.md.
//!
//! Off by default, and then free: no exporter, no layer, and the spans below the door (debug level)
//! are disabled at their call sites. Exports run on a runtime of their own (one thread), so a slow
//! or absent collector never touches the request path: the batch processor's queue is bounded
//! (`--otlp-max-queued-spans`) and drops spans when full.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether spans are exported (set once, at start-up).
static ON: AtomicBool = AtomicBool::new(false);

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (a collector's port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (a collector's port 4318; `/v1/traces` is appended to
    /// an endpoint without a path).
    Http,
}

/// The trace export flags.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TraceArgs {
    /// Export OpenTelemetry traces to this OTLP endpoint, e.g. http://otel-collector:4317 (off when
    /// unset). The client's W3C `traceparent` is honoured on both doors and returned on replies.
    #[arg(long, env = "CLIP_SERVE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The OTLP transport: grpc or http (HTTP/protobuf).
    #[arg(
        long,
        env = "CLIP_SERVE_OTLP_PROTOCOL",
        value_enum,
        default_value = "grpc",
        requires = "otlp_endpoint"
    )]
    pub otlp_protocol: OtlpProtocol,
    /// Fraction of the traces that start here that are sampled (0 to 1). A client's traceparent
    /// decides for its own trace.
    #[arg(
        long,
        env = "CLIP_SERVE_OTLP_SAMPLE_RATIO",
        default_value_t = 1.0,
        value_parser = parse_ratio,
        requires = "otlp_endpoint"
    )]
    pub otlp_sample_ratio: f64,
    /// Finished spans waiting for export at most; when the collector falls behind, newer spans
    /// are dropped.
    #[arg(
        long,
        env = "CLIP_SERVE_OTLP_MAX_QUEUED_SPANS",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
        requires = "otlp_endpoint"
    )]
    pub otlp_max_queued_spans: u32,
}

impl Default for TraceArgs {
    fn default() -> Self {
        TraceArgs {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            otlp_sample_ratio: 1.0,
            otlp_max_queued_spans: 4096,
        }
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let ratio: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{ratio} is not between 0 and 1"))
    }
}

/// Keeps the exporter alive; dropping it flushes the spans still queued (within the exporter's
/// timeout) and stops the export thread.
#[derive(Default)]
pub struct TraceGuard {
    provider: Option<SdkTracerProvider>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            ON.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                eprintln!("clip-serve: flushing the trace exporter: {e}");
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The tracer provider for `args`, or `None` when export is off. The guard owns what must outlive
/// the server (the provider and the export runtime).
pub(super) fn provider(
    args: &TraceArgs,
) -> Result<(Option<SdkTracerProvider>, TraceGuard), String> {
    let Some(endpoint) = args.otlp_endpoint.as_deref() else {
        return Ok((None, TraceGuard::default()));
    };
    let url: reqwest::Url = endpoint
        .parse()
        .map_err(|e| format!("--otlp-endpoint {endpoint:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "--otlp-endpoint {endpoint:?}: the scheme must be http or https"
        ));
    }
    // Exports run here: the OTLP clients need a reactor, and the batch processor calls them from
    // a thread of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the trace export runtime: {e}"))?;
    let exporter = {
        let _entered = runtime.enter();
        match args.otlp_protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(10))
                .build(),
            OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(http_traces_url(&url))
                .with_timeout(Duration::from_secs(10))
                .build(),
        }
        .map_err(|e| format!("--otlp-endpoint {endpoint:?}: {e}"))?
    };
    let exporter = OnRuntime {
        inner: exporter,
        handle: runtime.handle().clone(),
    };
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(args.otlp_max_queued_spans as usize)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            args.otlp_sample_ratio,
        ))))
        .with_resource(
            Resource::builder_empty()
                .with_service_name("clip-serve")
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build();
    ON.store(true, Ordering::Relaxed);
    Ok((
        Some(provider.clone()),
        TraceGuard {
            provider: Some(provider),
            runtime: Some(runtime),
        },
    ))
}

/// The tracer the `tracing` layer exports through.
pub(super) fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("clip-serve")
}

/// OTLP/HTTP's traces URL: an endpoint without a path gets `/v1/traces` (as the OTLP exporter
/// specification says for a base endpoint); one with a path is used as given.
fn http_traces_url(url: &reqwest::Url) -> String {
    if url.path() == "/" || url.path().is_empty() {
        let mut url = url.clone();
        url.set_path("/v1/traces");
        url.to_string()
    } else {
        url.to_string()
    }
}

/// Whether traces are exported.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Makes `span` (a door's call span) a child of the caller's trace, from its `traceparent` and
/// `tracestate` headers. A malformed or absent traceparent starts a new trace (as the W3C
/// specification says). Nothing happens while export is off.
pub fn adopt_parent(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if !enabled() {
        return;
    }
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = Carrier {
        traceparent: Some(traceparent),
        tracestate,
    };
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // Fails only when the span was already started, which a door's new span is not.
        let _ = span.set_parent(parent);
    }
}

/// The reply headers that carry `span`'s trace context, `traceparent` (and `tracestate` when there
/// is one), as (name, value); none while export is off. Both doors insert them as they are.
pub fn reply_headers(span: &tracing::Span) -> Vec<(&'static str, String)> {
    if !enabled() {
        return Vec::new();
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut out = Injected::default();
    TraceContextPropagator::new().inject_context(&context, &mut out);
    let Some(parent) = out.traceparent else {
        return Vec::new();
    };
    let mut headers = vec![("traceparent", parent)];
    headers.extend(out.tracestate.map(|state| ("tracestate", state)));
    headers
}

struct Carrier<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[derive(Default)]
struct Injected {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Injected {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// An exporter whose exports run in the export runtime's context (the OTLP clients' sockets and
/// timers register with its reactor, which its own thread drives).
#[derive(Debug)]
struct OnRuntime {
    inner: opentelemetry_otlp::SpanExporter,
    handle: tokio::runtime::Handle,
}

impl opentelemetry_sdk::trace::SpanExporter for OnRuntime {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        Entered {
            handle: self.handle.clone(),
            inner: Box::pin(self.inner.export(batch)),
        }
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        let _entered = self.handle.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        let _entered = self.handle.enter();
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// `inner`, polled inside `handle`'s runtime context.
struct Entered<F> {
    handle: tokio::runtime::Handle,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Entered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _entered = this.handle.enter();
        this.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_a_fraction() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_ratio("1.5").unwrap_err().contains("between 0 and 1"));
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("half").unwrap_err().contains("not a number"));
    }

    #[test]
    fn an_http_endpoint_without_a_path_gets_the_traces_path() {
        let url = |s: &str| http_traces_url(&s.parse().unwrap());
        assert_eq!(
            url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/custom/traces"),
            "http://collector:4318/custom/traces"
        );
    }

    #[test]
    fn a_bad_endpoint_is_refused_by_name() {
        let args = |e: &str| TraceArgs {
            otlp_endpoint: Some(e.to_owned()),
            ..TraceArgs::default()
        };
        let err = provider(&args("collector:4317")).err().unwrap();
        assert!(err.contains("--otlp-endpoint"), "{err}");
        let err = provider(&args("ftp://collector:4317")).err().unwrap();
        assert!(err.contains("http or https"), "{err}");
        assert!(provider(&TraceArgs::default()).unwrap().0.is_none());
    }

    #[test]
    fn contexts_are_neither_read_nor_written_while_export_is_off() {
        let span = tracing::info_span!("call");
        adopt_parent(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None,
        );
        assert!(reply_headers(&span).is_empty());
    }
}
