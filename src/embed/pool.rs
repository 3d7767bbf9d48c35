//! The preprocessing pool: image decode + resize and tokenization run on tokio's blocking pool,
//! overlapped with inference on the engine threads, under two bounds:
//!
//! - CPU: at most `workers` jobs at once (one per core by default: more threads than cores only
//!   adds switching);
//! - memory: a decode first reserves the bytes its header says it will need
//!   (`preprocess::image::decode_cost`) from `--max-decode-bytes`, so concurrent decodes never
//!   hold more than that whatever their sizes; one that needs more than the whole budget is
//!   refused (the client's fault, like an over-limit pixel count). Reservations are granted in
//!   arrival order (tokio's semaphore is fair), so a large image is not starved by small ones.
//!
//! Permits move into the blocking job, so work that outlives a cancelled call still counts
//! against both bounds. A panicking job becomes INTERNAL, never a crash.

use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::common::ServiceError;

/// The decode budget is counted in KiB so one reservation fits the semaphore's `u32`.
const UNIT: u64 = 1024;

#[derive(Clone)]
pub struct PreprocessPool {
    workers: Arc<Semaphore>,
    decode: Arc<Semaphore>,
    decode_units: u64,
    decode_in_use: IntGauge,
}

/// A decode needs more than the whole `--max-decode-bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    pub needed: u64,
    pub limit: u64,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decoding this image needs about {} MiB, more than the server's decode budget of {} MiB \
             (--max-decode-bytes)",
            self.needed.div_ceil(1 << 20),
            self.limit >> 20
        )
    }
}

impl PreprocessPool {
    /// `decode_bytes`: the decode budget; `decode_in_use` shows what is reserved of it.
    pub fn new(workers: usize, decode_bytes: u64, decode_in_use: IntGauge) -> Self {
        let decode_units = (decode_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS as u64);
        PreprocessPool {
            workers: Arc::new(Semaphore::new(workers.max(1))),
            decode: Arc::new(Semaphore::new(decode_units as usize)),
            decode_units,
            decode_in_use,
        }
    }

    /// Runs a decode of `bytes` working memory once they are reserved and a worker is free.
    pub async fn run_decode<T: Send + 'static>(
        &self,
        what: &'static str,
        bytes: u64,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Result<T, OverBudget>, ServiceError> {
        let units = bytes.div_ceil(UNIT).max(1);
        if units > self.decode_units {
            return Ok(Err(OverBudget {
                needed: bytes,
                limit: self.decode_units * UNIT,
            }));
        }
        let Ok(units) = u32::try_from(units) else {
            return Ok(Err(OverBudget {
                needed: bytes,
                limit: self.decode_units * UNIT,
            }));
        };
        let reserved = Arc::clone(&self.decode)
            .acquire_many_owned(units)
            .await
            .map_err(|_| ServiceError::Unavailable("server is shutting down".into()))?;
        let reservation = Reservation::new(reserved, &self.decode_in_use, u64::from(units) * UNIT);
        self.run(what, move || {
            let _reservation = reservation;
            job()
        })
        .await
        .map(Ok)
    }

    /// Runs `job` when a worker is free, in the caller's span. `what` names it in logs.
    pub async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let worker = Arc::clone(&self.workers)
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Unavailable("server is shutting down".into()))?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _worker = worker;
            let _span = span.enter();
            job()
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "{what} task panicked");
            ServiceError::Internal(format!("{what} failed; the server logged the details"))
        })
    }
}

/// Reserved decode bytes, shown on the gauge while held.
struct Reservation {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
    bytes: i64,
}

impl Reservation {
    fn new(permit: OwnedSemaphorePermit, gauge: &IntGauge, bytes: u64) -> Self {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        gauge.add(bytes);
        Reservation {
            _permit: permit,
            gauge: gauge.clone(),
            bytes,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn at_most_workers_jobs_run_at_once() {
        let pool = PreprocessPool::new(2, 1 << 30, IntGauge::new("g", "g").unwrap());
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (pool, running, peak) = (pool.clone(), Arc::clone(&running), Arc::clone(&peak));
            tasks.push(tokio::spawn(async move {
                pool.run("test", move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_job_is_internal_and_frees_its_worker() {
        let pool = PreprocessPool::new(1, 1 << 30, IntGauge::new("g", "g").unwrap());
        let e = pool
            .run("decoding", || panic!("bad decoder"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ServiceError::Internal(m) if m == "decoding failed; the server logged the details")
        );
        assert_eq!(pool.run("decoding", || 7).await.unwrap(), 7);
    }

    /// Two workers, but a budget for one 6 MiB decode at a time: the second waits for the
    /// first's bytes; the gauge shows the reservation while a decode runs and nothing after.
    #[tokio::test]
    async fn decodes_share_the_byte_budget() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let pool = PreprocessPool::new(2, 10 << 20, gauge.clone());
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (pool, running, peak, gauge) = (
                pool.clone(),
                Arc::clone(&running),
                Arc::clone(&peak),
                gauge.clone(),
            );
            tasks.push(tokio::spawn(async move {
                pool.run_decode("test", 6 << 20, move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    assert_eq!(gauge.get(), 6 << 20);
                    std::thread::sleep(Duration::from_millis(10));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap().expect("fits the budget");
        }
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_decode_over_the_whole_budget_is_refused_without_running() {
        let pool = PreprocessPool::new(2, 10 << 20, IntGauge::new("g", "g").unwrap());
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let refused = pool
            .run_decode("test", 11 << 20, move || r.fetch_add(1, Ordering::SeqCst))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        let message = refused.to_string();
        assert!(
            message.contains("11 MiB") && message.contains("--max-decode-bytes"),
            "{message}"
        );
    }
}
