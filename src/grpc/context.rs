//! Per-call context: the request id, the call's `tracing` span, and its metrics. Every handler
//! begins one and finishes it with its result, so each call is counted once by code and answers
//! with `x-request-id` (the client's own, or one generated here), success or failure.

use std::time::Instant;

use tonic::{
    Code, Response, Status,
    metadata::{MetadataMap, MetadataValue},
};
use tracing::Span;

use super::status::code_name;
use crate::{embed::Timings, telemetry::metrics::Metrics};

pub const REQUEST_ID: &str = "x-request-id";
/// Per-response timings, in the HTTP Server-Timing syntax: `preprocess;dur=2.1, queue;dur=0.3, ...`
/// (milliseconds).
pub const SERVER_TIMING: &str = "server-timing";

pub struct CallContext {
    service: &'static str,
    method: &'static str,
    request_id: String,
    started: Instant,
    span: Span,
    metrics: Metrics,
    recorded: bool,
}

impl Drop for CallContext {
    /// A call dropped before it finished: the client went away (or its deadline passed in tonic).
    fn drop(&mut self) {
        if !self.recorded {
            self.record(Code::Cancelled, "the client went away before the reply");
        }
    }
}

impl CallContext {
    pub fn begin(
        metrics: &Metrics,
        service: &'static str,
        method: &'static str,
        metadata: &MetadataMap,
    ) -> Self {
        let request_id =
            crate::telemetry::request_id(metadata.get(REQUEST_ID).and_then(|v| v.to_str().ok()));
        let span = tracing::info_span!(
            "call",
            request_id = %request_id,
            method = %format_args!("{service}/{method}"),
            key = tracing::field::Empty
        );
        // The caller's key name, from the usage scope `grpc/auth.rs` runs the call in.
        if let Some(usage) = crate::telemetry::usage::current() {
            span.record("key", usage.key());
        }
        CallContext {
            service,
            method,
            request_id,
            started: Instant::now(),
            span,
            metrics: metrics.clone(),
            recorded: false,
        }
    }

    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Counts a unary call and tags its reply (or error) with the request id.
    pub fn finish<T>(mut self, result: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        match result {
            Ok(mut response) => {
                self.record(Code::Ok, "");
                self.tag(response.metadata_mut());
                Ok(response)
            }
            Err(mut status) => {
                self.record(status.code(), status.message());
                self.tag(status.metadata_mut());
                Err(status)
            }
        }
    }

    /// Tags a reply with the request id (for streams, whose result comes later).
    pub fn tag(&self, metadata: &mut MetadataMap) {
        if let Ok(value) = MetadataValue::try_from(self.request_id.as_str()) {
            metadata.insert(REQUEST_ID, value);
        }
    }

    /// Counts a call once its outcome is known (once; later calls do nothing).
    pub fn record(&mut self, code: Code, message: &str) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics
            .observe_call(self.service, self.method, code_name(code), seconds);
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
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new().expect("metrics")
    }

    #[test]
    fn a_client_request_id_is_kept_and_a_bad_one_replaced() {
        let mut md = MetadataMap::new();
        md.insert(REQUEST_ID, MetadataValue::from_static("abc-123"));
        let ctx = CallContext::begin(&metrics(), "Embed", "EmbedTexts", &md);
        assert_eq!(ctx.request_id, "abc-123");

        let mut md = MetadataMap::new();
        md.insert(REQUEST_ID, MetadataValue::from_static("has space"));
        let ctx = CallContext::begin(&metrics(), "Embed", "EmbedTexts", &md);
        assert_ne!(ctx.request_id, "has space");
        assert_eq!(ctx.request_id.len(), 36, "a UUID: {}", ctx.request_id);

        let long = "x".repeat(crate::telemetry::MAX_REQUEST_ID_LEN + 1);
        let mut md = MetadataMap::new();
        md.insert(REQUEST_ID, MetadataValue::try_from(long.as_str()).unwrap());
        let ctx = CallContext::begin(&metrics(), "Embed", "EmbedTexts", &md);
        assert_ne!(ctx.request_id, long);
    }

    #[test]
    fn finish_counts_by_code_and_tags_errors_too() {
        let m = metrics();
        let ctx = CallContext::begin(&m, "Embed", "EmbedImages", &MetadataMap::new());
        let id = ctx.request_id.clone();
        let status = ctx
            .finish::<()>(Err(Status::invalid_argument("images[0]: empty")))
            .unwrap_err();
        assert_eq!(
            status.metadata().get(REQUEST_ID).unwrap().to_str().unwrap(),
            id
        );
        assert!(m.render().contains(
            r#"clip_requests_total{code="INVALID_ARGUMENT",interface="grpc",method="EmbedImages",service="Embed"} 1"#
        ));
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
