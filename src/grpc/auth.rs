//! API keys on the gRPC door: a wrapper around each API service that checks the caller's key
//! (and its rate limit) before the call, and runs the call in that key's usage scope
//! (`telemetry::usage`), so what the domain computes is counted for the key and the call's span
//! carries the key's name. Health (and reflection with `--public-reflection`) are not wrapped.
//!
//! Refusals: no or wrong key -> UNAUTHENTICATED; the key's rate limit spent -> RESOURCE_EXHAUSTED
//! with a `google.rpc.RetryInfo` detail saying when to retry. The peer's address (tonic's
//! `TcpConnectInfo`) goes to the key check, which throttles failed checks per address. The call
//! runs in the key's rate-limit scope too: the services [`charge`](crate::security::keys::charge)
//! their item counts.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{
    Code, Status,
    body::Body,
    codegen::http,
    server::NamedService,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    security::{ApiKeys, AuthError, keys},
    telemetry::{
        metrics::Metrics,
        usage::{self, Usage},
    },
};

/// `inner` behind the API-key check.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    keys: ApiKeys,
    metrics: Metrics,
}

/// Wraps services in [`Authenticated`] with the same keys and metrics.
#[derive(Clone)]
pub struct KeyCheck {
    pub keys: ApiKeys,
    pub metrics: Metrics,
}

impl KeyCheck {
    pub fn wrap<S>(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            keys: self.keys.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

/// The status a refused call gets.
pub fn refusal(e: AuthError) -> Status {
    match e {
        AuthError::RateLimited { retry_after } | AuthError::PeerThrottled { retry_after } => {
            Status::with_error_details(
                Code::ResourceExhausted,
                e.to_string(),
                ErrorDetails::with_retry_info(Some(retry_after)),
            )
        }
        AuthError::OverBurst { .. } => Status::resource_exhausted(e.to_string()),
        AuthError::Missing | AuthError::Malformed | AuthError::Wrong => {
            Status::unauthenticated(e.to_string())
        }
    }
}

/// Charges the running call `items` of its key's rate limit (the key check paid for one): each
/// service calls this with its request's item count before any work.
pub fn charge(items: usize) -> Result<(), Status> {
    keys::charge(u64::try_from(items).unwrap_or(u64::MAX)).map_err(refusal)
}

/// A stream item's charge: one item, waiting while the key's rate limit is spent (the stream
/// reads nothing meanwhile). `Err(None)`: the client went away while it waited.
pub async fn charge_stream_item(
    allowance: Option<&keys::Allowance>,
    gone: impl Future<Output = ()>,
) -> Result<(), Option<Status>> {
    let Some(allowance) = allowance else {
        return Ok(());
    };
    let mut gone = std::pin::pin!(gone);
    loop {
        match allowance.charge(1) {
            Ok(()) => return Ok(()),
            Err(AuthError::RateLimited { retry_after }) => {
                tokio::select! {
                    () = tokio::time::sleep(retry_after) => {}
                    () = &mut gone => return Err(None),
                }
            }
            Err(e) => return Err(Some(refusal(e))),
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Authenticated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> BoxFuture {
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
        match self.keys.authenticate_from(presented, peer) {
            Err(e) => {
                let response = refusal(e).into_http();
                Box::pin(async move { Ok(response) })
            }
            Ok(caller) => {
                let (usage, allowance) = caller
                    .map(|c| (Usage::for_key(&self.metrics, c.key_name), c.allowance))
                    .unzip();
                // The clone that was polled ready serves this call (tower's contract).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(usage::scoped(
                    usage,
                    keys::scoped(allowance, inner.call(request)),
                ))
            }
        }
    }
}
