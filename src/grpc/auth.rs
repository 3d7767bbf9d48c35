//! API keys on the gRPC door: the call layer (`context.rs`) checks the caller's key (and its rate
//! limit) before every call but health's (and reflection's with `--public-reflection`), and runs
//! the call in that key's usage scope (`telemetry::usage`), so what the domain computes is counted
//! for the key and the call's span carries the key's name. Here: the refusals and the charges.
//!
//! Refusals: no or wrong key -> UNAUTHENTICATED; the key's rate limit spent -> RESOURCE_EXHAUSTED
//! with a `google.rpc.RetryInfo` detail saying when to retry. The peer's address (tonic's
//! `TcpConnectInfo`) goes to the key check, which throttles failed checks per address. The call
//! runs in the key's rate-limit scope too: the services [`charge`](crate::security::keys::charge)
//! their item counts.

use std::future::Future;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::security::{AuthError, keys};

/// The status a refused call gets.
pub fn refusal(e: AuthError) -> Status {
    match e {
        AuthError::RateLimited { retry_after }
        | AuthError::PeerThrottled { retry_after }
        | AuthError::QuotaExhausted {
            reset_in: retry_after,
            ..
        } => Status::with_error_details(
            Code::ResourceExhausted,
            e.to_string(),
            ErrorDetails::with_retry_info(Some(retry_after)),
        ),
        AuthError::OverBurst { .. } => Status::resource_exhausted(e.to_string()),
        AuthError::QuotaUnavailable => Status::unavailable(e.to_string()),
        AuthError::Missing | AuthError::Malformed | AuthError::Wrong => {
            Status::unauthenticated(e.to_string())
        }
    }
}

/// Charges the running call `items` of its key's rate limit (the key check paid for one): each
/// service calls this with its request's item count before any work.
/// Then the same items of its quota (one round trip to the usage store).
pub async fn charge(items: usize) -> Result<(), Status> {
    keys::charge_with_quota(u64::try_from(items).unwrap_or(u64::MAX))
        .await
        .map_err(refusal)
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
            Ok(()) => {
                return allowance
                    .charge_quota(1)
                    .await
                    .map_err(|e| Some(refusal(e)));
            }
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
