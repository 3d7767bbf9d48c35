//! The preprocessing pool: image decode + resize and tokenization run on tokio's blocking pool,
//! at most `workers` jobs at once (one per core by default), overlapped with inference on the
//! engine threads. The permit moves into the blocking job, so work that outlives a cancelled call
//! still counts against the bound. A panicking job becomes INTERNAL, never a crash.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::common::ServiceError;

#[derive(Clone)]
pub struct PreprocessPool {
    workers: Arc<Semaphore>,
}

impl PreprocessPool {
    pub fn new(workers: usize) -> Self {
        PreprocessPool {
            workers: Arc::new(Semaphore::new(workers.max(1))),
        }
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

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn at_most_workers_jobs_run_at_once() {
        let pool = PreprocessPool::new(2);
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
        let pool = PreprocessPool::new(1);
        let e = pool
            .run("decoding", || panic!("bad decoder"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ServiceError::Internal(m) if m == "decoding failed; the server logged the details")
        );
        assert_eq!(pool.run("decoding", || 7).await.unwrap(), 7);
    }
}
