//! One byte budget for request payloads in flight across both doors (`--max-inflight-bytes`):
//! gRPC messages, the items a stream has read, and HTTP bodies are admitted against it while they
//! are being worked on. A unary call or an HTTP body that does not fit is refused at once
//! (RESOURCE_EXHAUSTED / 429); a stream waits, and while it waits it reads nothing more, so HTTP/2
//! flow control pushes back on its client. Streams may hold three quarters of the budget at most
//! (as with request permits), so streams that always wait cannot leave unary callers nothing.

use crate::common::limit::MAX_INFLIGHT_BYTES;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::common::ServiceError;

/// Permits are KiB, so the budget fits the semaphore's u32 for any sane size.
const UNIT: u64 = 1024;

#[derive(Clone)]
pub struct ByteBudget {
    units: Arc<Semaphore>,
    /// The share of `units` stream items may hold.
    stream_share: Arc<Semaphore>,
    total_units: u32,
    in_use: prometheus::IntGauge,
}

/// Bytes held against the budget until dropped.
#[derive(Debug)]
pub struct BytesPermit {
    units: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
    bytes: u64,
    in_use: prometheus::IntGauge,
}

impl Drop for BytesPermit {
    fn drop(&mut self) {
        self.in_use.sub(self.bytes as i64);
    }
}

impl ByteBudget {
    /// `in_use` is the gauge that shows the bytes held.
    pub fn new(max_bytes: u64, in_use: prometheus::IntGauge) -> Self {
        let total_units = u32::try_from(max_bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        ByteBudget {
            units: Arc::new(Semaphore::new(total_units as usize)),
            stream_share: Arc::new(Semaphore::new((total_units as usize * 3 / 4).max(1))),
            total_units,
            in_use,
        }
    }

    fn units(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(self.total_units)
    }

    fn permit(
        &self,
        units: OwnedSemaphorePermit,
        share: Option<OwnedSemaphorePermit>,
        bytes: u64,
    ) -> BytesPermit {
        self.in_use.add(bytes as i64);
        BytesPermit {
            units,
            _share: share,
            bytes,
            in_use: self.in_use.clone(),
        }
    }

    /// `bytes` now, or RESOURCE_EXHAUSTED. A payload larger than the whole budget takes all of it.
    pub fn try_take(&self, bytes: u64) -> Result<BytesPermit, ServiceError> {
        Arc::clone(&self.units)
            .try_acquire_many_owned(self.units(bytes))
            .map(|units| self.permit(units, None, bytes))
            .map_err(|_| self.exhausted())
    }

    /// Nothing yet: a permit that grows as a payload's bytes arrive ([`Self::try_grow`]).
    pub fn arriving(&self) -> BytesPermit {
        let units = Arc::clone(&self.units)
            .try_acquire_many_owned(0)
            .unwrap_or_else(|_| unreachable!("the budget's semaphore is never closed"));
        self.permit(units, None, 0)
    }

    /// Grows `held` to `bytes` in all as they arrive (never reserving what has not come), or
    /// RESOURCE_EXHAUSTED, holding what it held.
    pub fn try_grow(&self, held: &mut BytesPermit, bytes: u64) -> Result<(), ServiceError> {
        let more = self
            .units(bytes)
            .saturating_sub(held.units.num_permits() as u32);
        if more > 0 {
            let units = Arc::clone(&self.units)
                .try_acquire_many_owned(more)
                .map_err(|_| self.exhausted())?;
            held.units.merge(units);
        }
        if bytes > held.bytes {
            self.in_use.add((bytes - held.bytes) as i64);
            held.bytes = bytes;
        }
        Ok(())
    }

    fn exhausted(&self) -> ServiceError {
        ServiceError::ResourceExhausted(format!(
            "the server holds as many request bytes as it may ({MAX_INFLIGHT_BYTES} {}); retry later",
            u64::from(self.total_units) * UNIT
        ))
    }

    /// `bytes` for a stream item, waiting until they are free within the streams' share.
    pub async fn take(&self, bytes: u64) -> Result<BytesPermit, ServiceError> {
        let gone = |_| ServiceError::Unavailable("server is shutting down".into());
        // An item larger than the whole share takes all of it rather than waiting forever.
        let share_units = self.units(bytes).min((self.total_units * 3 / 4).max(1));
        let share = Arc::clone(&self.stream_share)
            .acquire_many_owned(share_units)
            .await
            .map_err(gone)?;
        let units = Arc::clone(&self.units)
            .acquire_many_owned(self.units(bytes))
            .await
            .map_err(gone)?;
        Ok(self.permit(units, Some(share), bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn bytes_are_held_until_dropped_and_waiters_resume() {
        let gauge = prometheus::IntGauge::new("bytes", "t").unwrap();
        let budget = ByteBudget::new(10 * 1024, gauge.clone());
        let a = budget.try_take(6 * 1024).unwrap();
        assert_eq!(gauge.get(), 6 * 1024);
        let e = budget.try_take(5 * 1024).err().unwrap();
        assert!(
            matches!(&e, ServiceError::ResourceExhausted(m) if m.contains("--max-inflight-bytes")),
            "{e}"
        );
        let b = budget.clone();
        let waiter = tokio::spawn(async move { b.take(5 * 1024).await.map(|p| p.bytes) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(a);
        assert_eq!(waiter.await.unwrap().unwrap(), 5 * 1024);
        // Larger than the whole budget: takes all of it rather than waiting forever.
        let all = budget.try_take(1 << 30).unwrap();
        assert_eq!(gauge.get(), 1 << 30);
        assert!(budget.try_take(1).is_err());
        drop(all);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn streams_leave_a_quarter_of_the_budget_to_unary_calls() {
        let gauge = prometheus::IntGauge::new("bytes", "t").unwrap();
        let budget = ByteBudget::new(8 * 1024, gauge);
        let _streams: Vec<_> = futures_take(&budget, 6).await;
        // The streams' share (6 KiB of 8) is spent: another stream item waits ...
        let b = budget.clone();
        let waiting = tokio::spawn(async move { b.take(1024).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        // ... while unary calls still get the rest.
        assert!(budget.try_take(2 * 1024).is_ok());
        waiting.abort();
    }

    #[test]
    fn arriving_bytes_are_charged_as_they_come_in_whole_kib() {
        let gauge = prometheus::IntGauge::new("bytes", "t").unwrap();
        let budget = ByteBudget::new(4 * 1024, gauge.clone());
        let mut held = budget.arriving();
        assert_eq!(
            budget.units.available_permits(),
            4,
            "nothing reserved up front"
        );
        // A trickle of single bytes costs its bytes, not a KiB each.
        for n in 1..=1024 {
            budget.try_grow(&mut held, n).unwrap();
        }
        assert_eq!((budget.units.available_permits(), gauge.get()), (3, 1024));
        let other = budget.try_take(2 * 1024).unwrap();
        budget.try_grow(&mut held, 2 * 1024).unwrap();
        assert_eq!(budget.units.available_permits(), 0);
        let e = budget.try_grow(&mut held, 2 * 1024 + 1).unwrap_err();
        assert!(matches!(e, ServiceError::ResourceExhausted(_)), "{e}");
        assert_eq!(gauge.get(), 4 * 1024, "what it held stays held");
        drop(other);
        drop(held);
        assert_eq!((budget.units.available_permits(), gauge.get()), (4, 0));
    }

    async fn futures_take(budget: &ByteBudget, kib: usize) -> Vec<BytesPermit> {
        let mut held = Vec::new();
        for _ in 0..kib {
            held.push(budget.take(1024).await.unwrap());
        }
        held
    }
}
