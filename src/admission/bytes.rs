//! One byte budget for request payloads in flight across both doors (`--max-inflight-bytes`):
//! gRPC messages, the items a stream has read, and HTTP bodies are admitted against it while they
//! are being worked on. A unary call or an HTTP body that does not fit is refused at once
//! (RESOURCE_EXHAUSTED / 429); a stream waits, and while it waits it reads nothing more, so HTTP/2
//! flow control pushes back on its client.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::common::ServiceError;

/// Permits are KiB, so the budget fits the semaphore's u32 for any sane size.
const UNIT: u64 = 1024;

#[derive(Clone)]
pub struct ByteBudget {
    units: Arc<Semaphore>,
    total_units: u32,
    in_use: prometheus::IntGauge,
}

/// Bytes held against the budget until dropped.
#[derive(Debug)]
pub struct BytesPermit {
    _units: OwnedSemaphorePermit,
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
            total_units,
            in_use,
        }
    }

    fn units(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(self.total_units)
    }

    fn permit(&self, units: OwnedSemaphorePermit, bytes: u64) -> BytesPermit {
        self.in_use.add(bytes as i64);
        BytesPermit {
            _units: units,
            bytes,
            in_use: self.in_use.clone(),
        }
    }

    /// `bytes` now, or RESOURCE_EXHAUSTED. A payload larger than the whole budget takes all of it.
    pub fn try_take(&self, bytes: u64) -> Result<BytesPermit, ServiceError> {
        Arc::clone(&self.units)
            .try_acquire_many_owned(self.units(bytes))
            .map(|units| self.permit(units, bytes))
            .map_err(|_| {
                ServiceError::ResourceExhausted(format!(
                    "the server holds as many request bytes as it may (--max-inflight-bytes {}); retry later",
                    u64::from(self.total_units) * UNIT
                ))
            })
    }

    /// `bytes`, waiting until they are free.
    pub async fn take(&self, bytes: u64) -> Result<BytesPermit, ServiceError> {
        Arc::clone(&self.units)
            .acquire_many_owned(self.units(bytes))
            .await
            .map(|units| self.permit(units, bytes))
            .map_err(|_| ServiceError::Unavailable("server is shutting down".into()))
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
}
